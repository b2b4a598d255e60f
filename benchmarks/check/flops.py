"""Analytic FLOP counts of one image, the model of shared/reference/performance.md.

Counted: the transformer's matmuls (every token through every block's linears: 12 h^2
multiply-adds per token and block, a single block's fused linear1/linear2 included), the
attention products (2 * 2 * queries * keys * h per block), the embedders and the final layer,
and the LoRA branches that run unmerged (USO's rank-128 DiT LoRA, OmniConsistency's consistency
LoRA in the warm-up pass, a style LoRA). Not counted: modulation (per image, not per token),
norms, RoPE, text encoders, SigLIP and the VAE, which together cost a few percent at 1024^2.
A multiply-add is 2 FLOPs.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class Transformer:
    hidden: int
    double: int
    single: int
    in_channels: int = 64
    context_dim: int = 4096

    @classmethod
    def of(cls, config) -> Transformer:
        """From a diffusers FluxTransformer2DModel config."""
        return cls(
            config.num_attention_heads * config.attention_head_dim,
            config.num_layers,
            config.num_single_layers,
            config.in_channels,
            config.joint_attention_dim,
        )

    @property
    def blocks(self) -> int:
        return self.double + self.single


def forward_flops(t: Transformer, text: int, image: int, extra_keys: int = 0) -> float:
    """One transformer call over `text` + `image` query tokens; attention keys are the queries
    plus `extra_keys` (OmniConsistency's cached condition tokens)."""
    queries = text + image
    linear = 2 * 12 * t.hidden**2 * queries * t.blocks
    embed = 2 * t.in_channels * t.hidden * image * 2 + 2 * t.context_dim * t.hidden * text
    attention = 4 * queries * (queries + extra_keys) * t.hidden * t.blocks
    return float(linear + embed + attention)


def style_lora_flops(t: Transformer, tokens: int, rank: int) -> float:
    """A kohya FLUX style LoRA (double blocks: qkv, proj, mlp in and out of each stream;
    single blocks: linear2) on every token: 16 h r (double) and 6 h r (single) multiply-adds."""
    return float(2 * rank * t.hidden * tokens * (16 * t.double + 6 * t.single))


def flux_image(t: Transformer, steps: int, text: int, image: int) -> float:
    """Plain FLUX text-to-image: `steps` calls over text + noise tokens."""
    return steps * forward_flops(t, text, image)


def uso_image(
    t: Transformer, steps: int, text: int, style: int, target: int, subject: int, lora_rank: int
) -> float:
    """USO: text stream = style + T5 tokens, image stream = target + subject tokens; the DiT
    LoRA runs unmerged on every token (6 h r per double-block stream, 10 h r per single block)."""
    tokens = text + style + target + subject
    lora = 2 * lora_rank * t.hidden * tokens * (6 * t.double + 10 * t.single)
    return steps * (forward_flops(t, text + style, target + subject) + lora)


def omniconsistency_image(
    t: Transformer, steps: int, text: int, noise: int, cond: int, lora_rank: int, style_rank: int
) -> float:
    """OmniConsistency: one warm-up pass over text + condition tokens (consistency LoRA on q, k,
    v of the condition rows), then `steps` calls over text + noise queries that also attend to
    the cached condition keys; a style LoRA, when mounted, runs in every call."""
    warm_up = forward_flops(t, text, cond) + 2 * 6 * t.hidden * lora_rank * cond * t.blocks
    step = forward_flops(t, text, noise, extra_keys=cond)
    style = 0.0
    if style_rank:
        style = style_lora_flops(t, text + cond, style_rank) + steps * style_lora_flops(
            t, text + noise, style_rank
        )
    return warm_up + steps * step + style
