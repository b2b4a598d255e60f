"""What `restyle eval` computes and with which backbones; also a job spec's `eval:` block.

    eval:
      metrics: [clip_i, clip_t, dino, csd]     # default: every metric whose backbone is given
      models: {clip: /models/clip-vit-b32, dino: /models/dino-vits16, csd: /models/csd,
               dreamsim: /models/dreamsim, fid: /models/inception, cmmd: /models/clip-l-336}
      reference: s3://data/reference/          # FID / CMMD: a folder of images, a manifest
                                               #   (its subject images) or another run
      batch_size: 16

Each model is a local folder, an `s3://` folder or a Hugging Face Hub repo
(`hf://owner/repo[@revision]`), both staged once per node, or "tiny" (a tiny random-weight
model: numbers are meaningless but every tensor takes the real path); see
`pipeline.weights.aux_models` for what each folder holds.
"""

from __future__ import annotations

from typing import Annotated

from pydantic import AfterValidator, WithJsonSchema, model_validator

from pipeline.config.problems import ConfigProblem
from pipeline.config.run_config import ConfigModel
from pipeline.config.values import AtLeastOne, AuxModelPath, Number, PathRef, Text, one_or_many
from pipeline.metrics.definitions import ALL_METRICS, ITEM_METRICS, SET_METRICS

DEFAULT_BATCH = 16
DEFAULT_CMMD_ITEMS = 30_000  # the authors' reference sets are 30k images (COCO-30K)


def _known_metrics(metrics: tuple[str, ...]) -> tuple[str, ...]:
    unknown = [m for m in metrics if m not in ALL_METRICS]
    if unknown:
        raise ValueError(f"unknown metric(s) {unknown}; known: {', '.join(ALL_METRICS)}")
    if len(set(metrics)) != len(metrics):
        raise ValueError(f"lists a metric twice: {list(metrics)}")
    return metrics


MetricNames = Annotated[
    tuple[Text, ...],
    one_or_many(),
    AfterValidator(_known_metrics),
    WithJsonSchema({"type": "array", "items": {"enum": list(ALL_METRICS)}}),
]


class MetricModels(ConfigModel):
    """One backbone folder per kind (local, s3://, hf://owner/repo[@revision] or 'tiny');
    empty = not used."""

    clip: AuxModelPath = ""
    """CLIP (clip_i, clip_i_style, clip_t): e.g. openai/clip-vit-base-patch32."""
    dino: AuxModelPath = ""
    """DINO ViT (dino): e.g. facebook/dino-vits16."""
    csd: AuxModelPath = ""
    """CSD (csd): CLIPVisionModel ViT-L/14 folder + csd_heads.safetensors."""
    dreamsim: AuxModelPath = ""
    """DreamSim release folder (dreamsim, dreamsim_style); needs restyle[paper-metrics]."""
    fid: AuxModelPath = ""
    """FID backbone: a folder with pt_inception-2015-12-05-*.pth, or a transformers vision model."""
    cmmd: AuxModelPath = ""
    """CMMD CLIP: openai/clip-vit-large-patch14-336."""

    @classmethod
    def all_tiny(cls) -> MetricModels:
        """Tiny backbones for every kind that has one (DreamSim has none)."""
        return cls(clip="tiny", dino="tiny", csd="tiny", fid="tiny", cmmd="tiny")

    def given(self) -> dict[str, str]:
        return {name: value for name, value in self.model_dump().items() if value}


class EvalSettings(ConfigModel):
    """What to score and with what (see the module doc)."""

    metrics: MetricNames = ()
    """Metric names; default: every metric whose backbone is given."""
    models: MetricModels = MetricModels()
    reference: PathRef | None = None
    """Reference images for fid/cmmd: a folder, a manifest, or a run folder."""
    batch_size: AtLeastOne = DEFAULT_BATCH
    """Items embedded per forward pass."""
    cmmd_max_items: AtLeastOne = DEFAULT_CMMD_ITEMS
    """CMMD's kernel is quadratic: at most this many items of each set (a seeded sample)."""
    bootstrap: AtLeastOne = 1000
    """Resamples for --compare's confidence intervals."""

    @model_validator(mode="after")
    def _every_metric_has_its_backbone(self) -> EvalSettings:
        given = self.models.given()
        for metric in self.metrics:
            backbone = ALL_METRICS[metric].backbone.value
            if backbone not in given:
                raise ConfigProblem(
                    ("models", backbone),
                    f"is required for metric {metric!r} (a folder, an s3:// folder, "
                    "hf://owner/repo or 'tiny')",
                )
        if self.reference is None and any(m in SET_METRICS for m in self.metrics):
            raise ConfigProblem(
                "reference", "is required for fid and cmmd (a folder, manifest or run)"
            )
        if not self.chosen:
            raise ConfigProblem("models", "names no backbone: nothing to compute")
        return self

    @property
    def chosen(self) -> tuple[str, ...]:
        """The metrics to compute: the ones named, else every one whose backbone is given
        (set metrics only with a reference)."""
        if self.metrics:
            return self.metrics
        given = self.models.given()
        return tuple(
            name
            for name, metric in ALL_METRICS.items()
            if metric.backbone.value in given
            and (name in ITEM_METRICS or self.reference is not None)
        )


def check_gates(gates: dict[str, float]) -> dict[str, float]:
    """Gate metric names must be per-item metrics."""
    unknown = [m for m in gates if m not in ITEM_METRICS]
    if unknown:
        raise ValueError(
            f"gates on unknown per-item metric(s) {unknown}; known: {', '.join(ITEM_METRICS)}"
        )
    return gates


Gates = Annotated[dict[Text, Number], AfterValidator(check_gates)]
"""Per-item thresholds: keep an item when every gated metric passes (>= for higher-is-better
metrics, <= for distances such as dreamsim)."""
