"""Which subjects meet which styles in a triplet job: the catalogs read whole, and the pairing.

Pairing modes: "all" (every subject with every style), "sample" (per subject, the
`per_subject` styles ranking first under a hash of (seed, subject id, style id): seeded,
independent of catalog order, and stable when styles are added: a subject keeps its pick
unless a new style outranks one), "pairs" (an explicit list, inline or in a .parquet/.csv file
with subject_id and style_id; an unknown id is an error). `pipeline.jobs.triplets` turns the
pairs into a derived manifest and runs it.
"""

from __future__ import annotations

import csv
import hashlib
import io
from collections.abc import Iterable
from dataclasses import dataclass, field
from enum import StrEnum
from typing import Annotated, Any

from pydantic import PlainValidator, Strict, ValidationInfo, WithJsonSchema, model_validator

from pipeline.config import ConfigModel, ConfigProblem
from pipeline.config.values import AtLeastOne, Integer, OneOf, resolve_path
from pipeline.manifests import ManifestItem, RowError, list_shards, read_shard
from pipeline.storage import Storage
from pipeline.storage.parquet import table_from_bytes


class TripletError(ValueError):
    """The catalogs and pairing cannot make triplets; the message names the row or pair."""


class PairingMode(StrEnum):
    ALL = "all"  # every subject with every style
    SAMPLE = "sample"  # per subject, `per_subject` styles ranked by a seeded hash
    PAIRS = "pairs"  # an explicit list, inline or in a file


PAIRING_MODES = tuple(mode.value for mode in PairingMode)
PAIRS_NEEDED = "mode 'pairs' needs a list of [subject_id, style_id] or a .parquet/.csv file of them"


def _pairs(value: Any, info: ValidationInfo) -> tuple[tuple[str, str], ...] | str:
    """Inline pairs, or the path of a .parquet/.csv file of them (resolved beside the spec)."""
    if isinstance(value, str):
        return resolve_path(value, info)
    if not isinstance(value, (list, tuple)) or not value:
        raise ValueError(PAIRS_NEEDED)
    for i, pair in enumerate(value):
        if not (
            isinstance(pair, (list, tuple))
            and len(pair) == 2
            and all(isinstance(p, str) for p in pair)
        ):
            raise ConfigProblem((i,), f"must be [subject_id, style_id], got {pair!r}")
    return tuple((subject, style) for subject, style in value)


PairsInput = Annotated[
    tuple[tuple[str, str], ...] | str,
    PlainValidator(_pairs),
    WithJsonSchema(
        {
            "anyOf": [
                {"type": "string", "description": "a .parquet/.csv file with subject_id, style_id"},
                {
                    "type": "array",
                    "minItems": 1,
                    "items": {
                        "type": "array",
                        "items": {"type": "string"},
                        "minItems": 2,
                        "maxItems": 2,
                    },
                },
            ]
        }
    ),
]


class Pairing(ConfigModel):
    """How subjects meet styles (see the module doc)."""

    mode: Annotated[str, Strict(), OneOf(PairingMode)] = PairingMode.ALL.value
    """all | sample | pairs."""
    per_subject: AtLeastOne = 1
    """mode sample: styles per subject."""
    seed: Integer = 0
    """mode sample: the ranking hash's seed."""
    pairs: PairsInput | None = None
    """mode pairs: [[subject_id, style_id], ...], or a .parquet/.csv file of them."""

    @model_validator(mode="after")
    def _pairs_go_with_mode_pairs(self) -> Pairing:
        if self.mode == PairingMode.PAIRS and self.pairs is None:
            raise ConfigProblem("pairs", PAIRS_NEEDED)
        if self.mode != PairingMode.PAIRS and self.pairs is not None:
            raise ConfigProblem("pairs", f"is only used with mode 'pairs' (mode is {self.mode!r})")
        return self

    @property
    def inline_pairs(self) -> tuple[tuple[str, str], ...] | None:
        return self.pairs if isinstance(self.pairs, tuple) else None

    @property
    def pairs_file(self) -> str | None:
        return self.pairs if isinstance(self.pairs, str) else None


# ------------------------------------------------------------------ catalogs
@dataclass
class Catalog:
    """A manifest read whole, by id, in sorted id order; bad rows are kept as messages, and
    rows that cannot play their role (`usable_for`) by id with the reason."""

    items: dict[str, ManifestItem]
    rejected: list[str] = field(default_factory=list)
    unusable: dict[str, str] = field(default_factory=dict)

    @property
    def ids(self) -> list[str]:
        return sorted(self.items)

    def usable_for(self, role: str, model: str) -> Catalog:
        """The rows that can be a triplet's subject / style for `model`."""
        kept, unusable = {}, dict(self.unusable)
        for item_id, item in self.items.items():
            reason = unusable_reason(item, role, model)
            if reason is None:
                kept[item_id] = item
            else:
                unusable[item_id] = (
                    f"{role} {item_id!r} ({item.source[0]}, row {item.source[1]}) {reason}"
                )
        return Catalog(kept, self.rejected, unusable)


def unusable_reason(item: ManifestItem, role: str, model: str) -> str | None:
    if role == "subject" and item.subject is None:
        return "has no subject image"
    if role == "style" and model == "uso" and not item.styles:
        return "has no style image: USO triplets need one"
    if role == "style" and model == "omniconsistency" and not item.style_lora:
        return "has no style_lora: OmniConsistency triplets need one"
    return None


def load_catalog(spec: Iterable[str], storage: Storage) -> Catalog:
    catalog = Catalog({})
    for shard in list_shards(list(spec), storage):
        for entry in read_shard(shard, storage):
            if isinstance(entry, RowError):
                catalog.rejected.append(str(entry))
            elif entry.id in catalog.items:
                first = catalog.items[entry.id].source
                catalog.rejected.append(
                    f"{shard.uri}, row {entry.source[1]}: duplicate id "
                    f"{entry.id!r} (first in {first[0]}, row {first[1]})"
                )
            else:
                catalog.items[entry.id] = entry
    return catalog


# ------------------------------------------------------------------ pairings
def pair_all(subject_ids: list[str], style_ids: list[str]) -> list[tuple[str, str]]:
    return [(s, t) for s in subject_ids for t in style_ids]


def _rank(seed: int, subject_id: str, style_id: str) -> bytes:
    return hashlib.sha256(f"{seed}\x00{subject_id}\x00{style_id}".encode()).digest()


def pair_sample(
    subject_ids: list[str], style_ids: list[str], per_subject: int, seed: int
) -> list[tuple[str, str]]:
    """Per subject, the `per_subject` styles of highest hash rank (all of them when fewer)."""
    pairs = []
    for subject in subject_ids:
        ranked = sorted(style_ids, key=lambda style: _rank(seed, subject, style))
        pairs += [(subject, style) for style in sorted(ranked[:per_subject])]
    return pairs


def read_pairs_file(uri: str, storage: Storage) -> list[tuple[str, str]]:
    """Pairs from a Parquet or CSV file with columns subject_id and style_id."""
    data = storage.read_bytes(uri)
    if uri.endswith((".parquet", ".pq")):
        rows = table_from_bytes(data).to_pylist()
    elif uri.endswith(".csv"):
        rows = list(csv.DictReader(io.StringIO(data.decode("utf-8"))))
    else:
        raise TripletError(f"{uri}: pairs file must be .parquet or .csv")
    pairs = []
    for i, row in enumerate(rows):
        subject, style = row.get("subject_id"), row.get("style_id")
        if not (isinstance(subject, str) and subject and isinstance(style, str) and style):
            raise TripletError(
                f"{uri}, row {i}: needs non-empty subject_id and style_id, got {row}"
            )
        pairs.append((subject, style))
    return pairs


def make_pairs(
    pairing: Pairing, subjects: Catalog, styles: Catalog, storage: Storage
) -> list[tuple[str, str]]:
    if pairing.mode == "all":
        return pair_all(subjects.ids, styles.ids)
    if pairing.mode == "sample":
        return pair_sample(subjects.ids, styles.ids, pairing.per_subject, pairing.seed)
    pairs = list(pairing.inline_pairs or read_pairs_file(pairing.pairs_file or "", storage))
    where = pairing.pairs_file or "pairing.pairs"
    seen: set[tuple[str, str]] = set()
    for i, (subject, style) in enumerate(pairs):
        for role, item_id, catalog in (("subject", subject, subjects), ("style", style, styles)):
            if item_id not in catalog.items:
                reason = (
                    catalog.unusable.get(item_id)
                    or f"{role} id {item_id!r} is not in the {role} catalog"
                )
                raise TripletError(f"{where}[{i}]: cannot use this pair: {reason}")
        if (subject, style) in seen:
            raise TripletError(f"{where}[{i}]: pair ({subject!r}, {style!r}) is listed twice")
        seen.add((subject, style))
    return pairs
