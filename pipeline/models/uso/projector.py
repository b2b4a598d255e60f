"""USO style tokens: SigLIP so400m hidden states -> hierarchical projector -> 3 x 64 tokens.

Per style image (reference uso.md section 3): the SigLIP image processor squashes the image to
384x384 (PIL bicubic, no crop), SiglipVisionModel runs with output_hidden_states, and three of
its hidden states (-2 "high", -11 "mid", -20 "low"; index 0 is the embedding output, no
post-layernorm) each go through Linear(tokens -> 64) + SiLU over the token axis, LayerNorm and
Linear(1152 -> 3072). The three results are joined along the sequence; several style images
are joined in order. The tokens are then prepended to the text stream after context_embedder.

The reference re-runs SigLIP and the projector on every denoising step in fp32; the result does
not depend on the step, so `StyleEncoder` computes it once per image and `ImageTensorCache`
keeps it across items, keyed by a hash of the pixels (`ImageTensorCache`).
"""

from __future__ import annotations

import hashlib
from collections import OrderedDict
from pathlib import Path

import torch
import transformers
from PIL import Image
from torch import nn
from transformers import SiglipImageProcessorPil, SiglipVisionModel

from pipeline.errors import WeightFileError
from pipeline.models.flux.tensor_files import TensorFiles, identity_plan, materialize

LEVELS = ("high", "mid", "low")
HIDDEN_STATE_INDEX = {"high": -2, "mid": -11, "low": -20}
PROJECTOR_KEY_PREFIX = "feature_embedder."


class USOStyleProjector(nn.Module):
    """The hierarchical projector; attribute names give the official state-dict keys
    (`{level}_embedding_linear.0`, `{level}_layer_norm`, `{level}_projection`)."""

    # Set in __init__ (setattr per level); declared for the attributes read by name elsewhere.
    high_layer_norm: nn.LayerNorm
    high_projection: nn.Linear

    def __init__(
        self,
        siglip_tokens: int,
        style_tokens: int,
        siglip_width: int,
        hidden_size: int,
        layer_norm_eps: float = 1e-5,
    ):
        super().__init__()
        for level in LEVELS:
            setattr(
                self,
                f"{level}_embedding_linear",
                nn.Sequential(nn.Linear(siglip_tokens, style_tokens), nn.SiLU()),
            )
            setattr(self, f"{level}_layer_norm", nn.LayerNorm(siglip_width, eps=layer_norm_eps))
            setattr(self, f"{level}_projection", nn.Linear(siglip_width, hidden_size))
        self.tokens_per_image = 3 * style_tokens

    def forward(self, hidden_states: tuple[torch.Tensor, ...]) -> torch.Tensor:
        """SigLIP hidden_states tuple (len = layers + 1) -> [B, 3*style_tokens, hidden]."""
        dtype = self.high_projection.weight.dtype
        out = []
        for level in LEVELS:
            states = hidden_states[HIDDEN_STATE_INDEX[level]].to(dtype)
            mixed = getattr(self, f"{level}_embedding_linear")(states.transpose(1, 2)).transpose(
                1, 2
            )
            normed = getattr(self, f"{level}_layer_norm")(mixed)
            out.append(getattr(self, f"{level}_projection")(normed))
        return torch.cat(out, dim=1)


def load_uso_projector(
    path: Path, *, dtype: torch.dtype, device: torch.device | str
) -> USOStyleProjector:
    """projector.safetensors (official `feature_embedder.*` keys), sizes inferred from shapes."""
    files = TensorFiles.single(Path(path))
    key = PROJECTOR_KEY_PREFIX + "high_embedding_linear.0.weight"
    proj_key = PROJECTOR_KEY_PREFIX + "high_projection.weight"
    if key not in files.infos or proj_key not in files.infos:
        raise WeightFileError(
            files.label,
            "missing tensors (not a USO projector?)",
            [k for k in (key, proj_key) if k not in files.infos],
        )
    style_tokens, siglip_tokens = files.shape(key)
    hidden, siglip_width = files.shape(proj_key)
    with torch.device("meta"):
        projector = USOStyleProjector(siglip_tokens, style_tokens, siglip_width, hidden)
    plan = identity_plan(projector.state_dict().keys(), PROJECTOR_KEY_PREFIX)
    return materialize(projector, plan, files, dtype, device)


def load_siglip(
    folder: Path, *, dtype: torch.dtype, device: torch.device | str
) -> tuple[SiglipVisionModel, SiglipImageProcessorPil]:
    """SigLIP vision tower + its PIL image processor from a local transformers folder.

    A full SiglipModel checkpoint (google/siglip-so400m-patch14-384 also holds the text tower)
    is accepted: text-tower keys are the only unexpected keys tolerated.
    """
    folder = Path(folder)
    if not (folder / "config.json").is_file():
        raise WeightFileError(folder, "SigLIP folder without config.json")
    transformers.utils.logging.disable_progress_bar()
    try:
        model, info = SiglipVisionModel.from_pretrained(
            str(folder),
            dtype=dtype,
            output_loading_info=True,
            local_files_only=True,
            use_safetensors=True,
        )
        processor = SiglipImageProcessorPil.from_pretrained(str(folder), local_files_only=True)
    except Exception as err:  # transformers/safetensors raise many types for a bad folder
        raise WeightFileError(folder, f"cannot load SigLIP ({type(err).__name__}: {err})") from err
    unexpected = [
        k
        for k in info["unexpected_keys"]
        if not k.startswith(("text_model.", "logit_scale", "logit_bias"))
    ]
    problems = (
        [f"missing {k}" for k in sorted(info["missing_keys"])]
        + [f"unexpected {k}" for k in sorted(unexpected)]
        + [f"mis-shaped {k}" for k in sorted(map(str, info["mismatched_keys"]))]
    )
    if problems:
        raise WeightFileError(folder, "SigLIP weights do not match its config", problems)
    return model.to(device).eval().requires_grad_(False), processor


def image_digest(image: Image.Image) -> str:
    """Content hash of an image's pixels (mode and size included): the style cache key."""
    digest = hashlib.sha256(f"{image.mode}:{image.size}".encode())
    digest.update(image.tobytes())
    return digest.hexdigest()


class ImageTensorCache:
    """LRU of tensors keyed by an image's content hash (style tokens per style image, subject
    latents per subject), kept on the model's device. `max_items=0` disables it."""

    def __init__(self, max_items: int = 256):
        self.max_items = max_items
        self._items: OrderedDict[str, torch.Tensor] = OrderedDict()
        self.hits = 0
        self.misses = 0

    def get(self, key: str) -> torch.Tensor | None:
        tokens = self._items.get(key)
        if tokens is None:
            self.misses += 1
            return None
        self.hits += 1
        self._items.move_to_end(key)
        return tokens

    def put(self, key: str, tokens: torch.Tensor) -> None:
        if self.max_items <= 0:
            return
        self._items[key] = tokens
        self._items.move_to_end(key)
        while len(self._items) > self.max_items:
            self._items.popitem(last=False)

    def clear(self) -> None:
        self._items.clear()

    def __len__(self) -> int:
        return len(self._items)


class StyleEncoder:
    """Style images -> style tokens [1, 3*S*n_images, hidden] in the transformer's dtype."""

    def __init__(
        self,
        siglip: SiglipVisionModel,
        processor: SiglipImageProcessorPil,
        projector: USOStyleProjector,
        cache: ImageTensorCache | None = None,
    ):
        layers = siglip.config.num_hidden_layers
        if layers + 1 < max(-i for i in HIDDEN_STATE_INDEX.values()):
            raise ValueError(f"SigLIP has {layers} layers; the projector reads hidden_states[-20]")
        self.siglip = siglip
        self.processor = processor
        self.projector = projector
        self.cache = cache if cache is not None else ImageTensorCache(0)

    @property
    def device(self) -> torch.device:
        return self.projector.high_projection.weight.device

    def pixel_values(self, image: Image.Image) -> torch.Tensor:
        """The SigLIP processor's output for one image: [1, 3, S, S] float32 (squash, bicubic)."""
        batch = self.processor(images=image.convert("RGB"), return_tensors="pt")
        return batch["pixel_values"]

    @torch.inference_mode()
    def tokens_for_image(self, image: Image.Image, use_cache: bool = True) -> torch.Tensor:
        """[1, 3*S, hidden] for one style image, from the cache when the pixels were seen."""
        key = image_digest(image) if use_cache else None
        if key is not None and (hit := self.cache.get(key)) is not None:
            return hit
        pixels = self.pixel_values(image).to(self.device, self.siglip.dtype)
        states = self.siglip(pixel_values=pixels, output_hidden_states=True).hidden_states
        tokens = self.projector(states)
        if key is not None:
            self.cache.put(key, tokens)
        return tokens

    def tokens(self, images: list[Image.Image], use_cache: bool = True) -> torch.Tensor | None:
        """All style images' tokens joined in order, or None without style images."""
        if not images:
            return None
        return torch.cat([self.tokens_for_image(im, use_cache) for im in images], dim=1)
