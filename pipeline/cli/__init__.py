"""The `restyle` command line: `main` assembles the app from one module per command group."""
