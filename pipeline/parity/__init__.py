"""Parity checks against test vectors produced by the authors' inference code.

`python -m pipeline.parity <case-dir>` detects the model from the case's weight set (the
case's parent folder), loads those weights through the product's real loaders, runs the case
from its raw inputs and compares every expected tensor within the case's tolerances.
"""
