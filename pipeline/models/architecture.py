"""The FLUX stack both models run on, and its three sizes, written once.

Hyper-parameters only (no tensors, no files): the BFL parameter classes of the FLUX transformer,
its VAE and USO's style projector, plus the transformers configs of T5, CLIP and SigLIP. Every
size of the stack is one `Architecture`:

- "full": the released models (FLUX.1-dev, T5 v1.1 XXL, CLIP-L, SigLIP so400m-patch14-384, USO
  v1.0's rank-128 LoRA and 64-token projector levels, OmniConsistency's rank-128 LoRA).
- "small": a CPU-benchmarkable shape that keeps what sets FLUX's cost per token (head size 128,
  RoPE axes (16, 56, 56), MLP x4, one double block per two single blocks), with fewer and
  narrower blocks and the tiny text encoders.
- "tiny": the shapes of the tiny weights root (`pipeline.weights.tiny`) that tests, the demo and
  the parity of outputs run on. Changing a tiny value changes every tiny weight file.

Random-weight models (`StylizationModel.load_random`) and the tiny weights build read their
shapes from here; the tensor tables of the official files (`weight_tables`) take these
parameters. `Architecture.__post_init__` holds the parts to the widths they exchange, so a size
whose text encoder does not fit its transformer cannot be written.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import asdict, dataclass, fields
from types import MappingProxyType
from typing import Any

MODEL_SIZES = ("full", "small", "tiny")


# ----------------------------------------------------------------------- FLUX transformer
@dataclass(frozen=True)
class FluxParams:
    """BFL `FluxParams` (flux/model.py); defaults are FLUX.1-dev's."""

    in_channels: int = 64
    out_channels: int | None = None  # None = in_channels, as in BFL's Flux
    vec_in_dim: int = 768  # CLIP-L pooled width
    context_in_dim: int = 4096  # T5-XXL width
    hidden_size: int = 3072
    mlp_ratio: float = 4.0
    num_heads: int = 24
    depth: int = 19
    depth_single_blocks: int = 38
    axes_dim: tuple[int, ...] = (16, 56, 56)
    theta: int = 10_000
    qkv_bias: bool = True
    guidance_embed: bool = True

    def __post_init__(self) -> None:
        object.__setattr__(self, "axes_dim", tuple(self.axes_dim))
        if self.hidden_size % self.num_heads:
            raise ValueError(
                f"hidden_size {self.hidden_size} is not a multiple of num_heads {self.num_heads}"
            )
        if sum(self.axes_dim) != self.head_dim:
            raise ValueError(f"sum(axes_dim) {sum(self.axes_dim)} != head_dim {self.head_dim}")
        if any(axis % 2 for axis in self.axes_dim):
            raise ValueError(f"every RoPE axis must be even, got axes_dim {self.axes_dim}")

    @property
    def head_dim(self) -> int:
        return self.hidden_size // self.num_heads

    @property
    def mlp_hidden(self) -> int:
        return int(self.hidden_size * self.mlp_ratio)

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> FluxParams:
        """From a BFL FluxParams dict (e.g. flux_config.json); unknown keys are an error."""
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(data) - known)
        if unknown:
            raise ValueError(f"unknown FluxParams keys: {unknown}")
        return cls(**dict(data))

    def to_dict(self) -> dict[str, Any]:
        data = asdict(self)
        data["axes_dim"] = list(self.axes_dim)
        return data

    def diffusers_config(self) -> dict[str, Any]:
        """The matching `FluxTransformer2DModel` kwargs (patch_size 1, mlp_ratio fixed at 4)."""
        if self.mlp_ratio != 4.0:
            raise ValueError("diffusers' FluxTransformer2DModel hard-codes mlp_ratio 4")
        return dict(
            patch_size=1,
            in_channels=self.in_channels,
            out_channels=self.out_channels,
            num_layers=self.depth,
            num_single_layers=self.depth_single_blocks,
            attention_head_dim=self.head_dim,
            num_attention_heads=self.num_heads,
            joint_attention_dim=self.context_in_dim,
            pooled_projection_dim=self.vec_in_dim,
            guidance_embeds=self.guidance_embed,
            axes_dims_rope=list(self.axes_dim),
        )


# ------------------------------------------------------------------------------- FLUX VAE
@dataclass(frozen=True)
class AutoEncoderParams:
    """BFL `AutoEncoderParams` (flux/modules/autoencoder.py); defaults are FLUX.1-dev's ae."""

    resolution: int = 256
    in_channels: int = 3
    ch: int = 128
    out_ch: int = 3
    ch_mult: tuple[int, ...] = (1, 2, 4, 4)
    num_res_blocks: int = 2
    z_channels: int = 16
    scale_factor: float = 0.3611
    shift_factor: float = 0.1159
    norm_num_groups: int = 32  # hard-coded in BFL's Normalize(); listed to check the widths

    def __post_init__(self) -> None:
        object.__setattr__(self, "ch_mult", tuple(self.ch_mult))
        bad = [w for w in self.widths if w % self.norm_num_groups]
        if bad:
            raise ValueError(
                f"VAE widths {self.widths} must be multiples of the "
                f"{self.norm_num_groups} GroupNorm groups"
            )

    @property
    def widths(self) -> tuple[int, ...]:
        return tuple(self.ch * m for m in self.ch_mult)

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> AutoEncoderParams:
        return cls(**dict(data))

    def to_dict(self) -> dict[str, Any]:
        data = asdict(self)
        data["ch_mult"] = list(self.ch_mult)
        return data

    def diffusers_config(self) -> dict[str, Any]:
        """The matching `AutoencoderKL` kwargs (no quant convs, FLUX scale and shift)."""
        levels = len(self.ch_mult)
        return dict(
            in_channels=self.in_channels,
            out_channels=self.out_ch,
            down_block_types=["DownEncoderBlock2D"] * levels,
            up_block_types=["UpDecoderBlock2D"] * levels,
            block_out_channels=list(self.widths),
            layers_per_block=self.num_res_blocks,
            act_fn="silu",
            latent_channels=self.z_channels,
            norm_num_groups=self.norm_num_groups,
            sample_size=self.resolution,
            scaling_factor=self.scale_factor,
            shift_factor=self.shift_factor,
            use_quant_conv=False,
            use_post_quant_conv=False,
            mid_block_add_attention=True,
            force_upcast=True,
        )


# ------------------------------------------------------------------------ USO projector
@dataclass(frozen=True)
class USOProjectorParams:
    """USO's SigLIPMultiFeatProjModel; defaults are the release (SigLIP so400m -> FLUX 3072)."""

    siglip_tokens: int = 729  # (384/14)^2 patch tokens
    style_tokens: int = 64  # per level; 3 levels -> 192 style tokens per image
    siglip_dim: int = 1152
    hidden_size: int = 3072


USO_PROJECTOR_LEVELS = ("high", "mid", "low")


# ----------------------------------------------------------------------- release presets
FLUX_DEV = FluxParams()
FLUX_AE = AutoEncoderParams()
# FLUX.1-dev's scheduler_config.json (FlowMatchEulerDiscreteScheduler kwargs)
FLUX_DEV_SCHEDULER = MappingProxyType(
    dict(
        num_train_timesteps=1000,
        shift=3.0,
        use_dynamic_shifting=True,
        base_shift=0.5,
        max_shift=1.15,
        base_image_seq_len=256,
        max_image_seq_len=4096,
    )
)


def _config(**kwargs: Any) -> Mapping[str, Any]:
    """A read-only transformers config dict (a preset must not be edited by a caller)."""
    return MappingProxyType(kwargs)


# transformers configs. vocab_size is absent where the locally built tokenizer sets it.
T5_XXL = _config(
    vocab_size=32128,
    d_model=4096,
    d_kv=64,
    d_ff=10240,
    num_layers=24,
    num_heads=64,
    relative_attention_num_buckets=32,
    relative_attention_max_distance=128,
    feed_forward_proj="gated-gelu",
    dropout_rate=0.0,
    layer_norm_epsilon=1e-6,
    is_encoder_decoder=False,
    use_cache=False,
    tie_word_embeddings=False,
)
CLIP_L_TEXT = _config(
    vocab_size=49408,
    hidden_size=768,
    intermediate_size=3072,
    num_hidden_layers=12,
    num_attention_heads=12,
    max_position_embeddings=77,
    hidden_act="quick_gelu",
    projection_dim=768,
    bos_token_id=49406,
    eos_token_id=49407,
    pad_token_id=1,
)
SIGLIP_SO400M = _config(
    hidden_size=1152,
    intermediate_size=4304,
    num_hidden_layers=27,
    num_attention_heads=16,
    image_size=384,
    patch_size=14,
    num_channels=3,
    layer_norm_eps=1e-6,
    hidden_act="gelu_pytorch_tanh",
)

# Small text encoders shared by "small" and "tiny": T5 width 48 != CLIP width 32, so a swap of
# the two is caught by shapes.
_TINY_T5 = _config(
    d_model=48,
    d_kv=12,
    d_ff=96,
    num_layers=2,
    num_heads=4,
    relative_attention_num_buckets=32,
    relative_attention_max_distance=128,
    feed_forward_proj="gated-gelu",
    dropout_rate=0.0,
    layer_norm_epsilon=1e-6,
    is_encoder_decoder=False,
    use_cache=False,
    tie_word_embeddings=False,
)
_TINY_CLIP_TEXT = _config(
    hidden_size=32,
    intermediate_size=64,
    num_hidden_layers=2,
    num_attention_heads=4,
    max_position_embeddings=77,
    hidden_act="quick_gelu",
    projection_dim=32,
)
# VAE of "small" and "tiny": 4 levels (x8), widths 32/32/64/64 (multiples of BFL's 32 GroupNorm
# groups; the width change exercises the nin_shortcut convs the real 128/256/512/512 VAE has).
_SMALL_AE = AutoEncoderParams(ch=32, ch_mult=(1, 1, 2, 2), num_res_blocks=1, z_channels=16)
# SigLIP needs >= 19 layers (USO reads hidden_states[-20]); 56/14 -> 16 patch tokens.
_SMALL_SIGLIP_LAYERS = 20


# -------------------------------------------------------------------------- architectures
@dataclass(frozen=True)
class Architecture:
    """Every hyper-parameter of one size of the stack, for both models."""

    name: str
    flux: FluxParams
    vae: AutoEncoderParams
    t5: Mapping[str, Any]  # transformers T5Config kwargs
    clip_text: Mapping[str, Any]  # transformers CLIPTextConfig kwargs
    siglip: Mapping[str, Any]  # transformers SiglipVisionConfig kwargs (USO's style encoder)
    uso_style_tokens: int  # per projector level; 3 levels per style image
    uso_lora_rank: int
    omniconsistency_lora_rank: int
    style_lora_rank: int  # community style LoRAs (the shipped ones are rank 128)

    def __post_init__(self) -> None:
        checks = {
            "T5 d_model vs FLUX context_in_dim": (self.t5["d_model"], self.flux.context_in_dim),
            "CLIP width vs FLUX vec_in_dim": (self.clip_text["hidden_size"], self.flux.vec_in_dim),
            "VAE latent channels x 2x2 patches vs FLUX in_channels": (
                4 * self.vae.z_channels,
                self.flux.in_channels,
            ),
        }
        wrong = [f"{what}: {a} != {b}" for what, (a, b) in checks.items() if a != b]
        if wrong:
            raise ValueError(
                f"architecture {self.name!r} does not fit together: {'; '.join(wrong)}"
            )

    @property
    def uso_projector(self) -> USOProjectorParams:
        """USO's projector between this size's SigLIP and its transformer."""
        side = self.siglip["image_size"] // self.siglip["patch_size"]
        return USOProjectorParams(
            siglip_tokens=side * side,
            style_tokens=self.uso_style_tokens,
            siglip_dim=self.siglip["hidden_size"],
            hidden_size=self.flux.hidden_size,
        )


FULL = Architecture(
    name="full",
    flux=FLUX_DEV,
    vae=FLUX_AE,
    t5=T5_XXL,
    clip_text=CLIP_L_TEXT,
    siglip=SIGLIP_SO400M,
    uso_style_tokens=64,
    uso_lora_rank=128,
    omniconsistency_lora_rank=128,
    style_lora_rank=128,
)
SMALL = Architecture(
    name="small",
    flux=FluxParams(
        vec_in_dim=32,
        context_in_dim=48,
        hidden_size=512,
        num_heads=4,
        depth=2,
        depth_single_blocks=4,
    ),
    vae=_SMALL_AE,
    t5=_TINY_T5,
    clip_text=_TINY_CLIP_TEXT,
    siglip=_config(
        hidden_size=64,
        intermediate_size=128,
        num_hidden_layers=_SMALL_SIGLIP_LAYERS,
        num_attention_heads=4,
        image_size=56,
        patch_size=14,
        num_channels=3,
        layer_norm_eps=1e-6,
        hidden_act="gelu_pytorch_tanh",
    ),
    uso_style_tokens=16,
    uso_lora_rank=16,
    omniconsistency_lora_rank=16,
    style_lora_rank=16,
)
TINY = Architecture(
    name="tiny",
    # 2 heads x 32, RoPE axes (8, 12, 12)
    flux=FluxParams(
        in_channels=64,
        vec_in_dim=32,
        context_in_dim=48,
        hidden_size=64,
        mlp_ratio=4.0,
        num_heads=2,
        depth=2,
        depth_single_blocks=2,
        axes_dim=(8, 12, 12),
        theta=10_000,
        qkv_bias=True,
        guidance_embed=True,
    ),
    vae=_SMALL_AE,
    t5=_TINY_T5,
    clip_text=_TINY_CLIP_TEXT,
    siglip=_config(
        hidden_size=32,
        intermediate_size=64,
        num_hidden_layers=_SMALL_SIGLIP_LAYERS,
        num_attention_heads=4,
        image_size=56,
        patch_size=14,
        num_channels=3,
        layer_norm_eps=1e-6,
        hidden_act="gelu_pytorch_tanh",
    ),
    uso_style_tokens=4,
    uso_lora_rank=4,
    omniconsistency_lora_rank=4,
    style_lora_rank=4,
)

ARCHITECTURES = {arch.name: arch for arch in (FULL, SMALL, TINY)}


def architecture(size: str) -> Architecture:
    """The architecture of `size` ("full", "small" or "tiny"); anything else is a ValueError."""
    try:
        return ARCHITECTURES[size]
    except KeyError:
        raise ValueError(f"size must be one of {', '.join(MODEL_SIZES)}, got {size!r}") from None
