"""Test helpers: a real SeaweedFS S3 server, a fault proxy, a loopback Hub, run builders."""
