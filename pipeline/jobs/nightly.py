"""Nightly incremental restyling: each night, only the catalog rows not yet produced.

    restyle nightly jobs/nightly_restyle.yaml [--night 2026-09-14]

A spec names a catalog (a manifest that grows over time; row ids are stable), a model, its
weights and settings, a style set, and an output root. A night:

1. computes the job's config fingerprint: the run fingerprint (model, weight sha256s, seed,
   sampling, numerics, encoding, captions, scoring) plus the style set and prompt template;
2. reads the done index `<output>/index/<fingerprint>/*.parquet` (ids produced ok under that
   fingerprint, one file per night);
3. streams the catalog and writes every row whose id is not done (style set applied) into the
   night's derived manifest `<output>/manifests/<night>/` - nothing new: a no-op, nothing
   written, no Ray started;
4. runs it into the dated run folder `<output>/runs/<night>/` (the usual commits and records);
5. writes `<output>/index/<fingerprint>/<night>.parquet` with the ids that came out ok.

Re-running a night never duplicates: the night's manifest, once complete, is frozen (its
marker carries the fingerprint), so a re-run resumes the same shards and skips committed ones;
rows that arrived in between wait for the next night. A changed config is a new fingerprint:
every row is redone under it (in a night folder of its own; reusing a night label that already
ran under another config is refused). Rows that failed stay out of the index and are retried
the next night; rows that name another model are not this job's and are left alone.

Spec keys (beside the run settings of `pipeline.jobs.specs`):

    kind: nightly
    name: catalog-watercolor
    catalog: s3://shop/catalog/            # manifest spec(s)
    output: s3://shop/restyled/watercolor
    model: uso
    style:                                 # the style set, for rows that name none
      images: [s3://shop/styles/watercolor.jpg]   # USO style references
      lora: null                           # OmniConsistency style LoRA (name, path, s3://)
      lora_scale: 1.0
    prompt: "{prompt}"                     # optional template over id, prompt, extra columns
    eval: {models: {clip: /models/clip-b32}}   # optional: score each night (restyle eval)
    regression: {margin: 0.05, nights: 7}      # optional: exit 4 when a metric's median drops
                                               #   more than margin below the last nights'
                                               #   (pipeline.jobs.regression)
"""

from __future__ import annotations

import datetime as dt
import hashlib
import json
import logging
import re
from dataclasses import asdict, dataclass, field
from typing import TYPE_CHECKING, Annotated, Any, Literal

import pyarrow as pa
from pydantic import model_validator

from pipeline.config import ConfigModel, ConfigProblem, EvalSettings, RunConfig
from pipeline.config.values import (
    AtLeastOne,
    FormatTemplate,
    ModelChoice,
    NameOrPath,
    Number,
    PathRef,
    PathRefs,
    Range,
    one_or_many,
)
from pipeline.errors import ExitCode
from pipeline.jobs.specs import JobSpec
from pipeline.manifests import ManifestItem, RowError, list_shards, read_shard
from pipeline.manifests.derived import ManifestWriter, frozen_manifest, item_row
from pipeline.storage import Storage, StorageSettings
from pipeline.storage.parquet import table_from_bytes, table_to_bytes
from pipeline.wording import counted

if TYPE_CHECKING:
    from pipeline.weights.resolve import ResolvedWeights

log = logging.getLogger(__name__)

NIGHT_PATTERN = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,40}$")
INDEX_SCHEMA = pa.schema([("id", pa.string()), ("night", pa.string()), ("output_key", pa.string())])
MAX_REPORTED = 20


class NightlyError(RuntimeError):
    """A night that cannot run (a label already used under another config, a bad label)."""


class StyleSet(ConfigModel):
    """Applied to catalog rows that name no style of their own."""

    images: Annotated[tuple[PathRef, ...], one_or_many()] = ()
    """USO style reference image(s): paths or s3:// URIs."""
    lora: NameOrPath | None = None
    """OmniConsistency style LoRA: a shipped style name, a .safetensors path or an s3:// URI."""
    lora_scale: Number | None = None
    """The style LoRA's strength."""

    @model_validator(mode="after")
    def _scale_needs_a_lora(self) -> StyleSet:
        if self.lora_scale is not None and not self.lora:
            raise ConfigProblem("lora_scale", "is set but {lora} is not", refs=("lora",))
        return self


class Regression(ConfigModel):
    """When a night's scores count as a regression (see `pipeline.jobs.regression`)."""

    margin: Annotated[Number, Range(0)] = 0.05
    """A metric regresses when its median is worse than the baseline by more than this."""
    nights: AtLeastOne = 7
    """The baseline: the median of this many previous scored nights' medians."""


class NightlySpec(JobSpec):
    """A nightly job spec (kind: nightly); the module doc explains the keys."""

    kind: Literal["nightly"]
    """This kind of spec: nightly."""
    catalog: PathRefs
    """The catalog manifest(s): folders, files, globs or {a..b} ranges, local or s3://."""
    output: PathRef
    """Output root: index/, manifests/<night>/ and runs/<night>/ go below it."""
    model: ModelChoice
    """uso | omniconsistency; catalog rows naming another model are left alone."""
    style: StyleSet = StyleSet()
    """The style set, for rows that name none."""
    prompt: FormatTemplate | None = None
    """Optional str.format template over the row: id, prompt and any extra column."""
    eval: EvalSettings | None = None
    """Score each night's run (restyle eval): metrics and backbones."""
    regression: Regression | None = None
    """Compare the night's metric medians with the previous nights' (needs eval)."""

    @model_validator(mode="after")
    def _regression_needs_scores(self) -> NightlySpec:
        if self.regression is not None and self.eval is None:
            raise ConfigProblem(
                "regression", "needs an {eval} block that scores each night", refs=("eval",)
            )
        return self

    @model_validator(mode="after")
    def _style_fits_the_model(self) -> NightlySpec:
        if self.style.images and self.model != "uso":
            raise ConfigProblem(
                ("style", "images"), f"style images are USO's; this job's model is {self.model}"
            )
        if self.style.lora and self.model != "omniconsistency":
            raise ConfigProblem(
                ("style", "lora"),
                f"style LoRAs are OmniConsistency's; this job's model is {self.model}",
            )
        return self

    def night_config(self, manifest: list[str], night: str) -> RunConfig:
        """The run of one night: its manifest into `<output>/runs/<night>/`."""
        return self.settings.run_config(
            manifest=manifest, output=f"{self.output.rstrip('/')}/runs", run=night, model=self.model
        )


def today() -> str:
    return dt.datetime.now(dt.UTC).date().isoformat()


def check_night(night: str) -> str:
    if not NIGHT_PATTERN.match(night):
        raise NightlyError(
            f"night label {night!r}: use a date (2026-09-14) or another short word "
            "of letters, digits, '.', '_' or '-'"
        )
    return night


# ------------------------------------------------------------------ the done index
class DoneIndex:
    """Ids produced ok under one fingerprint: `<output>/index/<fingerprint>/<night>.parquet`.

    One file per night (never rewritten by another night), so nights never race on one object.
    """

    def __init__(self, storage: Storage, output: str, fingerprint: str):
        self.storage = storage
        self.folder = f"{output.rstrip('/')}/index/{fingerprint}"

    def night_uri(self, night: str) -> str:
        return f"{self.folder}/{night}.parquet"

    def load(self) -> set[str]:
        done: set[str] = set()
        for uri in self.storage.list(self.folder + "/"):
            if uri.endswith(".parquet"):
                table = table_from_bytes(self.storage.read_bytes(uri), columns=["id"])
                done.update(table.column("id").to_pylist())
        return done

    def write(self, night: str, rows: list[dict[str, str | None]]) -> str:
        uri = self.night_uri(night)
        table = pa.Table.from_pylist(rows, schema=INDEX_SCHEMA)
        self.storage.write_bytes(uri, table_to_bytes(table))
        return uri


# ------------------------------------------------------------------ a night
@dataclass
class NightSummary:
    name: str
    night: str
    fingerprint: str
    run_uri: str
    catalog_rows: int = 0
    already_done: int = 0
    new: int = 0  # rows in this night's manifest
    other_model: int = 0
    rejected: list[str] = field(default_factory=list)
    resumed: bool = False  # the night's manifest existed already (a re-run of the night)
    run: Any = None  # RunSummary, None when there was nothing to do
    indexed: int = 0  # ids this night added to the done index
    scores: dict[str, Any] = field(default_factory=dict)  # metric -> n, mean, median, ...
    quality: dict[str, Any] = field(default_factory=dict)  # metric -> median vs baseline
    eval_failed: dict[str, str] = field(default_factory=dict)
    unscored: bool = False  # a signal stopped the night before its scoring: the rerun scores

    @property
    def noop(self) -> bool:
        return self.run is None

    @property
    def regressions(self) -> list[str]:
        return [m for m, q in self.quality.items() if q["regressed"]]

    @property
    def exit_code(self) -> int:
        """The run's code; a night stopped by a signal (INTERRUPTED: its run drained, or it
        ran whole but is not scored) first, then shards not committed or not scored
        (INCOMPLETE), then a quality regression (QUALITY_REGRESSION), then the run's own
        (OK / ITEMS_FAILED)."""
        code = ExitCode.OK if self.run is None else self.run.exit_code
        if code == ExitCode.INTERRUPTED or self.unscored:
            return ExitCode.INTERRUPTED
        if code == ExitCode.INCOMPLETE or self.eval_failed:
            return ExitCode.INCOMPLETE
        return ExitCode.QUALITY_REGRESSION if self.regressions else code

    def public_dict(self) -> dict[str, Any]:
        data = {k: v for k, v in asdict(self).items() if k != "run"}
        data["noop"] = self.noop
        data["exit_code"] = self.exit_code
        data["regressions"] = self.regressions
        if self.run is not None:
            run = self.run
            data["run"] = {
                "ok": run.ok,
                "failed": run.failed,
                "skipped": run.skipped,
                "shards_committed": run.shards_committed,
                "shards_already_done": run.shards_already_done,
                "shards_failed": run.shards_failed,
                "errors": dict(run.errors),
                "wall_s": run.wall_s,
            }
        return data


class NightlyJob:
    def __init__(
        self,
        spec: NightlySpec,
        storage_settings: StorageSettings,
        night: str | None = None,
        address: str | None = None,
        show_progress: bool = True,
    ):
        self.spec = spec
        self.night = check_night(night or today())
        self.settings = spec.storage_settings(storage_settings)
        self.storage = Storage(self.settings)
        self.address = address
        self.show_progress = show_progress

    @property
    def manifest_folder(self) -> str:
        return f"{self.spec.output.rstrip('/')}/manifests/{self.night}"

    def resolve_weights(self) -> ResolvedWeights:
        from pipeline.weights.resolve import resolve_weights

        return resolve_weights(self.spec.weights, self.spec.model, storage=self.storage)

    def fingerprint(self, weights: ResolvedWeights | None = None) -> str:
        """The run fingerprint plus what only this job adds to the rows (style set, prompt)."""
        spec = self.spec
        weights = weights or self.resolve_weights()
        run_fp = spec.night_config([], self.night).fingerprint(weights.sha256)
        fields = {"run": run_fp, "style": spec.style.model_dump(), "prompt": spec.prompt}
        canonical = json.dumps(fields, sort_keys=True, separators=(",", ":"))
        return hashlib.sha256(canonical.encode()).hexdigest()[:16]

    def run(self) -> NightSummary:
        from pipeline.execution.driver import Runner
        from pipeline.outputs.run_state import RunState

        spec = self.spec
        weights = self.resolve_weights()  # once: the job fingerprint and the run both use them
        fingerprint = self.fingerprint(weights)
        summary = NightSummary(
            spec.name, self.night, fingerprint, f"{spec.output.rstrip('/')}/runs/{self.night}"
        )
        index = DoneIndex(self.storage, spec.output, fingerprint)
        marker = frozen_manifest(self.storage, self.manifest_folder, fingerprint)
        if marker is not None:
            summary.resumed, summary.new = True, marker.rows
        else:
            marker = self._derive(index.load(), fingerprint, summary)
            if marker is None:
                log.info(
                    "night %s of %s: nothing new in %s",
                    self.night,
                    spec.name,
                    counted(summary.catalog_rows, "catalog row"),
                )
                return summary
        config = spec.night_config(marker.shards, self.night)
        summary.run = Runner(
            config,
            self.settings,
            self.address,
            self.show_progress,
            weights=weights,
            driver=spec.driver_settings(),
        ).run()
        latest = RunState(self.storage, config.run_uri).latest_records(summary.run.fingerprint)
        done: list[dict[str, str | None]] = [
            {"id": r.id, "night": self.night, "output_key": r.output_key}
            for shard in sorted(latest)
            for r in latest[shard].values()
            if r.ok
        ]
        index.write(self.night, done)
        summary.indexed = len(done)
        if spec.eval is not None:
            if summary.run.interrupted:  # scored whole when the rerun resumes it
                summary.unscored = True
                log.warning(
                    "night %s stopped by a signal: not scored; rerun it to resume", self.night
                )
            else:
                self._score(config.run_uri, summary)
        return summary

    def _score(self, run_uri: str, summary: NightSummary) -> None:
        """Score the night's run; compare its medians with the previous nights'."""
        from pipeline.jobs.eval import eval_run
        from pipeline.jobs.regression import compare_night

        spec = self.spec
        assert spec.eval is not None  # checked by the caller
        scored = eval_run(
            run_uri, spec.eval, self.settings, spec.actors, spec.options.device, self.address
        )
        summary.scores, summary.eval_failed = scored.metrics, scored.failed
        if spec.regression is not None:
            summary.quality = compare_night(
                self.storage,
                f"{spec.output.rstrip('/')}/runs",
                self.night,
                spec.regression.margin,
                spec.regression.nights,
            )
            for metric in summary.regressions:
                q = summary.quality[metric]
                log.warning(
                    "night %s: %s median %.4f is %.4f worse than the last %s %.4f",
                    self.night,
                    metric,
                    q["median"],
                    q["drop"],
                    counted(q["nights"], "night's", "nights'"),
                    q["baseline"],
                )

    def _derive(self, done: set[str], fingerprint: str, summary: NightSummary):
        """Stream the catalog; write the rows not done into the night's manifest."""
        spec = self.spec
        writer = ManifestWriter(self.storage, self.manifest_folder, spec.rows_per_shard)
        seen: set[str] = set()
        for shard in list_shards(list(spec.catalog), self.storage):
            for entry in read_shard(shard, self.storage):
                summary.catalog_rows += 1
                if isinstance(entry, RowError):
                    summary.rejected.append(str(entry))
                    continue
                if entry.model and entry.model != spec.model:
                    summary.other_model += 1
                    continue
                if entry.id in done:
                    summary.already_done += 1
                    continue
                if entry.id in seen:
                    summary.rejected.append(
                        f"{shard.uri}, row {entry.source[1]}: duplicate id "
                        f"{entry.id!r} (already in an earlier catalog shard)"
                    )
                    continue
                seen.add(entry.id)
                try:
                    writer.add(self.night_row(entry))
                except (KeyError, IndexError, ValueError) as error:
                    summary.rejected.append(
                        f"{shard.uri}, row {entry.source[1]}: prompt template {spec.prompt!r} "
                        f"needs field {error} (item {entry.id!r})"
                    )
        for message in summary.rejected[:MAX_REPORTED]:
            log.warning("catalog row left out: %s", message)
        if writer.rows == 0:
            return None
        summary.new = writer.rows
        return writer.finish(
            fingerprint,
            {
                "job": spec.name,
                "night": self.night,
                "catalog": list(spec.catalog),
                "already_done": summary.already_done,
            },
        )

    def night_row(self, item: ManifestItem) -> dict[str, Any]:
        """The catalog row with the style set applied (rows keep styles of their own)."""
        style = self.spec.style
        row = item_row(item)
        row["model"] = self.spec.model
        if style.images and not item.styles:
            row["styles"], row["style_bytes"] = list(style.images), None
        if style.lora and not item.style_lora:
            row["style_lora"], row["style_lora_scale"] = style.lora, style.lora_scale
        if self.spec.prompt is not None:
            fields = {**(item.extra or {}), "id": item.id, "prompt": item.prompt or ""}
            row["prompt"] = self.spec.prompt.format(**fields)
        return row
