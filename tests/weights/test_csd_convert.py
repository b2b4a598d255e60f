"""The CSD release checkpoint, converted, gives the descriptors the authors' model gives.

The authors' model is rebuilt here from torch primitives exactly as OpenAI CLIP's
`VisionTransformer` and CSD's `CSD_CLIP` define it (nn.MultiheadAttention with a fused input
projection, QuickGELU, ln_post on the CLS token, `proj` removed, style head), at a tiny width
with random weights, saved the way CSD's training script saves it, and converted.
"""

from __future__ import annotations

import json
from collections import OrderedDict

import numpy as np
import pytest
import torch
from PIL import Image
from torch import nn
from typer.testing import CliRunner

from pipeline.cli.main import app
from pipeline.errors import WeightsError
from pipeline.metrics.csd import CsdEmbedder
from pipeline.weights.csd_convert import convert_csd

WIDTH, LAYERS, PATCH, RESOLUTION, EMBED = 128, 2, 8, 32, 24


class QuickGELU(nn.Module):
    def forward(self, x):
        return x * torch.sigmoid(1.702 * x)


class ResidualAttentionBlock(nn.Module):
    def __init__(self, d_model: int, n_head: int):
        super().__init__()
        self.attn = nn.MultiheadAttention(d_model, n_head)
        self.ln_1 = nn.LayerNorm(d_model)
        self.mlp = nn.Sequential(
            OrderedDict(
                [
                    ("c_fc", nn.Linear(d_model, d_model * 4)),
                    ("gelu", QuickGELU()),
                    ("c_proj", nn.Linear(d_model * 4, d_model)),
                ]
            )
        )
        self.ln_2 = nn.LayerNorm(d_model)

    def forward(self, x):
        y = self.ln_1(x)
        x = x + self.attn(y, y, y, need_weights=False)[0]
        return x + self.mlp(self.ln_2(x))


class VisionTransformer(nn.Module):
    """openai/CLIP clip/model.py, `proj` set to None as CSD_CLIP does."""

    def __init__(self):
        super().__init__()
        scale = WIDTH**-0.5
        self.conv1 = nn.Conv2d(3, WIDTH, kernel_size=PATCH, stride=PATCH, bias=False)
        self.class_embedding = nn.Parameter(scale * torch.randn(WIDTH))
        self.positional_embedding = nn.Parameter(
            scale * torch.randn((RESOLUTION // PATCH) ** 2 + 1, WIDTH)
        )
        self.ln_pre = nn.LayerNorm(WIDTH)
        self.transformer = nn.Module()
        self.transformer.resblocks = nn.Sequential(
            *[ResidualAttentionBlock(WIDTH, WIDTH // 64) for _ in range(LAYERS)]
        )
        self.ln_post = nn.LayerNorm(WIDTH)

    def forward(self, x):
        x = self.conv1(x)
        x = x.reshape(x.shape[0], x.shape[1], -1).permute(0, 2, 1)
        cls = self.class_embedding + torch.zeros(x.shape[0], 1, x.shape[-1])
        x = torch.cat([cls, x], dim=1) + self.positional_embedding
        x = self.ln_pre(x).permute(1, 0, 2)
        x = self.transformer.resblocks(x).permute(1, 0, 2)
        return self.ln_post(x[:, 0, :])


class CSD_CLIP(nn.Module):
    def __init__(self):
        super().__init__()
        self.backbone = VisionTransformer()
        self.last_layer_style = nn.Parameter(WIDTH**-0.5 * torch.randn(WIDTH, EMBED))
        self.last_layer_content = nn.Parameter(WIDTH**-0.5 * torch.randn(WIDTH, EMBED))

    def forward(self, pixels):
        feature = self.backbone(pixels)
        return nn.functional.normalize(feature @ self.last_layer_style, dim=1, p=2)


def test_converted_csd_checkpoint_gives_the_authors_descriptors(tmp_path):
    torch.manual_seed(0)
    authors = CSD_CLIP().eval()
    with torch.no_grad():  # non-trivial layer norms, so a swapped key would show
        for name, param in authors.named_parameters():
            if name.endswith(("ln_1.weight", "ln_2.weight", "ln_pre.weight", "ln_post.weight")):
                param.copy_(1 + 0.2 * torch.randn_like(param))
    checkpoint = tmp_path / "checkpoint.pth"
    torch.save(
        {"model_state_dict": {f"module.{k}": v for k, v in authors.state_dict().items()}},
        checkpoint,
    )
    result = CliRunner().invoke(
        app, ["weights", "convert-csd", str(checkpoint), str(tmp_path / "csd"), "--json"]
    )
    assert result.exit_code == 0, result.output
    assert json.loads(result.stdout) == {"folder": str(tmp_path / "csd"), "exit_code": 0}
    ours = CsdEmbedder(tmp_path / "csd")
    rng = np.random.default_rng(1)
    images = [Image.fromarray(rng.integers(0, 255, (48, 64, 3), dtype=np.uint8)) for _ in range(3)]
    pixels = ours.processor(images=images, return_tensors="pt")["pixel_values"]
    assert pixels.shape[-2:] == (RESOLUTION, RESOLUTION)  # resize + centre crop to the tower's size
    with torch.no_grad():
        theirs = authors(pixels)
    assert torch.allclose(ours.embed_images(images), theirs, atol=1e-5)


def test_a_file_that_is_not_a_csd_checkpoint_is_named(tmp_path):
    path = tmp_path / "other.pth"
    torch.save({"state_dict": {"layer.weight": torch.zeros(2)}}, path)
    with pytest.raises(WeightsError, match=r"other.pth: not a CSD checkpoint"):
        convert_csd(path, tmp_path / "out")
