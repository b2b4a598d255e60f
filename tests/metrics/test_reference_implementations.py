"""restyle's metric numbers against the reference implementations, on the same tiny inputs.

torchmetrics is the reference for CLIP score and FID (the same tiny backbone is fed to both);
CMMD follows its authors' code (google-research cmmd/distance.py), transcribed here in numpy;
CSD follows its authors' `CSD_CLIP.forward`. The backbones are tiny random-weight models of
the real classes (pipeline/weights/tiny_aux.py): the numbers mean nothing, the computations are
the real ones.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch
from PIL import Image
from support.pictures import pictures

from pipeline.metrics.clip import ClipEmbedder
from pipeline.metrics.cmmd import CmmdEmbedder, mmd
from pipeline.metrics.csd import CsdEmbedder
from pipeline.metrics.dreamsim import DreamSimEmbedder
from pipeline.metrics.embedding import cosines
from pipeline.metrics.fid import as_uint8_batch, fid_backbone, frechet_distance
from pipeline.weights.tiny_aux import build_tiny_clip, build_tiny_csd

PROMPTS = ["a red mug on a table", "a house by the sea", "a portrait in watercolor", "ink waves"]


def tensor(image: Image.Image) -> torch.Tensor:
    return torch.from_numpy(np.asarray(image)).permute(2, 0, 1).contiguous()


@pytest.fixture(scope="module")
def clip_folder(tmp_path_factory):
    return build_tiny_clip(tmp_path_factory.mktemp("aux") / "clip")


def test_clip_t_and_clip_i_equal_torchmetrics_clip_score(clip_folder):
    from torchmetrics.functional.multimodal import clip_score
    from torchmetrics.functional.multimodal.clip_score import _clip_score_update
    from transformers import CLIPModel, CLIPProcessor

    images, subjects = pictures(4, seed=1), pictures(4, seed=2)
    embedder = ClipEmbedder(clip_folder)
    ours_t = cosines(embedder.embed_images(images), embedder.embed_texts(PROMPTS))
    ours_i = cosines(embedder.embed_images(images), embedder.embed_images(subjects))

    class TensorFeatures(CLIPModel):
        """transformers 5 returns output objects from get_*_features; torchmetrics 1.9 expects
        the tensors transformers 4 returned (their pooler_output): hand it those."""

        def get_image_features(self, *args, **kwargs):
            return super().get_image_features(*args, **kwargs).pooler_output

        def get_text_features(self, *args, **kwargs):
            return super().get_text_features(*args, **kwargs).pooler_output

    def loader():
        model = TensorFeatures.from_pretrained(clip_folder, local_files_only=True)
        # the PIL processor, as restyle and OpenAI's CLIP use (with torchvision installed,
        # transformers would otherwise pick its torchvision one, a few 1e-5 away)
        processor = CLIPProcessor.from_pretrained(clip_folder, local_files_only=True, backend="pil")
        return model, processor

    # torchmetrics' per-pair score before its mean and max(., 0): 100 * cosine, all 4 pairs
    # in one batch (its own processor call, text padded per batch)
    model, processor = loader()
    theirs_t, _ = _clip_score_update([tensor(i) for i in images], PROMPTS, model, processor)
    theirs_i, _ = _clip_score_update(
        [tensor(i) for i in images], [tensor(i) for i in subjects], model, processor
    )
    for i in range(4):
        print(
            f"pair {i}: clip_t restyle {ours_t[i]:.6f} torchmetrics/100 {theirs_t[i] / 100:.6f}; "
            f"clip_i restyle {ours_i[i]:.6f} torchmetrics/100 {theirs_i[i] / 100:.6f}"
        )
    assert [float(v) / 100 for v in theirs_t] == pytest.approx(ours_t, abs=1e-5)
    assert [float(v) / 100 for v in theirs_i] == pytest.approx(ours_i, abs=1e-5)
    # the public function: mean over pairs, clamped at 0
    public = float(clip_score([tensor(i) for i in images], PROMPTS, model_name_or_path=loader))
    assert public / 100 == pytest.approx(max(float(np.mean(ours_t)), 0.0), abs=1e-5)
    assert float(
        clip_score(tensor(images[0]), tensor(subjects[0]), model_name_or_path=loader)
    ) / 100 == pytest.approx(ours_i[0], abs=1e-5)
    assert len(set(ours_t)) == 4 and len(set(ours_i)) == 4  # they look at the pictures


def test_fid_from_sharded_features_equals_torchmetrics_on_all_images(clip_folder):
    from torchmetrics.image.fid import FrechetInceptionDistance

    results, reference = pictures(10, seed=3), pictures(12, seed=4)
    backbone = fid_backbone(clip_folder)
    reference_metric = FrechetInceptionDistance(feature=fid_backbone(clip_folder))
    reference_metric.update(as_uint8_batch(reference), real=True)
    reference_metric.update(as_uint8_batch(results), real=False)
    theirs = float(reference_metric.compute())
    # restyle: features per shard (as eval actors write them), merged on the driver
    shards = [results[:3], results[3:7], results[7:]]
    ours = frechet_distance(
        [backbone(as_uint8_batch(s)) for s in shards],
        [backbone(as_uint8_batch(reference[:5])), backbone(as_uint8_batch(reference[5:]))],
        backbone.num_features,
    )
    print(f"FID restyle {ours:.6f} torchmetrics {theirs:.6f}")
    assert ours == pytest.approx(theirs, rel=1e-5)
    same = frechet_distance(
        [backbone(as_uint8_batch(results))],
        [backbone(as_uint8_batch(results))],
        backbone.num_features,
    )
    assert abs(same) < 1e-3 < theirs  # a set is at distance ~0 from itself, not from another


def authors_mmd(x: np.ndarray, y: np.ndarray) -> float:
    """google-research cmmd/distance.py `mmd`, with numpy in place of jax.numpy."""
    sigma, scale = 10, 1000
    x_sqnorms = np.diag(np.matmul(x, x.T))
    y_sqnorms = np.diag(np.matmul(y, y.T))
    gamma = 1 / (2 * sigma**2)
    k_xx = np.mean(
        np.exp(
            -gamma
            * (-2 * np.matmul(x, x.T) + np.expand_dims(x_sqnorms, 1) + np.expand_dims(x_sqnorms, 0))
        )
    )
    k_xy = np.mean(
        np.exp(
            -gamma
            * (-2 * np.matmul(x, y.T) + np.expand_dims(x_sqnorms, 1) + np.expand_dims(y_sqnorms, 0))
        )
    )
    k_yy = np.mean(
        np.exp(
            -gamma
            * (-2 * np.matmul(y, y.T) + np.expand_dims(y_sqnorms, 1) + np.expand_dims(y_sqnorms, 0))
        )
    )
    return scale * (k_xx + k_yy - 2 * k_xy)


def test_cmmd_equals_the_authors_formula_on_the_same_embeddings(clip_folder):
    embedder = CmmdEmbedder(clip_folder)
    x = embedder.embed_images(pictures(9, seed=5))
    y = embedder.embed_images(pictures(7, seed=6, size=(40, 56)))
    assert torch.allclose(x.norm(dim=1), torch.ones(9), atol=1e-5)  # unit embeddings
    ours, theirs = mmd(x, y), authors_mmd(x.double().numpy(), y.double().numpy())
    print(f"CMMD restyle {ours:.8f} authors' formula {theirs:.8f}")
    assert ours == pytest.approx(theirs, rel=1e-9)
    assert mmd(x, x) == pytest.approx(0.0, abs=1e-9) and ours > 0
    # preprocessing as the authors': bicubic resize to the input size, no centre crop
    image = pictures(1, seed=7, size=(80, 40))[0]
    square = image.resize((embedder.size, embedder.size), Image.Resampling.BICUBIC)
    assert torch.allclose(embedder.embed_images([image]), embedder.embed_images([square]))


def test_csd_is_the_authors_style_head_over_the_clip_tower(tmp_path):
    from safetensors.torch import load_file
    from transformers import CLIPVisionModel

    folder = build_tiny_csd(tmp_path / "csd")
    images = pictures(3, seed=8)
    ours = CsdEmbedder(folder).embed_images(images)
    # CSD_CLIP.forward: feature = backbone(x) (ln_post of the CLS token, proj removed);
    # style = normalize(feature @ last_layer_style)
    tower = CLIPVisionModel.from_pretrained(folder, local_files_only=True).eval()
    style_head = load_file(str(folder / "csd_heads.safetensors"))["style"]
    pixels = CsdEmbedder(folder).processor(images=images, return_tensors="pt")["pixel_values"]
    with torch.no_grad():
        hidden = tower(pixel_values=pixels).last_hidden_state
        feature = tower.post_layernorm(hidden[:, 0, :])
    theirs = torch.nn.functional.normalize(feature @ style_head, dim=1, p=2)
    assert torch.allclose(ours, theirs, atol=1e-6)


def test_dreamsim_names_what_it_needs(tmp_path):
    """A folder missing part of the release is refused with the files it lacks, before the
    package would try to download them (tests/metrics/test_paper_metric_packages.py runs it)."""
    with pytest.raises(ValueError, match=r"not the unzipped release"):
        DreamSimEmbedder(tmp_path)
    (tmp_path / "ensemble_lora").mkdir()
    (tmp_path / "ensemble_lora" / "adapter_config.json").write_text("{}")
    (tmp_path / "dino_vitb16_pretrain.pth").write_bytes(b"")
    with pytest.raises(ValueError) as refused:
        DreamSimEmbedder(tmp_path)
    message = str(refused.value)
    assert "facebookresearch_dino_main/hubconf.py" in message and "\n" not in message
    assert "dino_vitb16_pretrain.pth," not in message  # present: not named
