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
class CondKVCache:
    """Every block's condition key and value ([B, heads, n_cond, head_dim], pre-norm, pre-RoPE)
    for ONE generation. It depends on the condition latent, pooled text, guidance and weights
    (base, consistency LoRA, style LoRA), never on T5 embeddings, noise or the step."""

    n_cond: int
    entries: dict[str, tuple[torch.Tensor, torch.Tensor]] = field(default_factory=dict)

    def store(self, block: str, key: torch.Tensor, value: torch.Tensor) -> None:
        self.entries[block] = (key, value)

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
        self.entries.clear()


@dataclass
class OmniAttentionContext:
    """What the processors need for one transformer call of one generation."""

    phase: Phase
    cache: CondKVCache
    lora: ConsistencyLora | None = None  # needed in the warm-up only
    lora_weight: float = 1.0  # the reference's lora_weights[0]
    apply_proj_loras: bool = False  # EasyControl behaviour; the released OmniConsistency skips it


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
    """Attention of double-stream block `index` (image stream = condition or noise tokens)."""

    def __init__(self, index: int):
        self.index = index
        self.block_name = f"double{index}"
        self._stock = FluxAttnProcessor()

    def __call__(
        self,
        attn,
        hidden_states: torch.Tensor,
        encoder_hidden_states: torch.Tensor | None = None,
        attention_mask: torch.Tensor | None = None,
        image_rotary_emb=None,
        omni: OmniAttentionContext | None = None,
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
            assert omni.lora is not None  # a warm-up context always carries the LoRA (sampling)
            lora = omni.lora.double_block(self.index)
            query = _with_consistency_lora(query, hidden_states, lora, "q", omni.lora_weight, 0)
            key = _with_consistency_lora(key, hidden_states, lora, "k", omni.lora_weight, 0)
            value = _with_consistency_lora(value, hidden_states, lora, "v", omni.lora_weight, 0)
        query, key, value = (_split_heads(t, heads) for t in (query, key, value))
        n_image = query.shape[2]

        if omni.phase is Phase.WARMUP:
            omni.cache.store(self.block_name, key, value)
            mask = warmup_mask(n_text, n_image, query.device)
        else:
            cond_key, cond_value = omni.cache.get(self.block_name)
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
            assert omni.lora is not None  # a warm-up context always carries the LoRA (sampling)
            image_out = image_out + omni.lora_weight * omni.lora.double_block(self.index).pair(
                "proj"
            )(image_out)
        return image_out, attn.to_add_out(text_out)


class OmniSingleStreamProcessor:
    """Attention of single-stream block `index` (sequence = [text ; condition or noise])."""

    def __init__(self, index: int):
        self.index = index
        self.block_name = f"single{index}"
        self._stock = FluxAttnProcessor()

    def __call__(
        self,
        attn,
        hidden_states: torch.Tensor,
        encoder_hidden_states: torch.Tensor | None = None,
        attention_mask: torch.Tensor | None = None,
        image_rotary_emb=None,
        omni: OmniAttentionContext | None = None,
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
            n_cond = omni.cache.n_cond
            first_cond = length - n_cond
            assert omni.lora is not None  # a warm-up context always carries the LoRA (sampling)
            lora = omni.lora.single_block(self.index)
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
            omni.cache.store(self.block_name, key[:, :, first_cond:], value[:, :, first_cond:])
            mask = warmup_mask(first_cond, n_cond, query.device)
        else:
            cond_key, cond_value = omni.cache.get(self.block_name)
            key = torch.cat([key, cond_key], dim=2)
            value = torch.cat([value, cond_value], dim=2)
            mask = None
        query, key = attn.norm_q(query), attn.norm_k(key)
        if image_rotary_emb is not None:
            query = _rope(query, image_rotary_emb, slice(0, query.shape[2]))
            key = _rope(key, image_rotary_emb, slice(0, key.shape[2]))

        out = F.scaled_dot_product_attention(query, key, value, attn_mask=mask)
        return _merge_heads(out).to(query.dtype)


def install_processors(transformer: FluxTransformer2DModel) -> None:
    """Give every block an OmniConsistency processor (stock FLUX attention when no context)."""
    for i, block in enumerate(transformer.transformer_blocks):
        block.attn.set_processor(OmniDoubleStreamProcessor(i))
    for i, block in enumerate(transformer.single_transformer_blocks):
        block.attn.set_processor(OmniSingleStreamProcessor(i))


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
