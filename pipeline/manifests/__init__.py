"""Manifests: which items to stylize, from Parquet files or WebDataset tar shards.

    shards = list_shards("s3://bucket/catalog/part-{000000..000099}.parquet", storage)
    for entry in read_shard(shards[0], storage):   # ManifestItem, or RowError for a bad row
        ...
    report = validate_manifest(spec, storage, check_images=True)

The schema (one row = one item) is documented in manifests/README.md at the repository root.
Modules: `items` (the types), `fields` (value rules shared by both formats), `parquet` and
`webdataset` (the two layouts), `discovery` (spec -> shard list), `reading` (shard -> items),
`validation` (whole-manifest checks). Image loading lives in `pipeline.manifests.images`.
"""

from pipeline.manifests.discovery import list_shards, manifest_format
from pipeline.manifests.images import ImageRef, load_image
from pipeline.manifests.items import (
    PARQUET,
    WEBDATASET,
    ManifestError,
    ManifestItem,
    ManifestShard,
    OutsideLocalRootsError,
    RowError,
)
from pipeline.manifests.reading import count_all_items, count_items, read_shard
from pipeline.manifests.validation import ValidationReport, validate_manifest

__all__ = [
    "PARQUET",
    "WEBDATASET",
    "ImageRef",
    "ManifestError",
    "ManifestItem",
    "ManifestShard",
    "OutsideLocalRootsError",
    "RowError",
    "ValidationReport",
    "count_all_items",
    "count_items",
    "list_shards",
    "load_image",
    "manifest_format",
    "read_shard",
    "validate_manifest",
]
