"""Full-size random-weight copies of the two metric releases that have no tiny form.

DreamSim and the FID Inception-v3 are fixed architectures loaded by their own packages
(`dreamsim`, torch-fidelity through torchmetrics) from files laid out as their releases are.
Tests and benchmarks need those folders without the network, so these builders write the same
files at the real shapes with random values: every tensor goes through the packages' real code
paths, and the numbers they give mean nothing.

    build_random_dreamsim(folder)   what `dreamsim(cache_dir=folder)` fills on first use:
        ensemble_lora/                      the peft adapter (rank 16 on each ViT's qkv)
        dino_vitb16_pretrain.pth            DINO's projection head (the package reads it)
        clip_vitb16_pretrain.pth.tar        CLIP ViT-B/16 converted to DINO's ViT layout
        open_clip_vitb16_pretrain.pth.tar   OpenCLIP ViT-B/16, the same layout
        facebookresearch_dino_main/         torch.hub's copy of the DINO repository (the package
        checkpoints/dino_vitbase16_...pth   sets the hub folder to cache_dir) and its checkpoint
    build_random_inception(folder)  pt_inception-2015-12-05-random.pth: torch-fidelity's
        FID Inception-v3 (the name `pipeline.metrics.fid.INCEPTION_GLOB` looks for)

The hub repository's hubconf.py builds DINO's ViT-B/16 from the package's copy of DINO's
`vision_transformer.py` (the real repository's file) and loads the checkpoint through
`torch.hub.load_state_dict_from_url`, which finds it in `checkpoints/` as it finds the real
one. Both builders are deterministic and reuse a complete build (their marker file).
"""

from __future__ import annotations

import hashlib
import shutil
from pathlib import Path

import torch

from pipeline.metrics.dreamsim import torch_hub_dir_kept
from pipeline.weights.atomic_build import build_seeded
from pipeline.weights.tiny import randomize_module

MARKER = "random_release.json"
BUILD_FORMAT = 1
DINO_CHECKPOINT_URL = (
    "https://dl.fbaipublicfiles.com/dino/dino_vitbase16_pretrain/dino_vitbase16_pretrain.pth"
)
HUBCONF = f'''"""DINO's torch.hub entry point for ViT-B/16 (restyle's random-weight build)."""
import torch
from dreamsim.feature_extraction.vision_transformer import vit_base

dependencies = ["torch"]


def dino_vitb16(pretrained=True, **kwargs):
    model = vit_base(patch_size=16, num_classes=0, **kwargs)
    if pretrained:
        state_dict = torch.hub.load_state_dict_from_url(url="{DINO_CHECKPOINT_URL}", map_location="cpu")
        model.load_state_dict(state_dict, strict=True)
    return model
'''
# The adapter's shape; a real release's ensemble_lora/adapter_config.json says its own.
LORA = dict(r=16, lora_alpha=0.5, lora_dropout=0.3, bias="none", target_modules=["qkv"])


def build_random_dreamsim(folder: Path, seed: int = 0) -> Path:
    """The DreamSim ensemble release folder, random weights (reused when already built)."""
    return _build(Path(folder), "dreamsim", seed, _write_dreamsim)


def build_random_inception(folder: Path, seed: int = 0) -> Path:
    """A folder with torch-fidelity's FID Inception-v3 file, random weights."""
    return _build(Path(folder), "inception", seed, _write_inception)


def _generator(seed: int, name: str) -> torch.Generator:
    digest = hashlib.sha256(f"random-release:{seed}:{name}".encode()).digest()
    return torch.Generator().manual_seed(int.from_bytes(digest[:8], "big"))


def _write_dreamsim(folder: Path, seed: int) -> None:
    from dreamsim.feature_extraction.vision_transformer import DINOHead, vit_base

    dino = randomize_module(vit_base(patch_size=16, num_classes=0), _generator(seed, "dino"))
    (folder / "checkpoints").mkdir()
    torch.save(dino.state_dict(), folder / "checkpoints" / Path(DINO_CHECKPOINT_URL).name)
    repo = folder / "facebookresearch_dino_main"
    repo.mkdir()
    (repo / "hubconf.py").write_text(HUBCONF)

    head = randomize_module(DINOHead(768, 2048), _generator(seed, "dino-head"))
    student = {f"module.head.{k}": v for k, v in head.state_dict().items()}
    # the package sets the head's last layer from the plain weight (weight-norm folded in)
    student["module.head.last_layer.weight"] = 0.02 * torch.randn(
        2048, 256, generator=_generator(seed, "dino-head-last")
    )
    torch.save({"student": student}, folder / "dino_vitb16_pretrain.pth")

    for name in ("clip_vitb16", "open_clip_vitb16"):
        vit = vit_base(patch_size=16)
        vit.pos_drop = torch.nn.LayerNorm(vit.embed_dim)  # CLIP's ln_pre, as the package loads it
        state = randomize_module(vit, _generator(seed, name)).state_dict()
        state["proj"] = 0.05 * torch.randn(768, 512, generator=_generator(seed, f"{name}-proj"))
        torch.save({"state_dict": state}, folder / f"{name}_pretrain.pth.tar")
    _write_lora(folder, seed)


def _write_lora(folder: Path, seed: int) -> None:
    """The ensemble's adapter, saved by peft from the package's own PerceptualModel."""
    from dreamsim.config import dreamsim_args
    from dreamsim.model import PerceptualModel
    from peft import LoraConfig, get_peft_model

    config = dreamsim_args["model_config"]["ensemble"]
    with torch_hub_dir_kept():  # the package points torch.hub at its folder
        model = PerceptualModel(**config, device="cpu", load_dir=str(folder), normalize_embeds=True)
    adapted = get_peft_model(model, LoraConfig(**LORA))
    gen = _generator(seed, "lora")
    with torch.no_grad():
        for name, param in adapted.named_parameters():
            if "lora_" in name:
                param.copy_(0.05 * torch.randn(param.shape, generator=gen))
    adapted.save_pretrained(str(folder / "ensemble_lora"))
    # torch.hub's bookkeeping and bytecode from the load above are not part of a release
    (folder / "trusted_list").unlink(missing_ok=True)
    shutil.rmtree(folder / "facebookresearch_dino_main" / "__pycache__", ignore_errors=True)


def _write_inception(folder: Path, seed: int) -> None:
    from torch_fidelity.feature_extractor_inceptionv3 import FeatureExtractorInceptionV3

    class Unloaded(FeatureExtractorInceptionV3):
        """torch-fidelity's Inception with its constructor's weight loading skipped."""

        def load_state_dict(self, state_dict, strict=True, assign=False):
            return None

    empty = folder / "empty.pth"
    torch.save({}, empty)
    model = Unloaded("inception-v3-compat", ["2048"], feature_extractor_weights_path=str(empty))
    empty.unlink()
    gen = _generator(seed, "inception")
    randomize_module(model, gen)
    with torch.no_grad():
        for module in model.modules():
            if isinstance(module, torch.nn.Conv2d):  # He scale: features still see the image
                fan_in = module.weight[0].numel()
                module.weight.copy_(
                    (2.0 / fan_in) ** 0.5 * torch.randn(module.weight.shape, generator=gen)
                )
            elif isinstance(module, torch.nn.BatchNorm2d):
                module.weight.copy_(1.0 + 0.1 * torch.randn(module.weight.shape, generator=gen))
    torch.save(model.state_dict(), folder / "pt_inception-2015-12-05-random.pth")


def _build(folder: Path, kind: str, seed: int, write) -> Path:
    return build_seeded(folder, MARKER, kind, seed, BUILD_FORMAT, write, f"random {kind} release")
