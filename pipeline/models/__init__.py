"""Stylization models: pure torch on diffusers' FLUX classes; no Ray, no storage, no manifests."""
