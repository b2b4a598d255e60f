"""restyle: batch stylization of image catalogs with USO and OmniConsistency on Ray."""

__version__ = "0.1.0"
