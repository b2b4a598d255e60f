"""One consumer of an auxiliary model on a node, for tests that start several in processes of
their own (as a node's actors are): a module light enough to import in a spawned child (no
torch), unlike the test modules that call it."""

from __future__ import annotations

from pipeline.weights.aux_hub import hub_commit
from pipeline.weights.aux_models import model_folder


def stage_aux_model(spec: str, kind: str) -> tuple[str, str | None]:
    """Where the node's copy of `spec` is, and the Hub commit it holds (None: not from a Hub)."""
    folder = model_folder(spec, kind)
    return str(folder), hub_commit(folder)
