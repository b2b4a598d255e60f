"""Write the two small demo catalogs the example specs use (run from anywhere).

    python jobs/examples/make_catalogs.py

catalogs/subjects.parquet  id, subject, prompt, category: the sample subjects of manifests/samples
catalogs/styles.parquet    id, name, styles (a reference picture), style_lora (+ scale): a style
                           usable by both USO (the picture) and OmniConsistency (the LoRA)
Image URIs are relative to the catalog files, so the folder can be copied or uploaded as is.
"""

from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq

HERE = Path(__file__).resolve().parent
SAMPLES = "../../../manifests/samples"

SUBJECTS = [
    {
        "id": "cup",
        "subject": f"{SAMPLES}/subject_cup.png",
        "prompt": "A mug on a kitchen table.",
        "category": "kitchen",
    },
    {
        "id": "figure",
        "subject": f"{SAMPLES}/subject_figure.png",
        "prompt": "A person standing in a garden.",
        "category": "people",
    },
    {
        "id": "house",
        "subject": f"{SAMPLES}/subject_house.jpg",
        "prompt": "A house in the countryside.",
        "category": "buildings",
    },
]
STYLES = [
    {
        "id": "dots",
        "name": "Dots",
        "styles": [f"{SAMPLES}/style_dots.png"],
        "style_lora": "Pop_Art",
        "style_lora_scale": 1.0,
    },
    {
        "id": "stripes",
        "name": "Stripes",
        "styles": [f"{SAMPLES}/style_stripes.jpg"],
        "style_lora": "Line",
        "style_lora_scale": 1.0,
    },
    {
        "id": "watercolor",
        "name": "Watercolor",
        "styles": [f"{SAMPLES}/style_watercolor.jpg"],
        "style_lora": "Chinese_Ink",
        "style_lora_scale": 0.8,
    },
    {
        "id": "waves",
        "name": "Waves",
        "styles": [f"{SAMPLES}/style_waves.png"],
        "style_lora": "Van_Gogh",
        "style_lora_scale": 1.0,
    },
]


def main() -> None:
    folder = HERE / "catalogs"
    folder.mkdir(exist_ok=True)
    pq.write_table(pa.Table.from_pylist(SUBJECTS), folder / "subjects.parquet")
    pq.write_table(pa.Table.from_pylist(STYLES), folder / "styles.parquet")
    print(f"wrote {folder}/subjects.parquet and styles.parquet")


if __name__ == "__main__":
    main()
