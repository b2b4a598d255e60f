"""Which tensors every official weight file holds (names and shapes), and checking a file for them.

One table per file format, written from the published module trees (not from any loader), as a
function of the hyper-parameters in `architecture`. A downloaded file can so be checked before
any model is built: `verify_safetensors(path, expected)` reads only the safetensors header.
`release_tables()` describes the released files; the tiny weights build writes its files from
the same tables, and the tests hold them against the parity fixtures made by the authors' code.

Files covered:
- BFL FLUX transformer (flux1-dev.safetensors): img_in, time_in, vector_in, guidance_in, txt_in,
  double_blocks.*, single_blocks.*, final_layer.*; no prefix.
- BFL VAE (ae.safetensors): LDM layout encoder.* / decoder.*, no quant convs.
- USO dit_lora.safetensors (XLabs processor keys) and projector.safetensors (feature_embedder.*).
- OmniConsistency.safetensors (EasyControl processor keys, proj_loras included).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path

from pipeline.errors import WeightFileError
from pipeline.models.architecture import (
    FULL,
    USO_PROJECTOR_LEVELS,
    AutoEncoderParams,
    FluxParams,
    USOProjectorParams,
)
from pipeline.models.flux.tensor_files import read_safetensors_header

Shape = tuple[int, ...]
TensorTable = dict[str, Shape]


def _linear(
    table: TensorTable, name: str, in_features: int, out_features: int, bias: bool = True
) -> None:
    table[f"{name}.weight"] = (out_features, in_features)
    if bias:
        table[f"{name}.bias"] = (out_features,)


def _conv(table: TensorTable, name: str, in_ch: int, out_ch: int, k: int) -> None:
    table[f"{name}.weight"] = (out_ch, in_ch, k, k)
    table[f"{name}.bias"] = (out_ch,)


def _norm(table: TensorTable, name: str, channels: int) -> None:
    table[f"{name}.weight"] = (channels,)
    table[f"{name}.bias"] = (channels,)


# ----------------------------------------------------------------------- FLUX transformer
def flux_transformer_tensors(p: FluxParams) -> TensorTable:
    """Tensors of a BFL FLUX transformer checkpoint (flux1-dev.safetensors)."""
    h, out_channels = p.hidden_size, p.out_channels or p.in_channels
    t: TensorTable = {}
    _linear(t, "img_in", p.in_channels, h)
    for name, in_dim in (("time_in", 256), ("vector_in", p.vec_in_dim)) + (
        (("guidance_in", 256),) if p.guidance_embed else ()
    ):
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
def omniconsistency_lora_tensors(
    num_double: int, num_single: int, inner_dim: int, rank: int
) -> TensorTable:
    """OmniConsistency.safetensors: q/k/v/proj LoRAs per double block, q/k/v per single block."""
    t: TensorTable = {}
    for prefix, count, paths in (
        ("transformer_blocks", num_double, ("q", "k", "v", "proj")),
        ("single_transformer_blocks", num_single, ("q", "k", "v")),
    ):
        for i in range(count):
            for path in paths:
                name = f"{prefix}.{i}.attn.processor.{path}_loras.0"
                t[f"{name}.down.weight"] = (rank, inner_dim)
                t[f"{name}.up.weight"] = (inner_dim, rank)
    return t


def release_tables() -> dict[str, TensorTable]:
    """Logical file name -> expected tensors, for the released weight files.

    OmniConsistency's rank 128 is EasyControl's default; the real file's header was not
    inspected (the loader reads the rank from the file, `weights verify` too)."""
    flux = FULL.flux
    return {
        "flux1-dev.safetensors": flux_transformer_tensors(flux),
        "ae.safetensors": flux_vae_tensors(FULL.vae),
        "uso/dit_lora.safetensors": uso_dit_lora_tensors(flux, FULL.uso_lora_rank),
        "uso/projector.safetensors": uso_projector_tensors(FULL.uso_projector),
        "omniconsistency/OmniConsistency.safetensors": omniconsistency_lora_tensors(
            flux.depth, flux.depth_single_blocks, flux.hidden_size, FULL.omniconsistency_lora_rank
        ),
    }


# --------------------------------------------------------------------------- verification
def read_safetensors_shapes(path: Path) -> TensorTable:
    """Tensor name -> shape from a safetensors file, reading only its header.

    A missing, truncated or corrupt file raises `WeightFileError` naming it.
    """
    return {key: info.shape for key, info in read_safetensors_header(Path(path)).items()}


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
    diff = TableDifference(
        missing=sorted(set(expected) - set(found)), unexpected=sorted(set(found) - set(expected))
    )
    for key in sorted(set(found) & set(expected)):
        if tuple(found[key]) != tuple(expected[key]):
            diff.misshaped.append(
                f"{key}: file {tuple(found[key])} != expected {tuple(expected[key])}"
            )
    return diff


def verify_safetensors(path: Path, expected: Mapping[str, Shape]) -> None:
    """Raise `WeightFileError` naming the file and the offending keys unless names and shapes
    of `path` equal `expected` exactly. Reads only the header."""
    diff = compare_tables(read_safetensors_shapes(path), expected)
    for problem, keys in (
        ("missing tensors", diff.missing),
        ("unexpected tensors", diff.unexpected),
        ("tensors with the wrong shape", diff.misshaped),
    ):
        if keys:
            raise WeightFileError(path, problem, keys)
