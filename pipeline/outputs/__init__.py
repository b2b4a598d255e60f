"""What a run writes and reads back: the run folder's layout (`layout`), the shard commit (tar,
records, marker), the samples in a tar and their provenance, the records, the dataset card and
published schemas, what is already on disk for a run (run state), `restyle status` and
`restyle migrate`."""
