"""OmniConsistency (showlab, arXiv 2505.18445) on diffusers' FLUX: `model.OmniConsistencyModel`
is the entry point."""
