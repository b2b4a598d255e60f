"""A hostile or broken manifest costs one item, never an actor: every fetched object has a byte
budget, an image's pixels are checked from its header before decoding, devices, FIFOs and kernel
files are refused, and an optional allow-list confines local paths. Each error names the item."""

from __future__ import annotations

import io
import os
import tarfile
import time
from pathlib import Path

import pytest
from PIL import Image

from pipeline.config import DEFAULT_LIMITS, InputLimits
from pipeline.errors import ItemError, ItemStatus
from pipeline.manifests import ManifestItem, RowError, list_shards, read_shard
from pipeline.manifests.images import ImageRef, load_image
from pipeline.storage import Storage, StorageSettings, StorageSpecialFileError


@pytest.fixture
def local() -> Storage:
    return Storage(StorageSettings())


def png(size: tuple[int, int] = (40, 32), mode: str = "RGB") -> bytes:
    buffer = io.BytesIO()
    Image.new(mode, size).save(buffer, format="PNG")
    return buffer.getvalue()


def refused(ref: ImageRef, storage: Storage, limits: InputLimits = DEFAULT_LIMITS) -> ItemError:
    with pytest.raises(ItemError) as error:
        load_image(ref, storage, "item-7", limits)
    assert "'item-7'" in str(error.value) and "\n" not in str(error.value)
    return error.value


@pytest.mark.parametrize("path", ["/dev/zero", "/dev/urandom", "/proc/self/environ"])
def test_devices_and_kernel_files_are_refused_before_reading(local: Storage, path: str):
    t0 = time.perf_counter()
    error = refused(ImageRef(uri=path, name="subject"), local)
    assert error.kind == ItemStatus.BAD_INPUT and path in str(error)
    assert time.perf_counter() - t0 < 5  # refused, not read until the budget ran out


def test_a_fifo_is_refused_without_blocking(local: Storage, tmp_path: Path):
    fifo = tmp_path / "subject.png"
    os.mkfifo(fifo)
    error = refused(ImageRef(uri=str(fifo), name="subject"), local)
    assert "not a regular file" in str(error)
    with pytest.raises(StorageSpecialFileError):
        local.open_read(str(fifo))


def test_an_image_over_the_byte_budget_is_that_items_error(local: Storage, tmp_path: Path):
    image = tmp_path / "big.png"
    image.write_bytes(png((256, 256)))
    limits = InputLimits(max_image_bytes=100)
    error = refused(ImageRef(uri=str(image), name="styles[0]"), local, limits)
    assert error.kind == ItemStatus.BAD_INPUT and "max_image_bytes" in str(error)
    inline = refused(ImageRef(data=image.read_bytes(), name="subject"), local, limits)
    assert "100-byte budget" in str(inline)


def test_a_huge_image_is_refused_from_its_header_with_the_default_budget(local: Storage):
    data = png((12000, 12000), mode="1")  # a few KB on disk, 144 Mpx (432 MB as RGB) decoded
    assert len(data) < 1_000_000
    error = refused(ImageRef(data=data, name="subject"), local)
    assert "12000x12000" in str(error) and "max_image_pixels" in str(error)
    ok = load_image(ImageRef(data=png((4000, 3000)), name="subject"), local, "item-7")
    assert ok.size == (4000, 3000)  # 12 Mpx: within the default


def test_local_roots_confine_the_paths_a_manifest_may_name(local: Storage, tmp_path: Path):
    inside, outside = tmp_path / "catalog", tmp_path / "elsewhere"
    inside.mkdir(), outside.mkdir()
    (inside / "a.png").write_bytes(png())
    (outside / "b.png").write_bytes(png())
    os.symlink(outside / "b.png", inside / "link.png")
    limits = InputLimits(local_roots=(str(inside),))
    assert load_image(ImageRef(uri=str(inside / "a.png")), local, "i", limits).size == (40, 32)
    for path in (outside / "b.png", inside / "link.png", inside / ".." / "elsewhere" / "b.png"):
        assert "outside the allowed local roots" in str(
            refused(ImageRef(uri=str(path)), local, limits)
        )


def write_tar(path: Path, members: list[tuple[str, bytes]]) -> str:
    with tarfile.open(path, "w:gz") as tar:
        for name, data in members:
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
    return str(path)


def test_a_webdataset_member_over_budget_fails_its_sample_and_is_not_read(
    local: Storage, tmp_path: Path
):
    big = bytes(4 << 20)  # compresses to a few KB in the .tar.gz
    uri = write_tar(
        tmp_path / "m.tar.gz",
        [
            ("a.json", b'{"prompt": "fine"}'),
            ("b.json", b'{"prompt": "bloated"}'),
            ("b.subject.png", big),
            ("c.json", b'{"prompt": "fine too"}'),
        ],
    )
    assert os.path.getsize(uri) < 100_000
    shard = list_shards(uri, local)[0]
    entries = list(read_shard(shard, local, InputLimits(max_member_bytes=1 << 20)))
    assert [e.id for e in entries if isinstance(e, ManifestItem)] == ["a", "c"]
    (error,) = [e for e in entries if isinstance(e, RowError)]
    assert error.item_id == "b" and error.field == "b.subject.png"
    assert "max_member_bytes" in str(error) and uri in str(error)


def test_unknown_webdataset_members_are_errors_not_empty_items(local: Storage, tmp_path: Path):
    uri = write_tar(
        tmp_path / "m.tar",
        [
            ("x.png.json", b'{"prompt": "p"}'),
            ("x.png.subject.png", png()),
            ("y.json", b'{"prompt": "p"}'),
            ("y.cls", b"3"),
        ],
    )
    entries = list(read_shard(list_shards(uri, local)[0], local))
    assert all(isinstance(e, RowError) for e in entries)
    assert {e.item_id for e in entries} == {"x", "y"}
    assert "x.png.json" in str(entries[0]) and "unknown member" in str(entries[0])
    assert "y.cls" in str(entries[1])
