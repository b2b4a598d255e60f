"""The modules an OmniConsistency model runs on, from the official files or random (benchmarks).

`OmniConsistencyComponents` is what a generation needs besides the text encoders: the FLUX
transformer, the VAE, the consistency LoRA and the scheduler config. `load_components` reads the
official files through the shared FLUX loaders (`flux.loading`) and the consistency LoRA reader
(`omniconsistency.lora`); the parity runner and `OmniConsistencyModel.load` both call it.
`random_components` builds the same architecture at a size of `pipeline.models.architecture`
with random weights directly on the device, for speed benchmarks and tests only. Nothing here
knows the OmniConsistency algorithm.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

import torch
from diffusers import AutoencoderKL, FluxTransformer2DModel

from pipeline.errors import WeightFileError
from pipeline.models.architecture import FLUX_DEV_SCHEDULER, architecture
from pipeline.models.flux.loading import load_flux_transformer, load_flux_vae
from pipeline.models.omniconsistency.lora import ConsistencyLora
from pipeline.models.runtime import random_init


@dataclass
class OmniConsistencyComponents:
    transformer: FluxTransformer2DModel
    vae: AutoencoderKL
    consistency_lora: ConsistencyLora
    scheduler_config: dict


def _read_scheduler_config(path: Path | None) -> dict:
    """A weights root's scheduler_config.json, else FLUX.1-dev's."""
    if path is None:
        return dict(FLUX_DEV_SCHEDULER)
    try:
        return json.loads(Path(path).read_text())
    except (OSError, ValueError) as error:
        raise WeightFileError(path, f"unreadable scheduler config ({error})") from error


def load_components(
    *,
    transformer: Path,
    vae: Path,
    consistency_lora: Path,
    flux_config: Path | Mapping | None,
    scheduler_config: Path | None,
    dtype: torch.dtype,
    device: torch.device,
    lora_device: torch.device | None = None,
) -> OmniConsistencyComponents:
    """Load every part from the official files (strict: `WeightFileError` on any mismatch).

    Transformer and VAE in `dtype` on `device` (the reference decodes in the pipeline dtype);
    the consistency LoRA keeps the file's dtype, on `lora_device` (default `device`).
    """
    flux = load_flux_transformer(transformer, config=flux_config, dtype=dtype, device=device)
    lora = ConsistencyLora.from_file(
        consistency_lora,
        inner_dim=flux.inner_dim,
        n_double=len(flux.transformer_blocks),
        n_single=len(flux.single_transformer_blocks),
        device=lora_device or device,
    )
    return OmniConsistencyComponents(
        flux.eval(),
        load_flux_vae(vae, dtype=dtype, device=device),
        lora,
        _read_scheduler_config(scheduler_config),
    )


def random_components(
    size: str,
    *,
    dtype: torch.dtype,
    device: torch.device,
    lora_device: torch.device | None = None,
    seed: int = 0,
) -> OmniConsistencyComponents:
    """The architecture at `size` ("full", "small", "tiny") with random weights, built directly
    on the device in `dtype` (a full FLUX.1-dev is never materialised in fp32)."""
    arch = architecture(size)
    device = torch.device(device)
    with random_init(device, seed, dtype):
        flux = FluxTransformer2DModel(**arch.flux.diffusers_config()).eval()
        vae = AutoencoderKL(**arch.vae.diffusers_config()).eval()
    lora = ConsistencyLora.random(
        inner_dim=flux.inner_dim,
        n_double=len(flux.transformer_blocks),
        n_single=len(flux.single_transformer_blocks),
        rank=arch.omniconsistency_lora_rank,
        dtype=dtype,
        device=lora_device or device,
        seed=seed,
    )
    return OmniConsistencyComponents(flux, vae, lora, dict(FLUX_DEV_SCHEDULER))
