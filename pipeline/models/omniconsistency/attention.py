"""OmniConsistency's attention: the warm-up pass that fills a condition K/V cache, and the
denoising pass that reads it.

Reference semantics (showlab/OmniConsistency `src_inference/layers_cache.py`, see
shared/reference/omniconsistency.md section 4):

- Warm-up (once per image): the image stream holds only the condition tokens. q/k/v of the
  condition rows get the consistency LoRA added (double AND single blocks; never the text
  projections). Each block's condition K and V are cached *before* the q/k RMSNorm and RoPE.
  Attention uses a mask: text queries see everything, condition queries see only condition keys.
- Denoising steps: no consistency LoRA. The image keys/values are [noise ; cached condition],
  RMSNorm covers the cached keys too, RoPE runs over [text, noise, condition] positions, and the
  text+noise queries attend with no mask. Condition tokens produce no outputs.

Unlike the reference, nothing here lives in the processors: the cache and the LoRA travel in an
`OmniAttentionContext` passed as `joint_attention_kwargs={"omni": context}`, so a cache belongs
to exactly one generation, and two models or two interleaved generations cannot see each other's
state. Without a context the processors compute stock FLUX attention (diffusers' own processor).

Why each block gets a `BlockAttention` view from a forward pre-hook: diffusers hands the same
`joint_attention_kwargs` to every block, and a block must find its own cache entry and LoRA. If
the processor looked them up by its block's name, every block's code would differ by a constant
and a regionally compiled block would recompile once per block (57 graphs for FLUX.1-dev, far
past dynamo's recompile limit). The pre-hook runs eagerly, outside the compiled block forward
(`models.compilation.compile_repeated_blocks`), and hands the block a view whose fields are
tensors and modules of the same shapes in every block: one graph per block kind and phase.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass, field

import torch
import torch.nn.functional as F
from diffusers.models.embeddings import apply_rotary_emb
from diffusers.models.transformers.transformer_flux import FluxAttnProcessor, FluxTransformer2DModel

from pipeline.models.omniconsistency.lora import ConsistencyLora, ConsistencyLoraBlock

CONTEXT_KWARG = "omni"


class Phase(enum.Enum):
    WARMUP = "warmup"  # condition tokens in, cache filled
    DENOISE = "denoise"  # noise tokens in, cache read


@dataclass
class BlockKV:
    """One block's slot in a generation's cache; the warm-up pass fills it (also from inside a
    compiled block: an attribute write on an existing object, replayed by dynamo)."""

    key: torch.Tensor | None = None
    value: torch.Tensor | None = None


@dataclass
class CondKVCache:
    """Every block's condition key and value ([B, heads, n_cond, head_dim], pre-norm, pre-RoPE)
    for ONE generation. It depends on the condition latent, pooled text, guidance and weights
    (base, consistency LoRA, style LoRA), never on T5 embeddings, noise or the step."""

    n_cond: int
    slots: dict[str, BlockKV] = field(default_factory=dict)

    @property
    def entries(self) -> dict[str, tuple[torch.Tensor, torch.Tensor]]:
        """Block name -> (key, value) of every filled slot."""
        return {
            name: (slot.key, slot.value)
            for name, slot in self.slots.items()
            if slot.key is not None and slot.value is not None
        }

    def slot(self, block: str) -> BlockKV:
        """The slot of `block`, created empty on first use."""
        return self.slots.setdefault(block, BlockKV())

    def store(self, block: str, key: torch.Tensor, value: torch.Tensor) -> None:
        slot = self.slot(block)
        slot.key, slot.value = key, value

    def get(self, block: str) -> tuple[torch.Tensor, torch.Tensor]:
        try:
            return self.entries[block]
        except KeyError:
            raise RuntimeError(
                f"condition K/V cache has no entry for {block}: the warm-up pass "
                "did not run for this generation"
            ) from None

    @property
    def nbytes(self) -> int:
        return sum(
            k.numel() * k.element_size() + v.numel() * v.element_size()
            for k, v in self.entries.values()
        )

    def clear(self) -> None:
        self.slots.clear()


@dataclass
class BlockAttention:
    """What one block's processor needs for one transformer call: the same fields, of the same
    shapes, in every block of a kind (see the module docstring)."""

    phase: Phase
    slot: BlockKV  # warm-up: filled here; denoising: read
    n_cond: int
    lora: ConsistencyLoraBlock | None = None  # warm-up only
    lora_weight: float = 1.0
    apply_proj_loras: bool = False


@dataclass
class OmniAttentionContext:
    """What the processors need for one transformer call of one generation."""

    phase: Phase
    cache: CondKVCache
    lora: ConsistencyLora | None = None  # needed in the warm-up only
    lora_weight: float = 1.0  # the reference's lora_weights[0]
    apply_proj_loras: bool = False  # EasyControl behaviour; the released OmniConsistency skips it

    def for_block(self, kind: str, index: int) -> BlockAttention:
        """The view of block `index` of `kind` ("double" | "single"); raises if a denoising
        pass finds no warm-up entry for it."""
        name = f"{kind}{index}"
        lora = None
        if self.phase is Phase.WARMUP:
            if self.lora is None:
                raise ValueError("the warm-up pass needs the consistency LoRA")
            block = self.lora.double_block if kind == "double" else self.lora.single_block
            lora = block(index)
        else:
            self.cache.get(name)  # a clear error, before any compiled code runs
        return BlockAttention(
            self.phase,
            self.cache.slot(name),
            self.cache.n_cond,
            lora,
            self.lora_weight,
            self.apply_proj_loras,
        )


def _split_heads(x: torch.Tensor, heads: int) -> torch.Tensor:
    """[B, L, heads*d] -> [B, heads, L, d]."""
    batch, length, _ = x.shape
    return x.view(batch, length, heads, -1).transpose(1, 2)


def _merge_heads(x: torch.Tensor) -> torch.Tensor:
    """[B, heads, L, d] -> [B, L, heads*d]."""
    batch, heads, length, dim = x.shape
    return x.transpose(1, 2).reshape(batch, length, heads * dim)


def _rope(x: torch.Tensor, rotary: tuple[torch.Tensor, torch.Tensor], rows: slice) -> torch.Tensor:
    cos, sin = rotary
    return apply_rotary_emb(x, (cos[rows], sin[rows]))


def warmup_mask(n_text: int, n_cond: int, device: torch.device) -> torch.Tensor:
    """Boolean [L, L] (True = may attend): text queries see all keys, condition queries only
    condition keys. Equivalent to the reference's additive -1e20 mask."""
    length = n_text + n_cond
    mask = torch.ones(length, length, dtype=torch.bool, device=device)
    mask[n_text:, :n_text] = False
    return mask


def _with_consistency_lora(
    projected: torch.Tensor,
    source: torch.Tensor,
    block: ConsistencyLoraBlock,
    projection: str,
    weight: float,
    first_cond_row: int,
) -> torch.Tensor:
    """projected + weight * LoRA(source) on the condition rows only (others get an exact zero)."""
    delta = weight * block.pair(projection)(source[:, first_cond_row:])
    if first_cond_row == 0:
        return projected + delta
    return torch.cat([projected[:, :first_cond_row], projected[:, first_cond_row:] + delta], dim=1)


class OmniDoubleStreamProcessor:
    """Attention of a double-stream block (image stream = condition or noise tokens)."""

    def __init__(self):
        self._stock = FluxAttnProcessor()

    def __call__(
        self,
        attn,
        hidden_states: torch.Tensor,
        encoder_hidden_states: torch.Tensor | None = None,
        attention_mask: torch.Tensor | None = None,
        image_rotary_emb=None,
        omni: BlockAttention | None = None,
    ):
        if omni is None:
            return self._stock(
                attn, hidden_states, encoder_hidden_states, attention_mask, image_rotary_emb
            )
        # diffusers' FluxTransformerBlock always passes the text stream to double-stream attention
        assert encoder_hidden_states is not None
        heads, n_text = attn.heads, encoder_hidden_states.shape[1]

        text_q = attn.norm_added_q(_split_heads(attn.add_q_proj(encoder_hidden_states), heads))
        text_k = attn.norm_added_k(_split_heads(attn.add_k_proj(encoder_hidden_states), heads))
        text_v = _split_heads(attn.add_v_proj(encoder_hidden_states), heads)

        query, key, value = (
            attn.to_q(hidden_states),
            attn.to_k(hidden_states),
            attn.to_v(hidden_states),
        )
        if omni.phase is Phase.WARMUP:
            lora = omni.lora
            assert lora is not None  # a warm-up view always carries its block's LoRA (for_block)
            query = _with_consistency_lora(query, hidden_states, lora, "q", omni.lora_weight, 0)
            key = _with_consistency_lora(key, hidden_states, lora, "k", omni.lora_weight, 0)
            value = _with_consistency_lora(value, hidden_states, lora, "v", omni.lora_weight, 0)
        query, key, value = (_split_heads(t, heads) for t in (query, key, value))
        n_image = query.shape[2]

        if omni.phase is Phase.WARMUP:
            omni.slot.key, omni.slot.value = key, value
            mask = warmup_mask(n_text, n_image, query.device)
        else:
            cond_key, cond_value = omni.slot.key, omni.slot.value
            assert cond_key is not None and cond_value is not None  # checked by for_block
            key = torch.cat([key, cond_key], dim=2)
            value = torch.cat([value, cond_value], dim=2)
            mask = None
        query, key = attn.norm_q(query), attn.norm_k(key)

        query = torch.cat([text_q, query], dim=2)
        key = torch.cat([text_k, key], dim=2)
        value = torch.cat([text_v, value], dim=2)
        if image_rotary_emb is not None:
            query = _rope(query, image_rotary_emb, slice(0, query.shape[2]))
            key = _rope(key, image_rotary_emb, slice(0, key.shape[2]))

        out = _merge_heads(F.scaled_dot_product_attention(query, key, value, attn_mask=mask)).to(
            query.dtype
        )
        text_out, image_out = out[:, :n_text], out[:, n_text:]
        image_out = attn.to_out[0](image_out)
        if omni.phase is Phase.WARMUP and omni.apply_proj_loras:
            # EasyControl: the proj LoRA reads the *projected* output of the condition rows.
            assert omni.lora is not None
            image_out = image_out + omni.lora_weight * omni.lora.pair("proj")(image_out)
        return image_out, attn.to_add_out(text_out)


class OmniSingleStreamProcessor:
    """Attention of a single-stream block (sequence = [text ; condition or noise])."""

    def __init__(self):
        self._stock = FluxAttnProcessor()

    def __call__(
        self,
        attn,
        hidden_states: torch.Tensor,
        encoder_hidden_states: torch.Tensor | None = None,
        attention_mask: torch.Tensor | None = None,
        image_rotary_emb=None,
        omni: BlockAttention | None = None,
    ):
        if omni is None:
            return self._stock(
                attn, hidden_states, encoder_hidden_states, attention_mask, image_rotary_emb
            )
        heads, length = attn.heads, hidden_states.shape[1]

        query, key, value = (
            attn.to_q(hidden_states),
            attn.to_k(hidden_states),
            attn.to_v(hidden_states),
        )
        if omni.phase is Phase.WARMUP:
            n_cond = omni.n_cond
            first_cond = length - n_cond
            lora = omni.lora
            assert lora is not None  # a warm-up view always carries its block's LoRA (for_block)
            query = _with_consistency_lora(
                query, hidden_states, lora, "q", omni.lora_weight, first_cond
            )
            key = _with_consistency_lora(
                key, hidden_states, lora, "k", omni.lora_weight, first_cond
            )
            value = _with_consistency_lora(
                value, hidden_states, lora, "v", omni.lora_weight, first_cond
            )
        query, key, value = (_split_heads(t, heads) for t in (query, key, value))

        if omni.phase is Phase.WARMUP:
            omni.slot.key, omni.slot.value = key[:, :, first_cond:], value[:, :, first_cond:]
            mask = warmup_mask(first_cond, n_cond, query.device)
        else:
            cond_key, cond_value = omni.slot.key, omni.slot.value
            assert cond_key is not None and cond_value is not None  # checked by for_block
            key = torch.cat([key, cond_key], dim=2)
            value = torch.cat([value, cond_value], dim=2)
            mask = None
        query, key = attn.norm_q(query), attn.norm_k(key)
        if image_rotary_emb is not None:
            query = _rope(query, image_rotary_emb, slice(0, query.shape[2]))
            key = _rope(key, image_rotary_emb, slice(0, key.shape[2]))

        out = F.scaled_dot_product_attention(query, key, value, attn_mask=mask)
        return _merge_heads(out).to(query.dtype)


class _BindBlock:
    """Forward pre-hook of one block: replaces the generation's context in the block's
    `joint_attention_kwargs` by this block's `BlockAttention` view (runs eagerly)."""

    def __init__(self, kind: str, index: int):
        self.kind, self.index = kind, index

    def __call__(self, module, args, kwargs):
        extra = kwargs.get("joint_attention_kwargs")
        context = extra.get(CONTEXT_KWARG) if extra else None
        if isinstance(context, OmniAttentionContext):
            kwargs["joint_attention_kwargs"] = {
                **extra,
                CONTEXT_KWARG: context.for_block(self.kind, self.index),
            }
        return args, kwargs


def install_processors(transformer: FluxTransformer2DModel) -> None:
    """Give every block an OmniConsistency processor (stock FLUX attention when no context) and
    the pre-hook that hands it its own view of the context. Idempotent."""
    if getattr(transformer, "_omni_processors_installed", False):
        return
    for kind, blocks, processor in (
        ("double", transformer.transformer_blocks, OmniDoubleStreamProcessor),
        ("single", transformer.single_transformer_blocks, OmniSingleStreamProcessor),
    ):
        for i, block in enumerate(blocks):
            block.attn.set_processor(processor())
            block.register_forward_pre_hook(_BindBlock(kind, i), with_kwargs=True)
    transformer._omni_processors_installed = True


def check_lora_matches(transformer: FluxTransformer2DModel, lora: ConsistencyLora) -> None:
    """The consistency LoRA must have one block per transformer block."""
    if (len(lora.double_blocks), len(lora.single_blocks)) != (
        len(transformer.transformer_blocks),
        len(transformer.single_transformer_blocks),
    ):
        raise ValueError(
            f"consistency LoRA has {len(lora.double_blocks)}/{len(lora.single_blocks)} "
            f"double/single blocks, the transformer "
            f"{len(transformer.transformer_blocks)}/{len(transformer.single_transformer_blocks)}"
        )
