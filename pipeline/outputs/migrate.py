"""`restyle migrate <run>`: bring a run folder written before output layout 2 up to date.

Layout 1 (no "layout" in run.json) kept retries in `retry-<nn>/part-<k>.*` folders, caption
sidecars as `part-<k>.captions.parquet` beside the shards (both reached by `part-*` globs),
records with a `scores` map, provenance whose keys were objects in one sample and null in
another, and references as given on the command line. Migrating:

1. rewrites each sample's `<key>.json` to the provenance schema of layout 2 (tars keep their
   members, order and images), moving retry tars to `part-<k>.retry-<nn>.tar`;
2. writes each shard's current records `part-<k>.parquet` (each item's newest record over the
   first run and its retries) in the layout-2 schema, and the retries' markers beside them;
3. moves caption sidecars to `captions/` and `restyle eval`'s score files from
   `scores/[retry-<nn>/]part-<k>.*` to `scores/<k>[.retry-<nn>].*` (out of `**/part-*`), makes references absolute (relative local paths
   against `relative_to`: the folder the run was started from, default the current one);
4. writes run.json with "layout": 2 and the dataset card, then deletes the layout-1 objects.

Every step can be repeated: an interrupted migration is finished by running it again.
"""

from __future__ import annotations

import contextlib
import io
import json
import os
import re
import tarfile
import tempfile
from dataclasses import dataclass, field
from pathlib import Path

from pipeline.outputs.card import write_card
from pipeline.outputs.commit import TAR_MTIME, ShardStats
from pipeline.outputs.layout import LAYOUT_VERSION, ShardPaths, check_layout, layout_of
from pipeline.outputs.provenance import (
    PROVENANCE_VERSION,
    StyleLoraFacts,
    provenance,
    style_lora_reference,
)
from pipeline.outputs.records import ItemRecord, overlay, records_to_parquet
from pipeline.outputs.run_state import RunState
from pipeline.storage import Storage
from pipeline.storage.parquet import table_from_bytes
from pipeline.storage.uris import local_path, public_uri, scheme_of

_V1_MAIN = re.compile(r"^part-(\d{6})\.stats\.json$")
_V1_RETRY = re.compile(r"^retry-(\d+)/part-(\d{6})\.stats\.json$")
_V1_LEFTOVER = re.compile(
    r"^(retry-\d+/.+|part-\d{6}\.captions\.parquet|scores/(retry-\d+/)?part-\d{6}\..+)$"
)
_SCORE_SUFFIXES = (".parquet", ".features.safetensors")


@dataclass
class MigrationReport:
    run_uri: str
    from_layout: int
    shards: int = 0
    retries: int = 0
    samples: int = 0
    captions: int = 0
    scores: int = 0
    removed: list[str] = field(default_factory=list)


class _Migration:
    def __init__(self, storage: Storage, run_uri: str, relative_to: str | None):
        self.storage = storage
        self.run_uri = run_uri.rstrip("/")
        self.base = os.path.abspath(relative_to or os.getcwd())
        self.names = {uri[len(self.run_uri) + 1 :] for uri in storage.list(self.run_uri + "/")}

    def uri(self, name: str) -> str:
        return f"{self.run_uri}/{name}"

    def absolute(self, ref: str | None) -> str | None:
        """A layout-1 reference made absolute against the run's starting folder."""
        if ref is None or ref.startswith("inline:") or ref == "":
            return ref
        if scheme_of(ref) is None and not os.path.isabs(os.path.expanduser(ref)):
            ref = os.path.join(self.base, ref)
        return public_uri(ref)

    # ---------------------------------------------------------------- samples
    def sample_json(self, data: bytes, key: str, run_json: dict) -> bytes:
        old = json.loads(data)
        if old.get("provenance_version") == PROVENANCE_VERSION:
            return data
        parameters = dict(old.get("parameters") or {})
        lora = old.get("style_lora")
        facts = None
        if lora:
            facts = StyleLoraFacts(
                name=lora.get("name") or "",
                source=style_lora_reference(lora.get("source") or "", self.base),
                file=(parameters.get("style_lora") or {}).get("file") or "",
                sha256=lora.get("sha256") or "",
                scale=float(lora.get("scale") or 0.0),
            )
        source = old.get("source") or {}
        new = provenance(
            item_id=old["id"],
            key=key,
            run=old.get("run", run_json["config"]["run"]),
            fingerprint=old.get("fingerprint", run_json["fingerprint"]),
            model=old.get("model", run_json["config"]["model"]),
            random_weights=bool(old.get("random_weights")) or bool(run_json["random_weights"]),
            weights=old.get("weights") or run_json.get("weights") or {},
            parameters=parameters,
            prompt=old.get("prompt"),
            caption=old.get("caption") or "",
            manifest=self.absolute(source.get("manifest")) or "",
            row=source.get("row") or 0,
            subject=self.absolute(old.get("subject")),
            styles=[s for s in map(self.absolute, old.get("styles") or []) if s],
            style_lora=facts,
            extra=old.get("extra") or {},
            code_version=old.get("code_version", ""),
            scores=old.get("scores"),
            fill_missing=True,
        )
        return json.dumps(new, sort_keys=True, indent=1).encode()

    def convert_tar(self, source: str, target: str, run_json: dict) -> int:
        """Copy a tar with its provenance members rewritten; the number of samples."""
        samples = 0
        with tempfile.NamedTemporaryFile(suffix=".tar", delete=False) as spool:
            spool_path = spool.name
        try:
            with (
                self.storage.open_read(source) as stream,
                tarfile.open(fileobj=stream, mode="r|") as old,
                tarfile.open(spool_path, mode="w", format=tarfile.USTAR_FORMAT) as new,
            ):
                for member in old:
                    if not member.isfile():
                        continue
                    file = old.extractfile(member)
                    assert file is not None  # regular files always have data
                    data = file.read()
                    key, _, ext = member.name.rpartition("/")[2].partition(".")
                    if ext == "json":
                        data = self.sample_json(data, key, run_json)
                        samples += 1
                    info = tarfile.TarInfo(member.name)
                    info.size, info.mtime, info.mode = len(data), int(TAR_MTIME), member.mode
                    new.addfile(info, io.BytesIO(data))
            self.storage.upload_file(target, spool_path)
        finally:
            Path(spool_path).unlink(missing_ok=True)
        return samples

    # ---------------------------------------------------------------- records
    def records(self, name: str, retry: int, tar: str) -> list[ItemRecord]:
        """A layout-1 records file (or an already migrated one) as layout-2 records."""
        table = table_from_bytes(self.storage.read_bytes(self.uri(name)))
        if "retry" in table.column_names:  # already migrated (an interrupted run)
            return [ItemRecord(**row) for row in table.to_pylist()]
        out = []
        for row in table.to_pylist():
            scores = row.pop("scores", None)
            row["scores"] = dict(scores) if scores else None  # a map reads as (key, value) pairs
            row["input_shard"] = self.absolute(row.get("input_shard"))
            if row.get("output_key"):
                row["output_key"] = f"{public_uri(tar)}#{row['key']}"
            out.append(ItemRecord(**row, retry=retry))
        return out

    def marker(self, name: str, retry: int) -> bytes:
        data = json.loads(self.storage.read_bytes(self.uri(name)))
        data.pop("retry_of", None)
        data["retry"] = retry
        data["input_shard"] = self.absolute(data.get("input_shard"))
        return ShardStats(**data).to_json()

    def move(self, source: str, target: str) -> bool:
        if source not in self.names:
            return False
        self.storage.write_bytes(self.uri(target), self.storage.read_bytes(self.uri(source)))
        return True


def migrate_run(storage: Storage, run_uri: str, relative_to: str | None = None) -> MigrationReport:
    """Migrate the run folder at `run_uri` to layout 2 (a no-op for a layout-2 folder, apart
    from removing layout-1 objects an interrupted migration left behind)."""
    job = _Migration(storage, run_uri, relative_to)
    state = RunState(storage, job.run_uri)
    run_json = state.read_run_json(check=False)
    if run_json is None:
        raise FileNotFoundError(f"{run_uri}: no run.json (not a restyle run folder)")
    report = MigrationReport(job.run_uri, layout_of(run_json))
    if report.from_layout > LAYOUT_VERSION:
        check_layout(job.run_uri, run_json)  # refuses: written by a newer restyle
    if report.from_layout < LAYOUT_VERSION:
        run_json["random_weights"] = bool(run_json.get("random_weights")) or (
            run_json["config"].get("weights") == "tiny"
        )
        _migrate_commits(job, run_json, report)
        run_json["input_shards"] = [job.absolute(u) for u in run_json.get("input_shards", [])]
        run_json["layout"] = LAYOUT_VERSION
        state.write_run_json(run_json)
    write_card(storage, job.run_uri, run_json)
    for name in sorted(job.names):
        if _V1_LEFTOVER.match(name):
            storage.delete(job.uri(name))
            report.removed.append(name)
    if scheme_of(job.run_uri) in (None, "file"):  # local disks keep empty folders; S3 has none
        folders = {name.rpartition("/")[0] for name in report.removed if "/" in name}
        for folder in sorted(folders, key=lambda f: -f.count("/")):  # deepest first
            with contextlib.suppress(OSError):
                os.rmdir(local_path(job.uri(folder)))
    return report


def _migrate_commits(job: _Migration, run_json: dict, report: MigrationReport) -> None:
    retries: dict[int, list[int]] = {}
    for name in job.names:
        if match := _V1_RETRY.match(name):
            retries.setdefault(int(match.group(2)), []).append(int(match.group(1)))
    for name in sorted(job.names):
        if not (match := _V1_MAIN.match(name)):
            continue
        shard = int(match.group(1))
        main = ShardPaths(job.run_uri, shard)
        report.shards += 1
        report.samples += job.convert_tar(main.tar, main.tar, run_json)
        current = job.records(f"part-{shard:06d}.parquet", 0, main.tar)
        for n in sorted(retries.get(shard, [])):
            old = f"retry-{n:02d}/part-{shard:06d}"
            new = ShardPaths(job.run_uri, shard, n)
            report.retries += 1
            report.samples += job.convert_tar(job.uri(old + ".tar"), new.tar, run_json)
            current = overlay(current, job.records(old + ".parquet", n, new.tar))
            job.storage.write_bytes(new.marker, job.marker(old + ".stats.json", n))
            report.captions += job.move(
                old + ".captions.parquet", new.captions[len(job.run_uri) + 1 :]
            )
            report.scores += _move_scores(job, f"scores/{old}", new)
        job.storage.write_bytes(main.records, records_to_parquet(current))
        job.storage.write_bytes(main.marker, job.marker(main.marker[len(job.run_uri) + 1 :], 0))
        report.captions += job.move(
            f"part-{shard:06d}.captions.parquet", main.captions[len(job.run_uri) + 1 :]
        )
        report.scores += _move_scores(job, f"scores/part-{shard:06d}", main)


def _move_scores(job: _Migration, old_stem: str, new: ShardPaths) -> int:
    """Move one commit's eval scores and features; how many files moved."""
    new_stem = "scores/" + new.name.removeprefix("part-")
    return sum(job.move(old_stem + suffix, new_stem + suffix) for suffix in _SCORE_SUFFIXES)
