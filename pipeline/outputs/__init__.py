"""What a run writes and reads back: the shard commit (tar, records, marker), the samples in a
tar, what is already on disk for a run (run state), and `restyle status`."""
