"""Synthetic training triplets: (style reference, subject, stylized result) as WebDataset.

    restyle triplets jobs/triplets.yaml

A subject catalog and a style catalog (ordinary manifests: manifests/README.md) are paired,
the pairs become a derived manifest, and the runner stylizes it with `include_references`, so
every output sample carries all three images plus caption and provenance:

    <output>/<name>/<model>/part-000000.tar     <key>.subject.<ext>  <key>.style.<ext>
                                               <key>.result.<ext>   <key>.txt  <key>.json
    <output>/<name>/<model>/part-000000.parquet records: status, seed, scores, caption ...
                                               (a run folder: pipeline/outputs/layout.py)
    <output>/<name>/manifests/<model>/         the derived manifest (frozen, see below)

Spec keys (beside the run settings of `pipeline.jobs.specs`):

    kind: triplets
    name: uso-triplets-v1
    subjects: s3://data/subjects/        # rows: id, subject image, prompt, extra columns
    styles: s3://data/styles/            # rows: id, styles (reference images), optional
                                         #   style_lora (+ style_lora_scale), name, prompt
    pairing: {mode: sample, per_subject: 3, seed: 0}   # or mode: all, or mode: pairs with
                                         #   pairs: [[subject_id, style_id], ...] or a
                                         #   .parquet/.csv file with subject_id, style_id
    models: [uso]                        # uso and/or omniconsistency (one run each)
    prompt: "{subject_prompt}"           # template; fields below
    output: s3://data/triplets

Pairing modes ("all", "sample", "pairs") and the catalogs: `pipeline.jobs.triplet_pairing`.

A triplet's id is "<subject id>__<style id>"; its fields for the prompt template and caption
templates are subject_id, style_id, style_name (the style row's `name` or `style_name`
column, else its style LoRA, else its id), subject_prompt, style_prompt, plus every other
column of either row prefixed "subject_" / "style_". They are also kept in each sample's
provenance json ("extra"). USO triplets need style images; OmniConsistency triplets need a
style LoRA per style row (its `styles` image, if any, is stored as the style reference).

The derived manifest is frozen by a digest of the catalogs' rows and the pairing: re-running
the job resumes the same shards; changed inputs under the same name are refused.

Quality gates (`pipeline.jobs.gates`): with an `eval:` block (`pipeline.config.eval_settings`)
each model's run is scored after it finishes (`restyle eval`, resumable), and with `gates:`
the triplets are split into `<run>/gates/kept.parquet` and `<run>/gates/rejected.parquet`:

    eval: {models: {clip: /models/clip-b32, csd: /models/csd}}
    gates: {csd: 0.5, clip_i: 0.6}
"""

from __future__ import annotations

import hashlib
import json
import logging
from dataclasses import dataclass, field
from typing import Annotated, Any, Literal

from pydantic import AfterValidator, Field, model_validator

from pipeline.config import ConfigProblem, EvalSettings, Gates
from pipeline.config.values import (
    FormatTemplate,
    ModelChoice,
    ModelName,
    PathRef,
    PathRefs,
    one_or_many,
)
from pipeline.errors import ExitCode
from pipeline.jobs.specs import JobSpec
from pipeline.jobs.triplet_pairing import Pairing, TripletError, load_catalog, make_pairs
from pipeline.manifests import ManifestItem
from pipeline.manifests.derived import ManifestWriter, frozen_manifest, item_row
from pipeline.manifests.fields import KNOWN_FIELDS
from pipeline.storage import Storage, StorageSettings

log = logging.getLogger(__name__)

ID_SEPARATOR = "__"
MAX_REPORTED = 20


def _distinct(models: tuple[str, ...]) -> tuple[str, ...]:
    if not models:
        raise ValueError("must name at least one model")
    if len(set(models)) != len(models):
        raise ValueError(f"lists a model twice: {list(models)}")
    return models


class TripletSpec(JobSpec):
    """A triplet job spec (kind: triplets); the module doc explains the keys."""

    kind: Literal["triplets"]
    """This kind of spec: triplets."""
    subjects: PathRefs
    """Subject catalog manifest(s): rows with id, subject image, prompt, extra columns."""
    styles: PathRefs
    """Style catalog manifest(s): rows with id, styles, optional style_lora (+ scale), name."""
    pairing: Pairing = Pairing()
    models: Annotated[
        tuple[ModelChoice, ...], one_or_many(ModelName), AfterValidator(_distinct)
    ] = ("uso",)
    """uso and/or omniconsistency: one run each."""
    prompt: FormatTemplate = "{subject_prompt}"
    """str.format template over subject_id, style_id, style_name, subject_prompt, style_prompt,
    subject_<column>, style_<column>."""
    output: PathRef
    """Output root: <output>/<name>/<model>/ and <output>/<name>/manifests/<model>/."""
    eval: EvalSettings | None = None
    """Score each model's run after it finishes (restyle eval): metrics and backbones."""
    gates: Gates = Field(default_factory=dict)
    """Keep only triplets whose scores pass: metric -> threshold (e.g. {csd: 0.5, clip_i: 0.6})."""

    @model_validator(mode="after")
    def _gates_are_scored(self) -> TripletSpec:
        if not self.gates:
            return self
        if self.eval is None:
            raise ConfigProblem("gates", "need an {eval} block that computes them", refs=("eval",))
        missing = [m for m in self.gates if m not in self.eval.chosen]
        if missing:
            raise ConfigProblem(
                "gates",
                f"gate on {missing}, which eval does not compute (it computes "
                f"{list(self.eval.chosen)}): add their backbones under eval.models",
            )
        return self

    @property
    def root(self) -> str:
        return f"{self.output.rstrip('/')}/{self.name}"

    def manifest_folder(self, model: str) -> str:
        return f"{self.root}/manifests/{model}"


# ------------------------------------------------------------------ rows
def style_name(style: ManifestItem) -> str:
    extra = style.extra or {}
    for key in ("name", "style_name"):
        if isinstance(extra.get(key), str) and extra[key]:
            return extra[key]
    return style.style_lora or style.id


def triplet_fields(subject: ManifestItem, style: ManifestItem) -> dict[str, Any]:
    """The template fields of one pair (see the module doc)."""
    fields: dict[str, Any] = {f"subject_{k}": v for k, v in (subject.extra or {}).items()}
    fields.update({f"style_{k}": v for k, v in (style.extra or {}).items()})
    for clash in KNOWN_FIELDS:  # e.g. a style column "lora" must not become "style_lora"
        fields.pop(clash, None)
    fields.update(
        subject_id=subject.id,
        style_id=style.id,
        style_name=style_name(style),
        subject_prompt=subject.prompt or "",
        style_prompt=style.prompt or "",
    )
    return fields


def triplet_row(
    subject: ManifestItem, style: ManifestItem, model: str, prompt_template: str
) -> dict[str, Any]:
    """The manifest row of one pair (both checked with `unusable_reason` beforehand)."""
    fields = triplet_fields(subject, style)
    try:
        prompt = prompt_template.format(**fields)
    except (KeyError, IndexError) as error:
        raise TripletError(
            f"prompt template {prompt_template!r} names field {error} which pair "
            f"({subject.id!r}, {style.id!r}) does not have; "
            f"it has {sorted(fields)}"
        ) from None
    row = item_row(subject)
    for key in list(row):
        if key not in ("subject", "subject_bytes", "seed", "width", "height", "steps", "guidance"):
            row.pop(key)  # the subject's own extras are in `fields`, prefixed
    style_row = item_row(style)
    row.update({k: style_row.get(k) for k in ("styles", "style_bytes")})
    if model == "omniconsistency":
        row.update(style_lora=style.style_lora, style_lora_scale=style.style_lora_scale)
    row.update(id=f"{subject.id}{ID_SEPARATOR}{style.id}", prompt=prompt, model=model)
    row.update(
        {
            k: v
            for k, v in fields.items()
            if k not in KNOWN_FIELDS and not isinstance(v, (bytes, bytearray))
        }
    )
    return row


def inputs_digest(spec: TripletSpec, model: str, rows: list[dict[str, Any]]) -> str:
    """What the derived manifest depends on: its rows (which carry every input that matters)."""
    h = hashlib.sha256(json.dumps({"model": model, "prompt": spec.prompt}, sort_keys=True).encode())
    for row in rows:
        h.update(json.dumps(row, sort_keys=True, default=_digestible).encode())
    return h.hexdigest()[:16]


def _digestible(value: Any) -> str:
    if isinstance(value, (bytes, bytearray)):
        return "sha256:" + hashlib.sha256(value).hexdigest()
    return str(value)


# ------------------------------------------------------------------ the job
@dataclass
class TripletSummary:
    name: str
    pairs: dict[str, int]  # model -> triplets in its manifest
    rejected_rows: list[str]
    runs: dict[str, Any]  # model -> RunSummary
    evals: dict[str, Any] = field(default_factory=dict)  # model -> EvalSummary
    gates: dict[str, Any] = field(default_factory=dict)  # model -> GateResult

    @property
    def stopped(self) -> bool:
        """A signal stopped a run: later models, scores and gates were not done."""
        return any(run.interrupted for run in self.runs.values())

    @property
    def exit_code(self) -> int:
        if self.stopped:
            return ExitCode.INTERRUPTED
        codes = [s.exit_code for s in (*self.runs.values(), *self.evals.values())]
        return max(codes, default=0)


class TripletJob:
    def __init__(
        self,
        spec: TripletSpec,
        storage_settings: StorageSettings,
        address: str | None = None,
        show_progress: bool = True,
    ):
        self.spec = spec
        self.settings = spec.storage_settings(storage_settings)
        self.storage = Storage(self.settings)
        self.address = address
        self.show_progress = show_progress

    def derive(self) -> dict[str, list[str]]:
        """Write (or reuse) the derived manifest of every model; model -> its shard URIs."""
        spec = self.spec
        subjects = load_catalog(spec.subjects, self.storage).usable_for("subject", "")
        styles = load_catalog(spec.styles, self.storage)
        self.rejected = subjects.rejected + styles.rejected + list(subjects.unusable.values())
        self.pairs: dict[str, int] = {}
        shards = {}
        for model in spec.models:
            usable_styles = styles.usable_for("style", model)
            self.rejected += list(usable_styles.unusable.values())
            if not subjects.items or not usable_styles.items:
                which = "subject" if not subjects.items else f"style (for {model})"
                raise TripletError(
                    f"the {which} catalog has no usable rows; left out: "
                    f"{self.rejected[:3]}{' ...' if len(self.rejected) > 3 else ''}"
                )
            pairs = make_pairs(spec.pairing, subjects, usable_styles, self.storage)
            rows = [
                triplet_row(subjects.items[a], usable_styles.items[b], model, spec.prompt)
                for a, b in pairs
            ]
            self.pairs[model] = len(rows)
            shards[model] = self._frozen(model, rows)
        for message in self.rejected[:MAX_REPORTED]:
            log.warning("catalog row left out: %s", message)
        return shards

    def _frozen(self, model: str, rows: list[dict[str, Any]]) -> list[str]:
        """The model's derived manifest: reused when made from the same rows, else written."""
        spec = self.spec
        digest = inputs_digest(spec, model, rows)
        folder = spec.manifest_folder(model)
        marker = frozen_manifest(self.storage, folder, digest)
        if marker is None:
            writer = ManifestWriter(self.storage, folder, spec.rows_per_shard)
            writer.extend(rows)
            marker = writer.finish(
                digest,
                {
                    "job": spec.name,
                    "model": model,
                    "pairing": spec.pairing.mode,
                    "subjects": list(spec.subjects),
                    "styles": list(spec.styles),
                },
            )
        return marker.shards

    def run(self) -> TripletSummary:
        from pipeline.execution.driver import Runner

        shards = self.derive()
        runs = {}
        for model in self.spec.models:
            config = self.spec.settings.run_config(
                manifest=shards[model],
                output=self.spec.root,
                run=model,
                model=model,
                include_references=True,
            )
            runs[model] = Runner(
                config,
                self.settings,
                self.address,
                self.show_progress,
                driver=self.spec.driver_settings(),
            ).run()
            if runs[model].interrupted:  # a stop asked for: nothing more; the rerun resumes
                log.warning(
                    "triplets %s stopped by a signal after the %s run", self.spec.name, model
                )
                break
        summary = TripletSummary(self.spec.name, self.pairs, self.rejected, runs)
        if self.spec.eval is not None and not summary.stopped:
            for model, run in runs.items():
                self._score(model, run.run_uri, summary)
        return summary

    def _score(self, model: str, run_uri: str, summary: TripletSummary) -> None:
        """Score one model's run; split it by the gates when there are gates."""
        from pipeline.jobs.eval import eval_run
        from pipeline.jobs.gates import apply_gates
        from pipeline.outputs.run_state import RunState

        assert self.spec.eval is not None  # checked by the caller
        summary.evals[model] = eval_run(
            run_uri,
            self.spec.eval,
            self.settings,
            self.spec.actors,
            self.spec.options.device,
            self.address,
        )
        if self.spec.gates and not summary.evals[model].failed:
            summary.gates[model] = apply_gates(RunState(self.storage, run_uri), self.spec.gates)
