"""Every metric `restyle eval` computes: what it compares, which backbone, which paper uses it.

Per-item metrics compare one result with one thing: the item's subject (content) image, its
first style reference, or its prompt. Set metrics compare the distribution of a run's results
with a reference set. A metric that does not apply to an item (no subject image, empty
prompt) is null in the score file, never a made-up number.
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import StrEnum


class Against(StrEnum):
    SUBJECT = "subject"  # the item's subject / source image (content fidelity)
    STYLE = "style"  # the item's first style reference image
    PROMPT = "prompt"  # the item's prompt text
    REFERENCE_SET = "reference set"  # a folder, manifest or run of reference images


class Backbone(StrEnum):
    CLIP = "clip"
    DINO = "dino"
    CSD = "csd"
    DREAMSIM = "dreamsim"
    FID = "fid"
    CMMD = "cmmd"


@dataclass(frozen=True)
class Metric:
    name: str
    against: Against
    backbone: Backbone
    higher_is_better: bool
    meaning: str


ITEM_METRICS: dict[str, Metric] = {
    m.name: m
    for m in (
        Metric(
            "clip_i",
            Against.SUBJECT,
            Backbone.CLIP,
            True,
            "cosine of CLIP image embeddings, result vs subject (USO CLIP-I; OmniConsistency "
            "content CLIP image)",
        ),
        Metric(
            "clip_i_style",
            Against.STYLE,
            Backbone.CLIP,
            True,
            "cosine of CLIP image embeddings, result vs style reference (OmniConsistency "
            "style CLIP image)",
        ),
        Metric(
            "clip_t",
            Against.PROMPT,
            Backbone.CLIP,
            True,
            "cosine of CLIP image and text embeddings, result vs prompt (USO CLIP-T; "
            "OmniConsistency CLIP score; torchmetrics CLIPScore / 100)",
        ),
        Metric(
            "dino",
            Against.SUBJECT,
            Backbone.DINO,
            True,
            "cosine of DINO CLS embeddings, result vs subject (USO DINO)",
        ),
        Metric(
            "csd",
            Against.STYLE,
            Backbone.CSD,
            True,
            "cosine of CSD style descriptors, result vs style reference (USO CSD)",
        ),
        Metric(
            "dreamsim",
            Against.SUBJECT,
            Backbone.DREAMSIM,
            False,
            "DreamSim distance, result vs subject/source (OmniConsistency content DreamSim)",
        ),
        Metric(
            "dreamsim_style",
            Against.STYLE,
            Backbone.DREAMSIM,
            False,
            "DreamSim distance, result vs style reference (OmniConsistency style DreamSim)",
        ),
    )
}

SET_METRICS: dict[str, Metric] = {
    m.name: m
    for m in (
        Metric(
            "fid",
            Against.REFERENCE_SET,
            Backbone.FID,
            False,
            "Frechet distance of backbone features, results vs reference set (torchmetrics)",
        ),
        Metric(
            "cmmd",
            Against.REFERENCE_SET,
            Backbone.CMMD,
            False,
            "MMD of CLIP embeddings, Gaussian RBF sigma 10, x1000 (Jayasumana et al. 2024)",
        ),
    )
}

ALL_METRICS = {**ITEM_METRICS, **SET_METRICS}
