"""Which files of a local weights root each model loads, by component.

The loaders find their files through `pipeline.models.weight_layout`; this module asks the same layout
code, then lists every file of the folders it names (transformers and diffusers folders,
style LoRAs), so that pulling, provenance and verification all talk about exactly the files a
model reads. Hidden files (".cache/", ".partial" leftovers) are never part of a model.
"""

from __future__ import annotations

from pathlib import Path

from pipeline.errors import WeightLayoutError, WeightsError
from pipeline.models.weight_layout import STYLE_LORA_DIR, OmniConsistencyFiles, USOFiles
from pipeline.weights.registry import PER_ITEM_COMPONENTS, check_models


def _files_under(path: Path) -> list[Path]:
    if path.is_file():
        return [path]
    return sorted(
        p
        for p in path.rglob("*")
        if p.is_file() and not any(part.startswith(".") for part in p.relative_to(path).parts)
    )


def _component_paths(root: Path, model: str) -> list[tuple[str, Path | None]]:
    """(component, file or folder) pairs the loaders of `model` would read from `root`."""
    if model == "uso":
        uso = USOFiles.from_root(root)
        flux = uso.flux
        extra: list[tuple[str, Path | None]] = [
            ("siglip", uso.siglip),
            ("uso_dit_lora", uso.dit_lora),
            ("uso_projector", uso.projector),
        ]
    else:
        omni = OmniConsistencyFiles.from_root(root)
        flux = omni.flux
        extra = [
            ("omniconsistency_lora", omni.consistency_lora),
            ("style_loras", omni.style_lora_dir),
        ]
    return [
        ("flux_transformer", flux.transformer),
        ("flux_transformer", flux.flux_config),
        ("flux_vae", flux.vae),
        ("t5", flux.t5),
        ("t5", flux.t5_tokenizer),
        ("clip", flux.clip),
        ("clip", flux.clip_tokenizer),
        *extra,
    ]


def model_files(root: Path, models: list[str] | str, *, per_item: bool = True) -> dict[str, str]:
    """Posix path inside `root` -> component, for every file `models` load from `root`.

    `per_item=False` leaves out components recorded per output item (style LoRAs), giving the
    set of files whose sha256 make up a run's weight provenance. A root lacking a file a model
    needs raises `WeightsError` naming the model and what was looked for.
    """
    root = Path(root)
    out: dict[str, str] = {}
    for model in check_models([models] if isinstance(models, str) else models):
        try:
            pairs = _component_paths(root, model)
        except WeightLayoutError as error:
            raise WeightsError(f"{root} lacks files {model} needs: {error}") from error
        for component, path in pairs:
            if path is None or (not per_item and component in PER_ITEM_COMPONENTS):
                continue
            for file in _files_under(path):
                out.setdefault(file.relative_to(root).as_posix(), component)
    return out


# Where each component's files sit in a weights root (BFL layout, our folders, and the FLUX.1-dev
# diffusers snapshot folders), most specific first.
_COMPONENT_PREFIXES = (
    ("flux1-dev/ae.safetensors", "flux_vae"),
    ("flux1-dev/vae/", "flux_vae"),
    ("flux1-dev/text_encoder_2/", "t5"),
    ("flux1-dev/tokenizer_2/", "t5"),
    ("flux1-dev/text_encoder/", "clip"),
    ("flux1-dev/tokenizer/", "clip"),
    ("flux1-dev/", "flux_transformer"),
    ("t5/", "t5"),
    ("clip/", "clip"),
    ("siglip/", "siglip"),
    ("uso/dit_lora", "uso_dit_lora"),
    ("uso/projector", "uso_projector"),
    ("omniconsistency/", "omniconsistency_lora"),
    (f"{STYLE_LORA_DIR}/", "style_loras"),
)


def component_of(path: str) -> str | None:
    """The component a file at `path` (posix, inside a weights root) belongs to, if any."""
    return next(
        (
            component
            for prefix, component in _COMPONENT_PREFIXES
            if path == prefix or path.startswith(prefix)
        ),
        None,
    )
