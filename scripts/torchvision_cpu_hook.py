"""Lets PyPI's torchvision import beside a CPU-only torch (installed by scripts/install.sh).

PyPI's Linux torchvision wheels are built against the CUDA torch: their compiled ops library
(`torchvision/_C.so`) links libtorch_cuda and cannot load beside a CPU-only torch build (the
one this project's CI and CPU machines use; the PyTorch CPU index, which has the matching
torchvision, is not reachable there). torchvision then fails at import, in
`_meta_registrations`, with "operator torchvision::nms does not exist", and so does every
library that imports it when present (transformers' image utilities, timm, open_clip,
dreamsim, torch-fidelity).

Its pure-Python parts (transforms, models) need none of the compiled ops. This hook runs just
before torchvision's package executes: when `_C` cannot load, it declares the two op
schemas torchvision's import registers fake kernels for, so the import goes through. The
detection ops themselves (nms, roi_align, ...) stay unavailable and raise if called; restyle
calls none. Where `_C` loads (a matching torchvision), the hook does nothing.

install.sh copies this file into the venv's site-packages with a one-line `.pth` that imports
it, only where a plain `import torchvision` fails.
"""

from __future__ import annotations

import importlib.abc
import importlib.machinery
import sys
from collections.abc import Sequence
from pathlib import Path
from types import ModuleType
from typing import Any

# The ops torchvision/_meta_registrations.py registers with torch.library.register_fake
# unconditionally (the others it guards with extension._has_ops()).
UNGUARDED_SCHEMAS = (
    "nms(Tensor dets, Tensor scores, float iou_threshold) -> Tensor",
    "qnms(Tensor dets, Tensor scores, float iou_threshold) -> Tensor",
)

_library: Any = None  # kept alive: the schemas live as long as the Library object


def declare_missing_ops(package_folder: Path) -> None:
    """Declare the unguarded schemas when torchvision's own ops library cannot load."""
    global _library
    import torch

    for library in sorted(package_folder.glob("_C*.so")):
        try:
            torch.ops.load_library(str(library))
            return  # a matching torchvision: its ops are real
        except OSError:
            pass
    if _library is None and not hasattr(torch.ops.torchvision, "nms"):
        _library = torch.library.Library("torchvision", "DEF")
        for schema in UNGUARDED_SCHEMAS:
            _library.define(schema)


class _DeclareThenLoad(importlib.abc.Loader):
    """torchvision's own loader, with `declare_missing_ops` run just before it executes (a
    mere availability probe, `importlib.util.find_spec("torchvision")`, imports nothing)."""

    def __init__(self, loader: importlib.abc.Loader):
        self.loader = loader

    def create_module(self, spec: importlib.machinery.ModuleSpec) -> ModuleType | None:
        return self.loader.create_module(spec)

    def exec_module(self, module: ModuleType) -> None:
        locations = module.__spec__.submodule_search_locations if module.__spec__ else None
        if locations:
            declare_missing_ops(Path(next(iter(locations))))
        self.loader.exec_module(module)


class _BeforeTorchvision(importlib.abc.MetaPathFinder):
    """Finds torchvision as the regular path finder does, with `_DeclareThenLoad` as loader."""

    def find_spec(
        self,
        fullname: str,
        path: Sequence[str] | None = None,
        target: ModuleType | None = None,
    ) -> importlib.machinery.ModuleSpec | None:
        if fullname != "torchvision":
            return None
        spec = importlib.machinery.PathFinder.find_spec(fullname, path, target)
        if spec is not None and spec.loader is not None:
            spec.loader = _DeclareThenLoad(spec.loader)
        return spec


if not any(isinstance(finder, _BeforeTorchvision) for finder in sys.meta_path):
    sys.meta_path.insert(0, _BeforeTorchvision())
