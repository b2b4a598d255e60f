"""restyle: batch stylization of image catalogs with USO and OmniConsistency on Ray."""

try:  # written at build/install time from git metadata (setuptools-scm, pyproject.toml)
    from pipeline._version import version as __version__
except ImportError:  # a source tree that was never installed
    __version__ = "0.1.0"
