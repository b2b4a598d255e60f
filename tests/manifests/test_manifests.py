"""Manifests from local folders and the real S3 server: discovery, both formats, validation,
and input images that fail as items of the right kind."""

from __future__ import annotations

import io
import json
import tarfile
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from PIL import Image
from support.paths import REPO
from support.s3_server import SeaweedS3Server

from pipeline.errors import ItemError, ItemStatus
from pipeline.manifests import (
    ManifestError,
    ManifestItem,
    RowError,
    count_items,
    list_shards,
    read_shard,
    validate_manifest,
)
from pipeline.manifests.images import ImageRef, load_image
from pipeline.storage import Storage, StorageAuthError, StorageNotFoundError, StorageSettings

MANIFESTS = REPO / "manifests"
EXAMPLES = MANIFESTS / "examples"


@pytest.fixture(scope="module")
def local() -> Storage:
    return Storage(StorageSettings())


def png_bytes(color=(200, 30, 30), size=(32, 24), mode="RGB") -> bytes:
    out = io.BytesIO()
    Image.new(mode, size, color).save(out, "PNG")
    return out.getvalue()


def jpeg_bytes(size=(64, 48)) -> bytes:
    out = io.BytesIO()
    rng = np.random.default_rng(0)
    Image.fromarray(rng.integers(0, 255, (size[1], size[0], 3), dtype=np.uint8)).save(out, "JPEG")
    return out.getvalue()


def write_tar(path: Path, members: list[tuple[str, bytes]], mode: str = "w") -> None:
    with tarfile.open(path, mode) as tar:
        for name, data in members:
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))


def items_of(spec, storage: Storage) -> list[ManifestItem | RowError]:
    return [entry for shard in list_shards(spec, storage) for entry in read_shard(shard, storage)]


def upload_tree(storage: Storage, folder: Path, base: str) -> None:
    for path in sorted(folder.rglob("*")):
        if path.is_file():
            storage.upload_file(f"{base}/{path.relative_to(folder).as_posix()}", path)


# ---------------------------------------------------------------------- the shipped examples
def test_examples_are_valid_and_read_as_documented(local: Storage) -> None:
    report = validate_manifest(str(EXAMPLES), local, check_images=True)
    assert report.ok, report.format()
    assert (report.rows, report.valid_items, report.images_checked) == (12, 12, 20)

    shards = list_shards(str(EXAMPLES), local)
    assert [(s.index, Path(s.uri).name, s.format) for s in shards] == [
        (0, "omniconsistency.parquet", "parquet"),
        (1, "uso-inline.parquet", "parquet"),
        (2, "uso.parquet", "parquet"),
        (3, "uso-000000.tar", "webdataset"),
        (4, "uso-000001.tar", "webdataset"),
    ]
    assert [count_items(s, local) for s in shards] == [3, 1, 4, 2, 2]

    items = {item.id: item for item in items_of(str(EXAMPLES), local)}
    two = items["uso-house-two-styles"]
    assert two.subject.uri == str(MANIFESTS / "samples" / "subject_house.jpg")  # relative URI
    assert [ref.uri for ref in two.styles] == [
        str(MANIFESTS / "samples" / n) for n in ("style_watercolor.jpg", "style_waves.png")
    ]
    assert (two.seed, two.width, two.height, two.steps, two.guidance) == (1234, 768, 512, 20, 4.0)
    assert two.extra == {"category": "multi-style"} and two.model == "uso"
    assert two.source == (str(EXAMPLES / "uso.parquet"), 2)
    assert items["uso-lighthouse-dots"].subject is None
    ghibli = items["omni-cup-van-gogh"]
    assert (ghibli.style_lora, ghibli.style_lora_scale, ghibli.styles) == ("Van_Gogh", 0.8, [])
    inline = items["inline-figure-dots"]
    assert inline.subject.data == (MANIFESTS / "samples" / "subject_figure.png").read_bytes()
    wds = items["wds-house-two-styles"]
    assert wds.prompt == "A house by a lake." and wds.seed == 7
    assert [len(ref.data) for ref in wds.styles] == [
        (MANIFESTS / "samples" / n).stat().st_size
        for n in ("style_watercolor.jpg", "style_waves.png")
    ]
    assert items["wds-style-only"].subject is None and items["wds-style-only"].model is None
    assert items["wds-cup-by-uri"].subject.uri == str(MANIFESTS / "samples" / "subject_cup.png")
    image = load_image(items["uso-cup-subject-only"].subject, local, "uso-cup-subject-only")
    assert image.mode == "RGB" and image.size == (160, 224)


def test_invalid_example_reports_every_problem_by_row_and_field(local: Storage) -> None:
    spec = str(MANIFESTS / "invalid" / "invalid.parquet")
    report = validate_manifest(spec, local, check_images=True)
    assert [(e.row, e.field) for e in report.errors] == [
        (1, "id"),
        (2, "width"),
        (3, "model"),
        (4, "subject"),
        (5, "subject"),
        (6, "id"),
    ]
    text = report.format()
    assert f"{spec}, row 2, field 'width': must be between 16 and 4096, got 0" in text
    assert "unsupported URI scheme 'http'" in text and "duplicate id 'ok-row'" in text
    assert "no_such_image.png not found" in text
    assert not report.ok and report.valid_items == 2

    entries = items_of(spec, local)  # a run: bad rows become records, good rows go on
    assert [type(e).__name__ for e in entries] == [
        "ManifestItem",
        "RowError",
        "RowError",
        "RowError",
        "RowError",
        "ManifestItem",
        "RowError",
    ]
    assert entries[1].item_id == "<no id: row 1 of invalid.parquet>"
    assert entries[2].item_id == "bad-width" and entries[2].row == 2


# ---------------------------------------------------------------------- the same from S3
def test_parquet_and_webdataset_manifests_from_s3(
    s3_server: SeaweedS3Server, s3_bucket: str, local: Storage
) -> None:
    storage = s3_server.storage()
    upload_tree(storage, MANIFESTS, f"{s3_bucket}/m")
    assert validate_manifest(f"{s3_bucket}/m/examples", storage, check_images=True).ok

    specs = [
        f"{s3_bucket}/m/examples/*.parquet",
        f"{s3_bucket}/m/examples/webdataset/uso-{{000000..000009}}.tar",
    ]
    shards = list_shards(specs, storage)
    assert [s.uri.rsplit("/", 1)[1] for s in shards] == [
        "omniconsistency.parquet",
        "uso-inline.parquet",
        "uso.parquet",
        "uso-000000.tar",
        "uso-000001.tar",
    ]
    remote = {i.id: i for s in shards for i in read_shard(s, storage)}
    here = {i.id: i for i in items_of(str(EXAMPLES), local)}
    assert remote.keys() == here.keys()
    assert remote["uso-house-two-styles"].subject.uri == f"{s3_bucket}/m/samples/subject_house.jpg"
    assert remote["wds-cup-by-uri"].styles[0].uri == f"{s3_bucket}/m/samples/style_stripes.jpg"
    for item_id, item in remote.items():
        assert (item.prompt, item.seed, item.extra, len(item.styles)) == (
            here[item_id].prompt,
            here[item_id].seed,
            here[item_id].extra,
            len(here[item_id].styles),
        )
    image = load_image(remote["uso-house-two-styles"].styles[1], storage, "x")
    assert image.size == (192, 192)


def test_manifest_on_s3_with_wrong_credentials_is_a_clear_error(
    s3_server: SeaweedS3Server, s3_bucket: str
) -> None:
    storage = s3_server.storage()
    storage.upload_file(f"{s3_bucket}/uso.parquet", EXAMPLES / "uso.parquet")
    storage.upload_file(f"{s3_bucket}/w.tar", EXAMPLES / "webdataset" / "uso-000000.tar")
    bad = Storage(
        s3_server.settings(max_attempts=2).with_credentials(
            s3_server.access_key, "not-the-secret-123"
        )
    )
    with pytest.raises(StorageAuthError) as info:
        list_shards(f"{s3_bucket}/*.parquet", bad)
    assert "not-the-secret-123" not in str(info.value)
    shards = list_shards(s3_bucket, storage)
    for shard in shards:  # reading each format with wrong keys: an auth error, not a row error
        with pytest.raises(StorageAuthError) as info:
            list(read_shard(shard, bad))
        assert "not-the-secret-123" not in str(info.value) and shard.uri in str(info.value)


# ---------------------------------------------------------------------- discovery
def test_list_shards_specs(tmp_path: Path, local: Storage) -> None:
    for name in [
        "a/part-000000.parquet",
        "a/part-000001.parquet",
        "a/part-000002.tar",
        "a/_SUCCESS",
        "a/.part-000003.parquet.tmp",
        "a/notes.txt",
        "b/x.tgz",
    ]:
        (tmp_path / name).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / name).write_bytes(b"x")
    a, b = str(tmp_path / "a"), str(tmp_path / "b")
    names = lambda shards: [(s.index, Path(s.uri).name, s.format) for s in shards]  # noqa: E731
    assert names(list_shards(a, local)) == [
        (0, "part-000000.parquet", "parquet"),
        (1, "part-000001.parquet", "parquet"),
        (2, "part-000002.tar", "webdataset"),
    ]
    assert names(
        list_shards(
            [f"{b}/x.tgz", f"{a}/part-{{000001..000009}}.*", a + "/part-000001.parquet"], local
        )
    ) == [
        (0, "part-000001.parquet", "parquet"),
        (1, "part-000002.tar", "webdataset"),
        (2, "x.tgz", "webdataset"),
    ]
    with pytest.raises(
        ManifestError,
        match=r"no manifest file .* matches this pattern; it matched only: .*notes.txt",
    ):
        list_shards(f"{a}/*.txt", local)
    with pytest.raises(ManifestError, match="no such manifest file or folder"):
        list_shards(str(tmp_path / "missing"), local)
    with pytest.raises(ManifestError, match="not a manifest file"):
        list_shards(f"{a}/notes.txt", local)
    with pytest.raises(ManifestError, match="unsupported URI scheme 'https'"):
        list_shards("https://example.com/m.parquet", local)


# ---------------------------------------------------------------------- row rules
@pytest.mark.parametrize(
    "fields, field, message",
    [
        ({"id": ""}, "id", "required: a non-empty string"),
        ({"id": 7}, "id", "got int 7"),
        ({"prompt": 5}, "prompt", "must be a string"),
        ({"model": "flux"}, "model", "unknown model 'flux'"),
        ({"seed": -1}, "seed", "between 0 and"),
        ({"seed": "42"}, "seed", "must be an integer, got str"),
        ({"width": 512.5}, "width", "must be an integer, got 512.5"),
        ({"height": True}, "height", "must be an integer, got bool"),
        # one bound everywhere: what a run refuses, a manifest row is refused for up front
        ({"width": 8192}, "width", "must be between 16 and 4096, got 8192"),
        ({"height": 8}, "height", "must be between 16 and 4096, got 8"),
        ({"steps": 0}, "steps", "between 1 and 1000"),
        ({"guidance": -1}, "guidance", "must be >= 0"),
        ({"style_lora_scale": "x"}, "style_lora_scale", "must be a number"),
        ({"styles": "a.jpg"}, "styles", "must be a list (even for one image)"),
        ({"styles": ["ok.jpg", ""]}, "styles[1]", "non-empty URI"),
        ({"subject": "gs://b/a.jpg"}, "subject", "unsupported URI scheme 'gs'"),
        ({"subject": "../../../../x.jpg"}, None, None),  # local: climbing folders is allowed
    ],
    ids=lambda v: str(v)[:30],
)
def test_field_rules_name_the_field(tmp_path: Path, local: Storage, fields, field, message) -> None:
    sample = {"id": "s1", "prompt": "p", **fields}
    write_tar(tmp_path / "m.tar", [("s1.json", json.dumps(sample).encode())])
    [entry] = items_of(str(tmp_path / "m.tar"), local)
    if field is None:
        assert isinstance(entry, ManifestItem)
        return
    assert isinstance(entry, RowError)
    assert (entry.file, entry.row, entry.field) == (str(tmp_path / "m.tar"), 0, field)
    assert message in entry.message and f"field {field!r}" in str(entry)


def test_parquet_rows_stream_in_order_with_nulls_and_floats(tmp_path: Path, local: Storage) -> None:
    n = 1000
    table = pa.table(
        {
            "id": [f"id-{i:04d}" for i in range(n)],
            "prompt": [None if i % 7 == 0 else f"p{i}" for i in range(n)],
            "seed": [float(i) if i % 3 else float("nan") for i in range(n)],  # pandas-style NaN
            "model": ["" if i % 2 else "USO" for i in range(n)],
            "tag": [i % 5 for i in range(n)],
        }
    )
    pq.write_table(table, tmp_path / "big.parquet", row_group_size=300)
    items = items_of(str(tmp_path / "big.parquet"), local)
    assert [i.id for i in items] == [f"id-{i:04d}" for i in range(n)]
    assert items[7].prompt == "" and items[8].prompt == "p8"
    assert items[3].seed is None and items[4].seed == 4
    assert items[0].model == "uso" and items[1].model is None
    assert items[9].extra == {"tag": 4} and items[999].source == (
        str(tmp_path / "big.parquet"),
        999,
    )


def test_parquet_file_level_errors(tmp_path: Path, local: Storage) -> None:
    def shard_error(table: pa.Table | None, raw: bytes = b"") -> str:
        path = tmp_path / "m.parquet"
        if table is not None:
            pq.write_table(table, path)
        else:
            path.write_bytes(raw)
        with pytest.raises(ManifestError) as info:
            list(read_shard(list_shards(str(path), local)[0], local))
        return str(info.value)

    assert "field 'id': required column is missing" in shard_error(pa.table({"prompt": ["x"]}))
    assert "field 'width': column must be integer, got string" in shard_error(
        pa.table({"id": ["a"], "width": ["512"]})
    )
    assert "field 'styles': column must be list<string>" in shard_error(
        pa.table({"id": ["a"], "styles": ["one.jpg"]})
    )
    assert "not a readable Parquet file" in shard_error(None, b"PAR1 this is not parquet")
    report = validate_manifest(str(tmp_path / "m.parquet"), local)
    assert [(e.row, e.field) for e in report.errors] == [(None, None)]
    with pytest.raises(StorageNotFoundError, match=r"gone.parquet"):
        list(
            read_shard(
                list_shards(str(tmp_path / "m.parquet"), local)[0].__class__(
                    0, str(tmp_path / "gone.parquet"), "parquet"
                ),
                local,
            )
        )


def test_duplicate_ids_within_and_across_shards(tmp_path: Path, local: Storage) -> None:
    pq.write_table(pa.table({"id": ["a", "b", "a"]}), tmp_path / "p0.parquet")
    pq.write_table(pa.table({"id": ["c", "b"]}), tmp_path / "p1.parquet")
    entries = items_of(str(tmp_path / "p0.parquet"), local)
    assert isinstance(entries[2], RowError) and "duplicate id 'a' (first at row 0)" in str(
        entries[2]
    )
    report = validate_manifest(str(tmp_path), local)
    assert [(Path(e.file).name, e.row, e.field) for e in report.errors] == [
        ("p0.parquet", 2, "id"),
        ("p1.parquet", 1, "id"),
    ]
    assert f"first at {tmp_path / 'p0.parquet'} row 1" in report.errors[1].message


# ---------------------------------------------------------------------- WebDataset details
def test_webdataset_members(tmp_path: Path, local: Storage) -> None:
    img = png_bytes()
    write_tar(
        tmp_path / "w.tar.gz",
        [
            ("k1.json", b'{"prompt": "from json"}'),
            ("k1.txt", b"from txt\n"),
            ("k1.style10.png", png_bytes((1, 1, 1))),
            ("k1.style2.png", png_bytes((2, 2, 2))),
            ("k1.subject.png", img),
            ("k2.txt", b"only text\n"),
            ("k2.style.jpg", jpeg_bytes()),
            ("dir/k3.json", b'{"id": "custom-id"}'),
            ("k4.json", b"{not json"),
            ("k5.style0.png", img),
            ("k5.style.png", img),
            ("k6.json", b'{"subject": "x.png"}'),
            ("k6.subject.png", img),
            ("k7.json", b'["a list"]'),
            ("README", b"no extension: ignored"),
        ],
        mode="w:gz",
    )
    entries = items_of(str(tmp_path / "w.tar.gz"), local)
    by_id = {(e.id if isinstance(e, ManifestItem) else e.item_id): e for e in entries}
    k1 = by_id["k1"]
    assert k1.prompt == "from json" and k1.subject.data == img
    assert [Image.open(io.BytesIO(r.data)).getpixel((0, 0)) for r in k1.styles] == [
        (2, 2, 2),
        (1, 1, 1),
    ]
    assert by_id["k2"].prompt == "only text" and len(by_id["k2"].styles) == 1
    assert by_id["custom-id"].source[1] == 2
    assert by_id["k4"].field == "k4.json" and "not valid UTF-8 JSON" in by_id["k4"].message
    assert (
        by_id["k5"].field.startswith("k5.style")
        and "style index 0 also given" in by_id["k5"].message
    )
    assert "subject (a URI) or subject_bytes, not both" in by_id["k6"].message
    assert "k6.subject.png" in by_id["k6"].field
    assert "must hold a JSON object" in by_id["k7"].message
    assert count_items(list_shards(str(tmp_path / "w.tar.gz"), local)[0], local) == 7


def test_truncated_tar_yields_complete_samples_then_fails_the_shard(
    tmp_path: Path, local: Storage
) -> None:
    write_tar(tmp_path / "full.tar", [(f"k{i}.txt", b"x" * 3000) for i in range(5)])
    data = (tmp_path / "full.tar").read_bytes()
    (tmp_path / "cut.tar").write_bytes(data[: 3 * 3584 + 700])  # inside the 4th member
    shard = list_shards(str(tmp_path / "cut.tar"), local)[0]
    seen = []
    with pytest.raises(ManifestError, match=r"cut.tar: corrupt or truncated tar after sample"):
        for entry in read_shard(shard, local):
            seen.append(entry.id)
    assert seen == ["k0", "k1", "k2"]


# ---------------------------------------------------------------------- images as item errors
def test_corrupt_and_missing_images_become_item_errors(
    tmp_path: Path, local: Storage, s3_server: SeaweedS3Server, s3_bucket: str
) -> None:
    good = jpeg_bytes()
    (tmp_path / "truncated.jpg").write_bytes(good[: len(good) // 2])
    (tmp_path / "text.png").write_bytes(b"this is not an image")
    s3 = s3_server.storage()
    s3.write_bytes(f"{s3_bucket}/truncated.jpg", good[: len(good) // 2])
    cases = [
        (
            ImageRef(uri=str(tmp_path / "absent.png"), name="subject"),
            local,
            ItemStatus.IO_ERROR,
            "subject image .*absent.png not found",
        ),
        (
            ImageRef(uri=f"{s3_bucket}/absent.png", name="styles[0]"),
            s3,
            ItemStatus.IO_ERROR,
            "styles\\[0\\] image s3://.*/absent.png not found: no such object",
        ),
        (
            ImageRef(uri="s3://no-such-bucket-q/a.png", name="subject"),
            s3,
            ItemStatus.IO_ERROR,
            "bucket 'no-such-bucket-q' does not exist",
        ),
        (
            ImageRef(uri=str(tmp_path / "truncated.jpg"), name="subject"),
            local,
            ItemStatus.BAD_INPUT,
            "truncated.jpg could not be decoded",
        ),
        (
            ImageRef(uri=f"{s3_bucket}/truncated.jpg", name="styles[1]"),
            s3,
            ItemStatus.BAD_INPUT,
            "styles\\[1\\] image s3://.*truncated.jpg could not be decoded",
        ),
        (
            ImageRef(uri=str(tmp_path / "text.png"), name="subject"),
            local,
            ItemStatus.BAD_INPUT,
            "cannot identify image file",
        ),
        (
            ImageRef(data=b"\x89PNG garbage", name="styles[0]"),
            local,
            ItemStatus.BAD_INPUT,
            "inline styles\\[0\\] \\(12 bytes\\) could not be decoded",
        ),
        (
            ImageRef(uri=f"{s3_bucket}/truncated.jpg", name="subject"),
            Storage(s3_server.settings().with_credentials(s3_server.access_key, "bad-secret-987")),
            ItemStatus.IO_ERROR,
            "could not be read: SignatureDoesNotMatch",
        ),
    ]
    for ref, storage, kind, pattern in cases:
        with pytest.raises(ItemError, match=pattern) as info:
            load_image(ref, storage, "item-42")
        assert info.value.kind == kind and info.value.item_id == "item-42"
        assert str(info.value).startswith("item 'item-42': ")
        assert "bad-secret-987" not in str(info.value)


def test_images_are_upright_rgb(local: Storage) -> None:
    rotated = Image.new("RGB", (40, 20), (10, 200, 10))
    exif = Image.Exif()
    exif[0x0112] = 6  # "rotate 90 CW to view"
    out = io.BytesIO()
    rotated.save(out, "JPEG", exif=exif)
    upright = load_image(ImageRef(data=out.getvalue(), name="subject"), local, "i")
    assert upright.size == (20, 40) and upright.mode == "RGB"
    for mode, color in (("RGBA", (1, 2, 3, 0)), ("L", 77), ("P", 5)):
        image = load_image(ImageRef(data=png_bytes(color, mode=mode), name="s"), local, "i")
        assert image.mode == "RGB" and image.size == (32, 24)
