"""Expected tensor names and shapes of every official weight file, as a function of its config.

One table per file format, written from the published module trees (not from any loader), so it
can check a downloaded file before any model is built: `verify_safetensors(path, expected)`
reads only the safetensors header. The release presets (`FLUX_DEV`, `FLUX_AE`, `USO_RELEASE`,
`OMNICONSISTENCY_RELEASE`) describe the real files; tiny presets in `pipeline.weights.tiny` use
the same functions, and the tests hold these tables against the parity fixtures made by the
authors' own code.

Files covered:
- BFL FLUX transformer (flux1-dev.safetensors): img_in, time_in, vector_in, guidance_in, txt_in,
  double_blocks.*, single_blocks.*, final_layer.*; no prefix.
- BFL VAE (ae.safetensors): LDM layout encoder.* / decoder.*, no quant convs.
- USO dit_lora.safetensors (XLabs processor keys) and projector.safetensors (feature_embedder.*).
- OmniConsistency.safetensors (EasyControl processor keys, proj_loras included).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import Any

from pipeline.errors import WeightFileError

Shape = tuple[int, ...]
TensorTable = dict[str, Shape]


def _linear(table: TensorTable, name: str, in_features: int, out_features: int,
            bias: bool = True) -> None:
    table[f"{name}.weight"] = (out_features, in_features)
    if bias:
        table[f"{name}.bias"] = (out_features,)


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
            raise ValueError(f"hidden_size {self.hidden_size} is not a multiple of "
                             f"num_heads {self.num_heads}")
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
        return dict(patch_size=1, in_channels=self.in_channels, out_channels=self.out_channels,
                    num_layers=self.depth, num_single_layers=self.depth_single_blocks,
                    attention_head_dim=self.head_dim, num_attention_heads=self.num_heads,
                    joint_attention_dim=self.context_in_dim,
                    pooled_projection_dim=self.vec_in_dim, guidance_embeds=self.guidance_embed,
                    axes_dims_rope=list(self.axes_dim))


def flux_transformer_tensors(p: FluxParams) -> TensorTable:
    """Tensors of a BFL FLUX transformer checkpoint (flux1-dev.safetensors)."""
    h, out_channels = p.hidden_size, p.out_channels or p.in_channels
    t: TensorTable = {}
    _linear(t, "img_in", p.in_channels, h)
    for name, in_dim in (("time_in", 256), ("vector_in", p.vec_in_dim)) + (
            (("guidance_in", 256),) if p.guidance_embed else ()):
        _linear(t, f"{name}.in_layer", in_dim, h)
        _linear(t, f"{name}.out_layer", h, h)
    _linear(t, "txt_in", p.context_in_dim, h)
    for i in range(p.depth):
        block = f"double_blocks.{i}"
        for stream in ("img", "txt"):
            _linear(t, f"{block}.{stream}_mod.lin", h, 6 * h)
            _linear(t, f"{block}.{stream}_attn.qkv", h, 3 * h, bias=p.qkv_bias)
            t[f"{block}.{stream}_attn.norm.query_norm.scale"] = (p.head_dim,)
            t[f"{block}.{stream}_attn.norm.key_norm.scale"] = (p.head_dim,)
            _linear(t, f"{block}.{stream}_attn.proj", h, h)
            _linear(t, f"{block}.{stream}_mlp.0", h, p.mlp_hidden)
            _linear(t, f"{block}.{stream}_mlp.2", p.mlp_hidden, h)
    for i in range(p.depth_single_blocks):
        block = f"single_blocks.{i}"
        _linear(t, f"{block}.linear1", h, 3 * h + p.mlp_hidden)
        _linear(t, f"{block}.linear2", h + p.mlp_hidden, h)
        t[f"{block}.norm.query_norm.scale"] = (p.head_dim,)
        t[f"{block}.norm.key_norm.scale"] = (p.head_dim,)
        _linear(t, f"{block}.modulation.lin", h, 3 * h)
    _linear(t, "final_layer.linear", h, out_channels)
    _linear(t, "final_layer.adaLN_modulation.1", h, 2 * h)
    return t


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
            raise ValueError(f"VAE widths {self.widths} must be multiples of the "
                             f"{self.norm_num_groups} GroupNorm groups")

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
        return dict(in_channels=self.in_channels, out_channels=self.out_ch,
                    down_block_types=["DownEncoderBlock2D"] * levels,
                    up_block_types=["UpDecoderBlock2D"] * levels,
                    block_out_channels=list(self.widths), layers_per_block=self.num_res_blocks,
                    act_fn="silu", latent_channels=self.z_channels,
                    norm_num_groups=self.norm_num_groups, sample_size=self.resolution,
                    scaling_factor=self.scale_factor, shift_factor=self.shift_factor,
                    use_quant_conv=False, use_post_quant_conv=False,
                    mid_block_add_attention=True, force_upcast=True)


def _conv(table: TensorTable, name: str, in_ch: int, out_ch: int, k: int) -> None:
    table[f"{name}.weight"] = (out_ch, in_ch, k, k)
    table[f"{name}.bias"] = (out_ch,)


def _norm(table: TensorTable, name: str, channels: int) -> None:
    table[f"{name}.weight"] = (channels,)
    table[f"{name}.bias"] = (channels,)


def _resnet(table: TensorTable, name: str, in_ch: int, out_ch: int) -> None:
    _norm(table, f"{name}.norm1", in_ch)
    _conv(table, f"{name}.conv1", in_ch, out_ch, 3)
    _norm(table, f"{name}.norm2", out_ch)
    _conv(table, f"{name}.conv2", out_ch, out_ch, 3)
    if in_ch != out_ch:
        _conv(table, f"{name}.nin_shortcut", in_ch, out_ch, 1)


def _mid(table: TensorTable, name: str, ch: int) -> None:
    _resnet(table, f"{name}.block_1", ch, ch)
    _norm(table, f"{name}.attn_1.norm", ch)
    for proj in ("q", "k", "v", "proj_out"):
        _conv(table, f"{name}.attn_1.{proj}", ch, ch, 1)
    _resnet(table, f"{name}.block_2", ch, ch)


def flux_vae_tensors(p: AutoEncoderParams) -> TensorTable:
    """Tensors of a BFL/LDM autoencoder checkpoint (ae.safetensors)."""
    t: TensorTable = {}
    widths, levels = p.widths, len(p.ch_mult)
    _conv(t, "encoder.conv_in", p.in_channels, p.ch, 3)
    block_in = p.ch
    for i in range(levels):
        for j in range(p.num_res_blocks):
            _resnet(t, f"encoder.down.{i}.block.{j}", block_in, widths[i])
            block_in = widths[i]
        if i != levels - 1:
            _conv(t, f"encoder.down.{i}.downsample.conv", block_in, block_in, 3)
    _mid(t, "encoder.mid", block_in)
    _norm(t, "encoder.norm_out", block_in)
    _conv(t, "encoder.conv_out", block_in, 2 * p.z_channels, 3)

    block_in = widths[-1]
    _conv(t, "decoder.conv_in", p.z_channels, block_in, 3)
    _mid(t, "decoder.mid", block_in)
    for i in reversed(range(levels)):
        for j in range(p.num_res_blocks + 1):
            _resnet(t, f"decoder.up.{i}.block.{j}", block_in, widths[i])
            block_in = widths[i]
        if i != 0:
            _conv(t, f"decoder.up.{i}.upsample.conv", block_in, block_in, 3)
    _norm(t, "decoder.norm_out", block_in)
    _conv(t, "decoder.conv_out", block_in, p.out_ch, 3)
    return t


# ------------------------------------------------------------------------------------ USO
@dataclass(frozen=True)
class USOProjectorParams:
    """USO's SigLIPMultiFeatProjModel; defaults are the release (SigLIP so400m -> FLUX 3072)."""

    siglip_tokens: int = 729  # (384/14)^2 patch tokens
    style_tokens: int = 64  # per level; 3 levels -> 192 style tokens per image
    siglip_dim: int = 1152
    hidden_size: int = 3072


USO_PROJECTOR_LEVELS = ("high", "mid", "low")


def uso_dit_lora_tensors(p: FluxParams, rank: int) -> TensorTable:
    """USO dit_lora.safetensors: XLabs processor LoRAs on every double and single block."""
    h = p.hidden_size
    t: TensorTable = {}

    def lora(name: str, in_features: int, out_features: int) -> None:
        t[f"{name}.down.weight"] = (rank, in_features)
        t[f"{name}.up.weight"] = (out_features, rank)

    for i in range(p.depth):
        for n in (1, 2):  # 1 = image stream, 2 = text stream
            lora(f"double_blocks.{i}.processor.qkv_lora{n}", h, 3 * h)
            lora(f"double_blocks.{i}.processor.proj_lora{n}", h, h)
    for i in range(p.depth_single_blocks):
        lora(f"single_blocks.{i}.processor.qkv_lora", h, 3 * h)
        lora(f"single_blocks.{i}.processor.proj_lora", h + p.mlp_hidden, h)
    return t


def uso_projector_tensors(p: USOProjectorParams) -> TensorTable:
    """USO projector.safetensors: three (token mixer, LayerNorm, projection) levels."""
    t: TensorTable = {}
    for level in USO_PROJECTOR_LEVELS:
        prefix = f"feature_embedder.{level}"
        _linear(t, f"{prefix}_embedding_linear.0", p.siglip_tokens, p.style_tokens)
        _norm(t, f"{prefix}_layer_norm", p.siglip_dim)
        _linear(t, f"{prefix}_projection", p.siglip_dim, p.hidden_size)
    return t


# ------------------------------------------------------------------------ OmniConsistency
def omniconsistency_lora_tensors(num_double: int, num_single: int, inner_dim: int,
                                 rank: int) -> TensorTable:
    """OmniConsistency.safetensors: q/k/v/proj LoRAs per double block, q/k/v per single block."""
    t: TensorTable = {}
    for prefix, count, paths in (("transformer_blocks", num_double, ("q", "k", "v", "proj")),
                                 ("single_transformer_blocks", num_single, ("q", "k", "v"))):
        for i in range(count):
            for path in paths:
                name = f"{prefix}.{i}.attn.processor.{path}_loras.0"
                t[f"{name}.down.weight"] = (rank, inner_dim)
                t[f"{name}.up.weight"] = (inner_dim, rank)
    return t


# -------------------------------------------------------------------------------- presets
FLUX_DEV = FluxParams()
FLUX_AE = AutoEncoderParams()


@dataclass(frozen=True)
class USORelease:
    flux: FluxParams = FLUX_DEV
    lora_rank: int = 128
    projector: USOProjectorParams = field(default_factory=USOProjectorParams)


@dataclass(frozen=True)
class OmniConsistencyRelease:
    flux: FluxParams = FLUX_DEV
    # Rank 128 is EasyControl's default; the real file's header was not inspected (the loader
    # reads the rank from the file, `verify` should be run with the rank found there).
    lora_rank: int = 128


USO_RELEASE = USORelease()
OMNICONSISTENCY_RELEASE = OmniConsistencyRelease()


def release_tables() -> dict[str, TensorTable]:
    """Logical file name -> expected tensors, for the released weight files."""
    return {
        "flux1-dev.safetensors": flux_transformer_tensors(FLUX_DEV),
        "ae.safetensors": flux_vae_tensors(FLUX_AE),
        "uso/dit_lora.safetensors": uso_dit_lora_tensors(USO_RELEASE.flux, USO_RELEASE.lora_rank),
        "uso/projector.safetensors": uso_projector_tensors(USO_RELEASE.projector),
        "omniconsistency/OmniConsistency.safetensors": omniconsistency_lora_tensors(
            OMNICONSISTENCY_RELEASE.flux.depth, OMNICONSISTENCY_RELEASE.flux.depth_single_blocks,
            OMNICONSISTENCY_RELEASE.flux.hidden_size, OMNICONSISTENCY_RELEASE.lora_rank),
    }


# --------------------------------------------------------------------------- verification
def read_safetensors_shapes(path: Path) -> TensorTable:
    """Tensor name -> shape from a safetensors file, reading only its header.

    A missing, truncated or corrupt file raises `WeightFileError` naming it.
    """
    from safetensors import safe_open

    path = Path(path)
    if not path.is_file():
        raise WeightFileError(path, "file does not exist")
    try:
        with safe_open(str(path), framework="pt") as handle:
            return {key: tuple(handle.get_slice(key).get_shape()) for key in handle.keys()}
    except Exception as exc:  # SafetensorError for bad headers, OSError for I/O
        raise WeightFileError(path, f"not a readable safetensors file ({exc})") from exc


@dataclass
class TableDifference:
    """How a file's tensors differ from the expected table (empty lists = identical)."""

    missing: list[str] = field(default_factory=list)
    unexpected: list[str] = field(default_factory=list)
    misshaped: list[str] = field(default_factory=list)  # "name: file (a, b) != expected (c, d)"

    @property
    def ok(self) -> bool:
        return not (self.missing or self.unexpected or self.misshaped)


def compare_tables(found: Mapping[str, Shape], expected: Mapping[str, Shape]) -> TableDifference:
    diff = TableDifference(missing=sorted(set(expected) - set(found)),
                           unexpected=sorted(set(found) - set(expected)))
    for key in sorted(set(found) & set(expected)):
        if tuple(found[key]) != tuple(expected[key]):
            diff.misshaped.append(f"{key}: file {tuple(found[key])} != expected {tuple(expected[key])}")
    return diff


def verify_safetensors(path: Path, expected: Mapping[str, Shape]) -> None:
    """Raise `WeightFileError` naming the file and the offending keys unless names and shapes
    of `path` equal `expected` exactly. Reads only the header."""
    diff = compare_tables(read_safetensors_shapes(path), expected)
    for problem, keys in (("missing tensors", diff.missing), ("unexpected tensors", diff.unexpected),
                          ("tensors with the wrong shape", diff.misshaped)):
        if keys:
            raise WeightFileError(path, problem, keys)
