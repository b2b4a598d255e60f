"""The one-shot device check (`benchmarks/gpu_check.py`): its parts, one per concern."""
