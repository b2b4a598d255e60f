"""The CSD release checkpoint (`checkpoint.pth` of learn2phoenix/CSD) as a folder restyle's CSD
metric loads (`pipeline.metrics.csd`): a transformers `CLIPVisionModel` + its CLIP image
processor + `csd_heads.safetensors`.

    restyle weights convert-csd checkpoint.pth /models/csd

The checkpoint holds `CSD_CLIP`'s state dict (under `model_state_dict`, keys maybe prefixed
`module.`): `backbone.*` is OpenAI CLIP's visual tower in its own layout (conv1,
class_embedding, positional_embedding, ln_pre, transformer.resblocks.<i>.{attn.in_proj_*,
attn.out_proj.*, ln_1, mlp.c_fc, mlp.c_proj, ln_2}, ln_post; its `proj` was removed), and
`last_layer_style` / `last_layer_content` are the two [width, 768] heads. The key mapping is the
one of transformers' `convert_clip_original_pytorch_to_hf.py`; the fused attention input
projection is split into q, k, v. OpenAI's towers have one head per 64 channels.
"""

from __future__ import annotations

import math
from pathlib import Path

import torch

from pipeline.errors import WeightsError

HEAD_WIDTH = 64
HEADS_FILE = "csd_heads.safetensors"
BLOCK = {
    "ln_1": "layer_norm1",
    "ln_2": "layer_norm2",
    "mlp.c_fc": "mlp.fc1",
    "mlp.c_proj": "mlp.fc2",
    "attn.out_proj": "self_attn.out_proj",
}


def _state_dict(checkpoint: dict) -> dict[str, torch.Tensor]:
    for key in ("model_state_dict", "state_dict", "model"):
        if isinstance(checkpoint.get(key), dict):
            checkpoint = checkpoint[key]
            break
    return {
        k.removeprefix("module."): v for k, v in checkpoint.items() if isinstance(v, torch.Tensor)
    }


def convert_visual(tower: dict[str, torch.Tensor]) -> tuple[dict[str, torch.Tensor], dict]:
    """OpenAI visual-tower tensors (no `backbone.` prefix) -> CLIPVisionModel tensors, config."""
    width = tower["class_embedding"].shape[0]
    patch = tower["conv1.weight"].shape[-1]
    positions = tower["positional_embedding"].shape[0]
    layers = 1 + max(int(k.split(".")[2]) for k in tower if k.startswith("transformer.resblocks."))
    out = {
        "embeddings.class_embedding": tower["class_embedding"],
        "embeddings.patch_embedding.weight": tower["conv1.weight"],
        "embeddings.position_embedding.weight": tower["positional_embedding"],
        "pre_layrnorm.weight": tower["ln_pre.weight"],
        "pre_layrnorm.bias": tower["ln_pre.bias"],
        "post_layernorm.weight": tower["ln_post.weight"],
        "post_layernorm.bias": tower["ln_post.bias"],
    }
    for i in range(layers):
        src, dst = f"transformer.resblocks.{i}.", f"encoder.layers.{i}."
        for kind in ("weight", "bias"):
            q, k, v = tower[f"{src}attn.in_proj_{kind}"].chunk(3, dim=0)
            out.update(
                {
                    f"{dst}self_attn.{n}_proj.{kind}": t
                    for n, t in zip("qkv", (q, k, v), strict=True)
                }
            )
            for old, new in BLOCK.items():
                out[f"{dst}{new}.{kind}"] = tower[f"{src}{old}.{kind}"]
    config = {
        "hidden_size": width,
        "intermediate_size": tower["transformer.resblocks.0.mlp.c_fc.weight"].shape[0],
        "num_hidden_layers": layers,
        "num_attention_heads": max(1, width // HEAD_WIDTH),
        "image_size": patch * math.isqrt(positions - 1),
        "patch_size": patch,
        "hidden_act": "quick_gelu",
        "layer_norm_eps": 1e-5,
    }
    return {k: v.float().contiguous() for k, v in out.items()}, config


def convert_csd(checkpoint: Path, folder: Path, head_width: int = HEAD_WIDTH) -> Path:
    """Write the CSD folder for `checkpoint` into `folder` (see the module doc)."""
    from safetensors.torch import save_file
    from transformers import CLIPImageProcessorPil, CLIPVisionConfig, CLIPVisionModel

    state = _state_dict(torch.load(checkpoint, map_location="cpu", weights_only=True))
    needed = ("last_layer_style", "last_layer_content", "backbone.class_embedding")
    missing = [k for k in needed if k not in state]
    if missing:
        raise WeightsError(
            f"{checkpoint}: not a CSD checkpoint (no {missing}; found {sorted(state)[:5]})"
        )
    tower = {k.removeprefix("backbone."): v for k, v in state.items() if k.startswith("backbone.")}
    tensors, config = convert_visual(tower)
    config["num_attention_heads"] = max(1, config["hidden_size"] // head_width)
    model = CLIPVisionModel(CLIPVisionConfig(**config))
    model.load_state_dict(
        {f"vision_model.{k}": v for k, v in tensors.items()} if _prefixed(model) else tensors
    )
    folder.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(folder)
    size = config["image_size"]
    CLIPImageProcessorPil(
        size={"shortest_edge": size}, crop_size={"height": size, "width": size}
    ).save_pretrained(folder)
    heads = {"style": state["last_layer_style"], "content": state["last_layer_content"]}
    save_file({k: v.float().contiguous() for k, v in heads.items()}, str(folder / HEADS_FILE))
    return folder


def _prefixed(model: torch.nn.Module) -> bool:
    return any(k.startswith("vision_model.") for k in model.state_dict())
