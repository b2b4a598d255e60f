"""`python -m pipeline.cli` (the entrypoint `restyle submit` gives a Ray job)."""

from pipeline.cli.main import app

app()
