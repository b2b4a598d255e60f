"""USO (ByteDance, arXiv 2508.18966) on diffusers' FLUX: `model.USOModel` is the entry point."""
