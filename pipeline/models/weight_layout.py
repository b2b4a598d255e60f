"""Where each model finds its weight files inside a staged weights root.

A weights root is a local directory (the registry stages Hub or S3 copies into one per node):

    <root>/flux1-dev/flux1-dev.safetensors   FLUX transformer, BFL single-file layout
    <root>/flux1-dev/ae.safetensors          FLUX VAE, BFL layout
      or <root>/flux1-dev/transformer/, vae/ diffusers folders (a FLUX.1-dev snapshot has both)
    <root>/flux1-dev/flux_config.json        optional: BFL FluxParams, for files whose shapes
                                             cannot tell every hyper-parameter (tiny models)
    <root>/t5/  <root>/clip/                 transformers folders (model + tokenizer); a FLUX.1-dev
                                             snapshot's text_encoder_2/+tokenizer_2/ and
                                             text_encoder/+tokenizer/ are used when these are absent
    <root>/siglip/                           transformers SiglipVisionModel +
                                             preprocessor_config.json
    <root>/uso/dit_lora.safetensors          USO DiT LoRA (official key names)
    <root>/uso/projector.safetensors         USO style projector (official key names)
    <root>/omniconsistency/OmniConsistency.safetensors
    <root>/style_loras/<Name>_rank128_bf16.safetensors   the 22 styles OmniConsistency ships
                                             (file names: `omniconsistency.styles`)

The folder names are this module's: `STYLE_LORA_DIR` is the one every other module uses.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from pipeline.errors import WeightLayoutError

STYLE_LORA_DIR = "style_loras"  # community style LoRAs (the shipped ones) in a weights root


def _first_existing(candidates: list[Path], what: str) -> Path:
    for path in candidates:
        if path.exists():
            return path
    tried = ", ".join(str(p) for p in candidates)
    raise WeightLayoutError(f"{what} not found; looked for: {tried}")


def _encoder_folders(
    own: Path, snapshot_model: Path, snapshot_tokenizer: Path, what: str
) -> tuple[Path, Path]:
    """A text encoder's (model folder, tokenizer folder): our own folder holds both; a FLUX.1-dev
    snapshot keeps them in two sibling folders."""
    if own.exists():
        return own, own
    return (
        _first_existing([own, snapshot_model], f"{what} encoder folder"),
        _first_existing([snapshot_tokenizer], f"{what} tokenizer folder"),
    )


@dataclass(frozen=True)
class FluxFiles:
    """FLUX.1-dev base files: transformer, VAE and the two text encoders."""

    transformer: Path  # BFL single file or diffusers transformer folder
    vae: Path  # BFL ae.safetensors or diffusers vae folder
    t5: Path  # transformers T5EncoderModel folder
    t5_tokenizer: Path
    clip: Path  # transformers CLIPTextModel folder
    clip_tokenizer: Path
    flux_config: Path | None = None  # BFL FluxParams json, when the file alone cannot tell them

    @classmethod
    def from_root(cls, root: Path) -> FluxFiles:
        flux = root / "flux1-dev"
        transformer = _first_existing(
            [flux / "flux1-dev.safetensors", flux / "transformer"], "FLUX transformer"
        )
        vae = _first_existing([flux / "ae.safetensors", flux / "vae"], "FLUX VAE")
        t5, t5_tok = _encoder_folders(
            root / "t5", flux / "text_encoder_2", flux / "tokenizer_2", "T5"
        )
        clip, clip_tok = _encoder_folders(
            root / "clip", flux / "text_encoder", flux / "tokenizer", "CLIP"
        )
        config = flux / "flux_config.json"
        return cls(
            transformer, vae, t5, t5_tok, clip, clip_tok, config if config.exists() else None
        )

    def named(self) -> dict[str, Path]:
        """Logical name -> path, for provenance."""
        out = {
            "flux_transformer": self.transformer,
            "flux_vae": self.vae,
            "t5": self.t5,
            "clip": self.clip,
        }
        if self.flux_config is not None:
            out["flux_config"] = self.flux_config
        return out


@dataclass(frozen=True)
class USOFiles:
    flux: FluxFiles
    dit_lora: Path
    projector: Path
    siglip: Path

    @classmethod
    def from_root(cls, root: Path) -> USOFiles:
        return cls(
            flux=FluxFiles.from_root(root),
            dit_lora=_first_existing([root / "uso" / "dit_lora.safetensors"], "USO dit_lora"),
            projector=_first_existing([root / "uso" / "projector.safetensors"], "USO projector"),
            siglip=_first_existing([root / "siglip"], "SigLIP folder"),
        )

    def named(self) -> dict[str, Path]:
        return {
            **self.flux.named(),
            "uso_dit_lora": self.dit_lora,
            "uso_projector": self.projector,
            "siglip": self.siglip,
        }


@dataclass(frozen=True)
class OmniConsistencyFiles:
    flux: FluxFiles
    consistency_lora: Path
    style_lora_dir: Path | None = None  # where the shipped styles live, if staged
    scheduler_config: Path | None = None  # a FLUX.1-dev snapshot's; absent: FLUX.1-dev's values

    @classmethod
    def from_root(cls, root: Path) -> OmniConsistencyFiles:
        flux = FluxFiles.from_root(root)
        styles = root / STYLE_LORA_DIR
        scheduler = Path(flux.transformer).parent / "scheduler" / "scheduler_config.json"
        return cls(
            flux=flux,
            consistency_lora=_first_existing(
                [root / "omniconsistency" / "OmniConsistency.safetensors"], "OmniConsistency LoRA"
            ),
            style_lora_dir=styles if styles.is_dir() else None,
            scheduler_config=scheduler if scheduler.is_file() else None,
        )

    def named(self) -> dict[str, Path]:
        out = {**self.flux.named(), "omniconsistency_lora": self.consistency_lora}
        if self.scheduler_config is not None:
            out["scheduler_config"] = self.scheduler_config
        return out
