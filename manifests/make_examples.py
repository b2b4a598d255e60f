"""Regenerate manifests/samples/ and manifests/examples/ deterministically.

    python manifests/make_examples.py

Every image is drawn here with PIL and numpy from fixed seeds (no downloaded content, so the
files carry no third-party licence). The example manifests reference the sample images by
relative URI ("../samples/..."), which resolves against each manifest's own folder, so the
whole manifests/ folder can be copied to a bucket as is.
"""

from __future__ import annotations

import io
import json
import tarfile
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
from PIL import Image, ImageDraw, ImageFilter

HERE = Path(__file__).resolve().parent
SAMPLES = HERE / "samples"
EXAMPLES = HERE / "examples"
INVALID = HERE / "invalid"  # kept apart so examples/ validates clean
SIZE = 192


# ---------------------------------------------------------------------- images
def _gradient(
    top: tuple[int, int, int], bottom: tuple[int, int, int], size=(SIZE, SIZE)
) -> Image.Image:
    t = np.linspace(0.0, 1.0, size[1])[:, None, None]
    rows = (1 - t) * np.array(top) + t * np.array(bottom)
    return Image.fromarray(np.repeat(rows, size[0], axis=1).astype(np.uint8), "RGB")


def subject_figure() -> Image.Image:
    """A simple standing figure on a sky-to-grass background."""
    image = _gradient((150, 200, 240), (90, 160, 80))
    draw = ImageDraw.Draw(image)
    draw.ellipse((80, 30, 112, 62), fill=(240, 200, 170), outline=(60, 40, 30), width=2)
    draw.rectangle((82, 64, 110, 120), fill=(200, 50, 60), outline=(60, 20, 20), width=2)
    draw.line((82, 70, 60, 100), fill=(240, 200, 170), width=6)
    draw.line((110, 70, 132, 100), fill=(240, 200, 170), width=6)
    draw.line((88, 120, 84, 165), fill=(40, 40, 90), width=8)
    draw.line((104, 120, 108, 165), fill=(40, 40, 90), width=8)
    return image


def subject_house() -> Image.Image:
    """A small house with a red roof under a yellow sun."""
    image = _gradient((250, 220, 170), (120, 170, 110))
    draw = ImageDraw.Draw(image)
    draw.ellipse((140, 16, 176, 52), fill=(250, 210, 60))
    draw.rectangle((50, 90, 140, 160), fill=(235, 225, 200), outline=(80, 60, 40), width=2)
    draw.polygon([(40, 92), (95, 45), (150, 92)], fill=(180, 50, 40), outline=(80, 30, 20))
    draw.rectangle((85, 120, 105, 160), fill=(110, 70, 40))
    draw.rectangle((58, 104, 76, 120), fill=(150, 200, 230), outline=(80, 60, 40))
    draw.rectangle((114, 104, 132, 120), fill=(150, 200, 230), outline=(80, 60, 40))
    return image


def subject_cup() -> Image.Image:
    """A product-style shot: a mug on a plain table (160 x 224, portrait)."""
    image = _gradient((235, 235, 240), (200, 195, 190), size=(160, 224))
    draw = ImageDraw.Draw(image)
    draw.ellipse((30, 170, 130, 190), fill=(170, 165, 160))
    draw.rectangle((45, 90, 115, 180), fill=(40, 110, 170), outline=(20, 50, 90), width=2)
    draw.ellipse((45, 82, 115, 98), fill=(30, 80, 130), outline=(20, 50, 90), width=2)
    draw.arc((100, 105, 140, 155), start=-90, end=90, fill=(20, 50, 90), width=6)
    return image


def style_stripes() -> Image.Image:
    """Warm diagonal brush-like stripes."""
    y, x = np.mgrid[0:SIZE, 0:SIZE]
    wave = np.sin((x + y) / 9.0) * 0.5 + 0.5
    palette = np.array([[230, 120, 40], [250, 200, 90], [150, 40, 60]], dtype=float)
    rgb = (wave[..., None] * palette[0] + (1 - wave[..., None]) * palette[1]) * 0.85
    rgb += (np.sin(x / 23.0)[..., None] * 0.15 + 0.15) * palette[2] * 0.3
    return Image.fromarray(np.clip(rgb, 0, 255).astype(np.uint8), "RGB").filter(
        ImageFilter.GaussianBlur(1.2)
    )


def style_dots() -> Image.Image:
    """Pop-art dots on a cyan field."""
    image = Image.new("RGB", (SIZE, SIZE), (40, 190, 200))
    draw = ImageDraw.Draw(image)
    for row in range(0, SIZE + 16, 16):
        for col in range(0, SIZE + 16, 16):
            r = 3 + ((row // 16 + col // 16) % 4)
            cx = col + (8 if (row // 16) % 2 else 0)
            draw.ellipse((cx - r, row - r, cx + r, row + r), fill=(250, 60, 120))
    return image


def style_watercolor() -> Image.Image:
    """Soft blotches of blue and green, like wet watercolor."""
    rng = np.random.default_rng(7)
    noise = rng.random((SIZE // 8, SIZE // 8, 3))
    small = Image.fromarray((noise * 255).astype(np.uint8), "RGB")
    image = small.resize((SIZE, SIZE), Image.Resampling.BICUBIC).filter(ImageFilter.GaussianBlur(6))
    tint = np.asarray(image, dtype=float) * np.array([0.45, 0.75, 0.95]) + np.array([110, 60, 20])
    return Image.fromarray(np.clip(tint, 0, 255).astype(np.uint8), "RGB")


def style_waves() -> Image.Image:
    """Dark concentric rings, ink-like."""
    y, x = np.mgrid[0:SIZE, 0:SIZE]
    rings = np.sin(np.hypot(x - 60, y - 130) / 5.0) > 0.3
    rgb = np.where(rings[..., None], np.array([25, 25, 35]), np.array([235, 228, 210]))
    return Image.fromarray(rgb.astype(np.uint8), "RGB")


SAMPLE_IMAGES = {
    "subject_figure.png": subject_figure,
    "subject_house.jpg": subject_house,
    "subject_cup.png": subject_cup,
    "style_stripes.jpg": style_stripes,
    "style_dots.png": style_dots,
    "style_watercolor.jpg": style_watercolor,
    "style_waves.png": style_waves,
}


def encode(image: Image.Image, name: str) -> bytes:
    out = io.BytesIO()
    if name.endswith(".jpg"):
        image.save(out, "JPEG", quality=85, optimize=True)
    else:
        image.save(out, "PNG", optimize=True)
    return out.getvalue()


# ---------------------------------------------------------------------- manifests
def write_parquet(path: Path, rows: list[dict], schema: pa.Schema) -> None:
    table = pa.Table.from_pylist(rows, schema=schema)
    pq.write_table(table, path, compression="zstd", row_group_size=1000)


USO_SCHEMA = pa.schema(
    [
        ("id", pa.string()),
        ("prompt", pa.string()),
        ("model", pa.string()),
        ("subject", pa.string()),
        ("styles", pa.list_(pa.string())),
        ("seed", pa.int64()),
        ("width", pa.int32()),
        ("height", pa.int32()),
        ("steps", pa.int32()),
        ("guidance", pa.float64()),
        ("category", pa.string()),
    ]
)

USO_ROWS = [
    {
        "id": "uso-figure-stripes",
        "prompt": "A person standing in a sunny garden.",
        "model": "uso",
        "subject": "../samples/subject_figure.png",
        "styles": ["../samples/style_stripes.jpg"],
        "category": "people",
    },
    {
        "id": "uso-lighthouse-dots",
        "prompt": "A lighthouse on a rocky cliff at dusk.",
        "model": "uso",
        "subject": None,
        "styles": ["../samples/style_dots.png"],
        "category": "style-only",
    },
    {
        "id": "uso-house-two-styles",
        "prompt": "A cosy house in the countryside.",
        "model": "uso",
        "subject": "../samples/subject_house.jpg",
        "styles": ["../samples/style_watercolor.jpg", "../samples/style_waves.png"],
        "seed": 1234,
        "width": 768,
        "height": 512,
        "steps": 20,
        "guidance": 4.0,
        "category": "multi-style",
    },
    {
        "id": "uso-cup-subject-only",
        "prompt": "The mug on a marble kitchen counter.",
        "model": "uso",
        "subject": "../samples/subject_cup.png",
        "styles": [],
        "category": "subject-only",
    },
]

OMNI_SCHEMA = pa.schema(
    [
        ("id", pa.string()),
        ("prompt", pa.string()),
        ("model", pa.string()),
        ("subject", pa.string()),
        ("style_lora", pa.string()),
        ("style_lora_scale", pa.float64()),
        ("seed", pa.int64()),
        ("width", pa.int32()),
        ("height", pa.int32()),
    ]
)

OMNI_ROWS = [
    {
        "id": "omni-figure-ghibli",
        "prompt": "Ghibli style, a person standing in a sunny garden",
        "model": "omniconsistency",
        "subject": "../samples/subject_figure.png",
        "style_lora": "Ghibli",
        "style_lora_scale": 1.0,
    },
    {
        "id": "omni-house-pixel",
        "prompt": "Pixel style, a house under the sun",
        "model": "omniconsistency",
        "subject": "../samples/subject_house.jpg",
        "style_lora": "Pixel",
        "style_lora_scale": 1.0,
        "seed": 42,
    },
    {
        "id": "omni-cup-van-gogh",
        "prompt": "Van Gogh style, a blue mug on a table",
        "model": "omniconsistency",
        "subject": "../samples/subject_cup.png",
        "style_lora": "Van_Gogh",
        "style_lora_scale": 0.8,
        "width": 512,
        "height": 704,
    },
]

INLINE_SCHEMA = pa.schema(
    [
        ("id", pa.string()),
        ("prompt", pa.string()),
        ("subject_bytes", pa.binary()),
        ("style_bytes", pa.list_(pa.binary())),
    ]
)

INVALID_ROWS = [  # one mistake per row, for `restyle manifest validate`
    {"id": "ok-row", "prompt": "fine", "subject": "../samples/subject_cup.png", "width": 512},
    {"id": None, "prompt": "no id", "subject": "../samples/subject_cup.png", "width": 512},
    {
        "id": "bad-width",
        "prompt": "width zero",
        "subject": "../samples/subject_cup.png",
        "width": 0,
    },
    {"id": "bad-model", "prompt": "unknown model", "model": "sdxl", "width": None},
    {"id": "bad-scheme", "prompt": "http is not a storage", "subject": "http://example.com/a.jpg"},
    {
        "id": "missing-image",
        "prompt": "file does not exist",
        "subject": "../samples/no_such_image.png",
    },
    {"id": "ok-row", "prompt": "duplicate id", "subject": "../samples/subject_cup.png"},
]

INVALID_SCHEMA = pa.schema(
    [
        ("id", pa.string()),
        ("prompt", pa.string()),
        ("model", pa.string()),
        ("subject", pa.string()),
        ("width", pa.int32()),
    ]
)


def write_tar(path: Path, samples: list[dict]) -> None:
    """A WebDataset shard with fixed member metadata, so the bytes are reproducible."""
    with tarfile.open(path, "w", format=tarfile.USTAR_FORMAT) as tar:
        for sample in samples:
            key = sample["__key__"]
            for suffix, data in sample.items():
                if suffix == "__key__":
                    continue
                info = tarfile.TarInfo(f"{key}.{suffix}")
                info.size, info.mtime, info.mode = len(data), 0, 0o644
                info.uname = info.gname = ""
                tar.addfile(info, io.BytesIO(data))


def main() -> None:
    SAMPLES.mkdir(exist_ok=True)
    (EXAMPLES / "webdataset").mkdir(parents=True, exist_ok=True)
    INVALID.mkdir(exist_ok=True)
    blobs = {}
    for name, draw in SAMPLE_IMAGES.items():
        blobs[name] = encode(draw(), name)
        (SAMPLES / name).write_bytes(blobs[name])

    write_parquet(EXAMPLES / "uso.parquet", USO_ROWS, USO_SCHEMA)
    write_parquet(EXAMPLES / "omniconsistency.parquet", OMNI_ROWS, OMNI_SCHEMA)
    write_parquet(
        EXAMPLES / "uso-inline.parquet",
        [
            {
                "id": "inline-figure-dots",
                "prompt": "A person dancing.",
                "subject_bytes": blobs["subject_figure.png"],
                "style_bytes": [blobs["style_dots.png"]],
            },
        ],
        INLINE_SCHEMA,
    )
    write_parquet(INVALID / "invalid.parquet", INVALID_ROWS, INVALID_SCHEMA)

    def fields(**values) -> bytes:
        return json.dumps(values, sort_keys=True).encode()

    write_tar(
        EXAMPLES / "webdataset" / "uso-000000.tar",
        [
            {
                "__key__": "wds-figure-stripes",
                "json": fields(model="uso", category="people"),
                "txt": b"A person waving hello.",
                "subject.png": blobs["subject_figure.png"],
                "style0.jpg": blobs["style_stripes.jpg"],
            },
            {
                "__key__": "wds-house-two-styles",
                "json": fields(model="uso", seed=7, steps=20),
                "txt": b"A house by a lake.",
                "subject.jpg": blobs["subject_house.jpg"],
                "style0.jpg": blobs["style_watercolor.jpg"],
                "style1.png": blobs["style_waves.png"],
            },
        ],
    )
    write_tar(
        EXAMPLES / "webdataset" / "uso-000001.tar",
        [
            {
                "__key__": "wds-style-only",
                "txt": b"A sailing boat on calm water.",
                "style0.png": blobs["style_dots.png"],
            },
            {
                "__key__": "wds-by-uri",
                "json": fields(
                    id="wds-cup-by-uri",
                    prompt="A mug on a wooden desk.",
                    model="uso",
                    subject="../../samples/subject_cup.png",
                    styles=["../../samples/style_stripes.jpg"],
                ),
            },
        ],
    )
    total = sum(p.stat().st_size for p in HERE.rglob("*") if p.is_file() and p.suffix != ".py")
    print(
        f"wrote {SAMPLES.relative_to(HERE.parent)}/ and {EXAMPLES.relative_to(HERE.parent)}/ "
        f"({total / 1024:.0f} KiB)"
    )


if __name__ == "__main__":
    main()
