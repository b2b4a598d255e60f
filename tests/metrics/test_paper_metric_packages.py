"""DreamSim and Inception-FID: restyle's numbers against the packages that define them.

The two metrics whose reference is a package, not a formula: DreamSim is the `dreamsim`
package's ensemble (DINO + CLIP + OpenCLIP ViT-B/16 with the authors' LoRA) and FID's standard
backbone is torch-fidelity's Inception-v3 through torchmetrics. The weights are full-size random
copies of the releases (pipeline/weights/random_paper_metrics.py): the numbers mean nothing;
every tensor goes through the packages' own code. Slow: ~1 GB of weights, ViT-B and
Inception-v3 at full size on the CPU.
"""

from __future__ import annotations

import time

import numpy as np
import pytest
import ray
import torch
from PIL import Image
from support.committed_run import write_run
from support.pictures import pictures

from pipeline.config import EvalSettings, MetricModels
from pipeline.jobs.eval import eval_run
from pipeline.metrics.fid import as_uint8_batch, fid_backbone, frechet_distance
from pipeline.outputs.run_layout import committed
from pipeline.outputs.run_state import RunState
from pipeline.outputs.scores import read_scores
from pipeline.processing.metric_suite import MetricSuite, Sample
from pipeline.storage import Storage
from pipeline.storage.settings import StorageSettings
from pipeline.weights.random_paper_metrics import build_random_dreamsim, build_random_inception

pytestmark = pytest.mark.slow

SHARDS = {0: ["cup", "house", "lamp"], 1: ["tree", "boat"]}


def blobs(count: int, seed: int, size=(64, 48)) -> list[Image.Image]:
    """Smooth colour fields: unlike pixel noise, which pools to the same features whatever
    the seed, they give an Inception's pooled features something to tell apart."""
    rng = np.random.default_rng(seed)
    return [
        Image.fromarray(rng.integers(0, 255, (3, 4, 3), dtype=np.uint8)).resize(
            size, Image.Resampling.BILINEAR
        )
        for _ in range(count)
    ]


@pytest.fixture(scope="module")
def releases(tmp_path_factory):
    root = tmp_path_factory.mktemp("releases")
    return build_random_dreamsim(root / "dreamsim"), build_random_inception(root / "inception")


@pytest.fixture(scope="module")
def package_dreamsim(releases):
    from dreamsim import dreamsim

    model, preprocess = dreamsim(pretrained=True, device="cpu", cache_dir=str(releases[0]))
    return model, preprocess


def package_distance(package_dreamsim, a: Image.Image, b: Image.Image) -> float:
    """The package's README usage: `model(preprocess(a), preprocess(b))`."""
    model, preprocess = package_dreamsim
    with torch.no_grad():
        return float(model(preprocess(a), preprocess(b)))


def torchmetrics_fid(weights: str, results, reference) -> float:
    """torchmetrics' FID with the standard Inception on all images at once, fed the 299x299
    uint8 batches restyle's FID sees (it resizes every image to 299 first, as clean-fid)."""
    from torchmetrics.image.fid import FrechetInceptionDistance

    metric = FrechetInceptionDistance(feature=2048, feature_extractor_weights_path=weights)
    metric.update(as_uint8_batch(reference, 299), real=True)
    metric.update(as_uint8_batch(results, 299), real=False)
    return float(metric.compute())


def test_dreamsim_scores_equal_the_dreamsim_package(releases, package_dreamsim, tmp_path):
    results, subjects, styles = pictures(3, 1), pictures(3, 2, (80, 60)), pictures(3, 3)
    settings = EvalSettings(
        metrics=["dreamsim", "dreamsim_style"], models=MetricModels(dreamsim=str(releases[0]))
    )
    suite = MetricSuite(settings, Storage(StorageSettings()))
    rows = suite.score(
        [Sample(str(i), str(i), results[i], subjects[i], styles[i]) for i in range(len(results))]
    )
    for i, row in enumerate(rows):
        content = package_distance(package_dreamsim, results[i], subjects[i])
        style = package_distance(package_dreamsim, results[i], styles[i])
        print(
            f"pair {i}: dreamsim restyle {row['dreamsim']:.7f} package {content:.7f}; "
            f"dreamsim_style restyle {row['dreamsim_style']:.7f} package {style:.7f}"
        )
        assert row["dreamsim"] == pytest.approx(content, rel=1e-4, abs=1e-6)
        assert row["dreamsim_style"] == pytest.approx(style, rel=1e-4, abs=1e-6)
    assert len({round(r["dreamsim"], 6) for r in rows}) == 3  # they look at the pictures
    # the folder's sha256 (provenance, the score files' fingerprint) survives the package's
    # first load: torch.hub's bytecode and trusted_list are not hashed
    assert MetricSuite(settings, Storage(StorageSettings())).fingerprint == suite.fingerprint


def test_inception_fid_from_sharded_features_equals_torchmetrics(releases):
    weights = str(next(releases[1].glob("pt_inception-*.pth")))
    results, reference = blobs(7, 4), blobs(9, 5, (72, 40))
    theirs = torchmetrics_fid(weights, results, reference)
    backbone = fid_backbone(releases[1])
    ours = frechet_distance(
        [backbone(as_uint8_batch(s, 299)) for s in (results[:3], results[3:])],
        [backbone(as_uint8_batch(s, 299)) for s in (reference[:4], reference[4:])],
        2048,
    )
    print(f"Inception FID restyle {ours:.6f} torchmetrics {theirs:.6f}")
    assert ours == pytest.approx(theirs, rel=1e-5)
    assert theirs > 0


def test_restyle_eval_with_the_paper_packages(releases, package_dreamsim, tmp_path, private_caches):
    """`restyle eval` end to end on Ray actors: every stored DreamSim score is the package's
    number for that item, and the run's FID is torchmetrics' over all results at once."""
    storage = Storage(StorageSettings())
    run_uri = str(tmp_path / "run")
    images = write_run(storage, run_uri, SHARDS, failed={1: "broken"})
    reference = blobs(6, 6)
    (tmp_path / "reference").mkdir()
    for i, picture in enumerate(reference):
        picture.save(tmp_path / "reference" / f"r{i}.png")
    settings = EvalSettings(
        metrics=["dreamsim", "dreamsim_style", "fid"],
        models=MetricModels(dreamsim=str(releases[0]), fid=str(releases[1])),
        reference=str(tmp_path / "reference"),
    )
    ray.init(address="local", num_cpus=2, num_gpus=0, include_dashboard=False, log_to_driver=False)
    try:
        started = time.perf_counter()
        summary = eval_run(run_uri, settings, StorageSettings(), actors=1, device="cpu")
        seconds = time.perf_counter() - started
    finally:
        ray.shutdown()
    print(f"eval of {summary.items_scored} items: {seconds:.1f} s wall (Ray start excluded)")
    assert (summary.shards_scored, summary.items_scored, summary.exit_code) == (2, 5, 0)

    stored = {}
    for files in committed(RunState(storage, run_uri)):
        stored.update({row["id"]: row for row in read_scores(storage, files.scores)})
    assert sorted(stored) == sorted(i for ids in SHARDS.values() for i in ids)
    for item, row in stored.items():
        result, subject, style = (
            Image.fromarray(images[item][role]) for role in ("result", "subject", "style")
        )
        assert row["dreamsim"] == pytest.approx(
            package_distance(package_dreamsim, result, subject), rel=1e-4, abs=1e-6
        )
        assert row["dreamsim_style"] == pytest.approx(
            package_distance(package_dreamsim, result, style), rel=1e-4, abs=1e-6
        )
    results = [Image.fromarray(images[i]["result"]) for i in sorted(stored)]
    weights = str(next(releases[1].glob("pt_inception-*.pth")))
    theirs = torchmetrics_fid(weights, results, reference)
    print(f"run FID restyle {summary.sets['fid']:.6f} torchmetrics {theirs:.6f}")
    assert summary.sets["fid"] == pytest.approx(theirs, rel=1e-4)
