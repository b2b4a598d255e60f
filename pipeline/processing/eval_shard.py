"""Scoring one committed shard: stream its samples, score them in batches, publish the scores.

Plain Python (the eval actors wrap it). For every ok record of the commit, the result image
comes from the shard's tar; the subject and style reference come from the same sample when
the run stored them (triplets), else from the URIs its provenance names (inline inputs that
were not stored cannot be compared: the metric is null and `missing` says why). The features
file is written before the score parquet, which is the shard's marker.
"""

from __future__ import annotations

import io
import json
import logging
from collections.abc import Iterator

import torch
from PIL import Image

from pipeline.outputs.provenance import input_uris
from pipeline.outputs.records import read_records
from pipeline.outputs.scores import write_features, write_scores
from pipeline.outputs.tar_reading import IMAGE_EXTENSIONS, tar_samples
from pipeline.processing.metric_suite import MetricSuite, Sample
from pipeline.storage import Storage

log = logging.getLogger(__name__)

RUN_TAR = "run:"  # a reference entry naming another run's shard


def _image(members: dict[str, bytes], names: tuple[str, ...]) -> Image.Image | None:
    for name in names:
        for ext in IMAGE_EXTENSIONS:
            if f"{name}.{ext}" in members:
                return Image.open(io.BytesIO(members[f"{name}.{ext}"])).convert("RGB")
    return None


def _image_any(members: dict[str, bytes]) -> Image.Image | None:
    """The sample's plain `<key>.<ext>` image (runs without references)."""
    for ext in IMAGE_EXTENSIONS:
        if ext in members:
            return Image.open(io.BytesIO(members[ext])).convert("RGB")
    return None


class ShardEvaluator:
    """Scores whole commits with one loaded `MetricSuite`."""

    def __init__(self, suite: MetricSuite, storage: Storage):
        self.suite = suite
        self.storage = storage
        self.batch_size = suite.settings.batch_size

    def evaluate(self, tar_uri: str, records_uri: str, scores_uri: str, features_uri: str) -> int:
        """Score every ok item of one commit; publish features, then scores. The row count."""
        records = {r.key: r for r in read_records(self.storage, records_uri) if r.ok}
        rows: list[dict] = []
        features: dict[str, list[torch.Tensor]] = {}
        batch: list[Sample] = []

        def flush() -> None:
            for sample, values in zip(batch, self.suite.score(batch), strict=True):
                missing = "; ".join(sample.missing) or None
                rows.append(
                    {
                        "id": sample.id,
                        "key": sample.key,
                        "eval": self.suite.fingerprint,
                        **values,
                        "missing": missing,
                    }
                )
            for name, tensor in self.suite.set_features([s.result for s in batch]).items():
                features.setdefault(name, []).append(tensor)
            batch.clear()

        for key, members in tar_samples(self.storage, tar_uri):
            record = records.get(key)
            if record is None:
                continue
            sample = self._sample(record.id, key, record.prompt or "", members, tar_uri)
            if sample is not None:
                batch.append(sample)
            if len(batch) >= self.batch_size:
                flush()
        if batch:
            flush()
        stacked = {name: torch.cat(parts) for name, parts in features.items()}
        write_features(self.storage, features_uri, stacked)
        write_scores(self.storage, scores_uri, rows, self.suite.info())
        return len(rows)

    def _sample(
        self, item_id: str, key: str, prompt: str, members: dict[str, bytes], tar_uri: str
    ) -> Sample | None:
        result = _image(members, ("result",)) or _image_any(members)
        if result is None:
            log.warning("%s: sample %r has no result image; not scored", tar_uri, key)
            return None
        provenance = json.loads(members["json"]) if "json" in members else {}
        sample = Sample(item_id, key, result, prompt=prompt or provenance.get("prompt") or "")
        sample.subject = _image(members, ("subject",)) or self._referenced(
            _first_input(provenance, "subject"), "subject", sample
        )
        sample.style = _image(members, ("style",)) or self._referenced(
            _first_input(provenance, "style"), "style", sample
        )
        return sample

    def _referenced(self, uri: str | None, role: str, sample: Sample) -> Image.Image | None:
        if not uri:
            sample.missing.append(f"no {role} image")
            return None
        if uri.startswith("inline:"):
            sample.missing.append(f"{role} image was inline and not stored in the sample")
            return None
        try:
            return Image.open(io.BytesIO(self.storage.read_bytes(uri))).convert("RGB")
        except Exception as error:  # gone, unreadable: this item's metric is null, with why
            sample.missing.append(f"{role} image {uri}: {type(error).__name__}: {error}")
            return None

    def reference_features(self, uris: list[str]) -> dict[str, torch.Tensor]:
        """Set-metric features of reference images (FID/CMMD), in batches."""
        parts: dict[str, list[torch.Tensor]] = {}
        batch: list[Image.Image] = []

        def flush() -> None:
            for name, tensor in self.suite.set_features(batch).items():
                parts.setdefault(name, []).append(tensor)
            batch.clear()

        for image in self._reference_stream(uris):
            batch.append(image)
            if len(batch) >= self.batch_size:
                flush()
        if batch:
            flush()
        return {name: torch.cat(p) for name, p in parts.items()}

    def _reference_stream(self, uris: list[str]) -> Iterator[Image.Image]:
        """Images of plain URIs, and the result images of "run:<tar>" entries (another run)."""
        for uri in uris:
            if uri.startswith(RUN_TAR):
                for _, members in tar_samples(self.storage, uri[len(RUN_TAR) :]):
                    image = _image(members, ("result",)) or _image_any(members)
                    if image is not None:
                        yield image
            else:
                yield Image.open(io.BytesIO(self.storage.read_bytes(uri))).convert("RGB")


def _first_input(provenance: dict, role: str) -> str | None:
    return next(iter(input_uris(provenance, role)), None)
