"""Models by name. The runner asks for a model by its manifest/CLI name and nothing else."""

from __future__ import annotations

import importlib
from pathlib import Path

from pipeline.models.base import ModelOptions, StylizationModel

_MODELS = {
    "uso": ("pipeline.models.uso.model", "USOModel"),
    "omniconsistency": ("pipeline.models.omniconsistency.model", "OmniConsistencyModel"),
}

MODEL_NAMES = tuple(_MODELS)


def model_class(name: str) -> type[StylizationModel]:
    try:
        module, cls = _MODELS[name]
    except KeyError:
        raise ValueError(
            f"unknown model {name!r}; choose one of {', '.join(MODEL_NAMES)}"
        ) from None
    return getattr(importlib.import_module(module), cls)


def load_model(name: str, weights_root: Path, options: ModelOptions) -> StylizationModel:
    """Load `name` from a staged weights root (see `pipeline.models.weight_layout`)."""
    return model_class(name).load(weights_root, options)


def load_random_model(name: str, options: ModelOptions) -> StylizationModel:
    """Full-size architecture with random weights, built on the device: speed benchmarks only."""
    return model_class(name).load_random(options, size="full")
