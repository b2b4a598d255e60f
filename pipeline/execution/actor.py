"""The Ray actor: loads the model once, then processes whole shards handed to it.

One actor per GPU (`num_gpus=1`, so Ray pins it with CUDA_VISIBLE_DEVICES), or CPU-only actors
holding a fraction of a CPU when the cluster has no GPU (a 2-core machine hangs if actors hold
every CPU). An actor given a GPU it cannot use stops with one line (`device.actor_device`).
The actor is threaded (`max_concurrency`) so the driver can queue a second shard (read-ahead,
see `worker.ModelTurns`) and poll progress while a shard runs.
"""

from __future__ import annotations

import logging
import os
import time

import ray

from pipeline.config import EvalSettings, RunConfig
from pipeline.errors import StartError
from pipeline.execution.device import actor_device
from pipeline.execution.logs import configure_logging
from pipeline.execution.metrics import record_actor_start
from pipeline.models.registry import load_model, load_random_model
from pipeline.processing.captions import make_captioner
from pipeline.processing.scratch import actor_scratch
from pipeline.processing.shard import ShardProcessor, ShardTask
from pipeline.processing.style_loras import StyleLoraResolver
from pipeline.storage import Storage, StorageSettings
from pipeline.weights.resolve import local_root, weight_cache_dir

log = logging.getLogger(__name__)

SHARDS_IN_FLIGHT_PER_ACTOR = 2  # one running, one reading ahead


class StylizeActor:
    """Holds one loaded model; `process` runs a shard end to end and returns its marker."""

    def __init__(self, config: RunConfig, storage_settings: StorageSettings):
        configure_logging()  # the driver's level and format, from the actor's environment
        t0 = time.perf_counter()
        self.device = actor_device(config.options.device)
        options = config.options
        if options.device == "auto":
            from dataclasses import replace

            options = replace(options, device=self.device)
        storage = Storage(storage_settings)
        try:
            root = local_root(config.weights, model=config.model, storage=storage)
            self.staging_s = time.perf_counter() - t0
            model = (
                load_random_model(config.model, options)
                if root is None
                else load_model(config.model, root, options)
            )
        except Exception as error:  # loaders raise library types Ray cannot always pickle
            raise StartError(f"{type(error).__name__}: {error}".splitlines()[0]) from None
        self.load_s = time.perf_counter() - t0 - self.staging_s
        record_actor_start(config.model, self.staging_s, self.load_s)
        log.info(
            "actor pid %d loaded %s from %s in %.1f s (weights ready after %.1f s) on %s "
            "(CUDA_VISIBLE_DEVICES=%s)",
            os.getpid(),
            config.model,
            config.weights,
            self.load_s,
            self.staging_s,
            self.device,
            os.environ.get("CUDA_VISIBLE_DEVICES"),
        )
        scratch = actor_scratch()  # its own folder; dead actors' folders are removed first
        scorer = None
        if config.scoring.enabled:
            from pipeline.processing.scoring import make_scorer

            scorer = make_scorer(config.scoring, self.device)
        self.processor = ShardProcessor(
            config,
            model,
            storage,
            make_captioner(config.outputs, self.device),
            StyleLoraResolver(storage, root, weight_cache_dir() / "downloads", config.limits),
            device=self.device,
            scratch_dir=str(scratch),
            scorer=scorer,
        )

    def info(self) -> dict:
        return {
            "pid": os.getpid(),
            "device": self.device,
            "load_s": self.load_s,
            "staging_s": self.staging_s,
            "cuda_visible_devices": os.environ.get("CUDA_VISIBLE_DEVICES"),
            "node": ray.get_runtime_context().get_node_id(),
        }

    def process(self, task: ShardTask):
        return self.processor.process(task)

    def progress(self) -> dict[int, tuple[int, int]]:
        return self.processor.progress.snapshot()


class CaptionActor:
    """Holds one captioning model; `caption_shard` captions a committed shard into its sidecar."""

    def __init__(self, model_spec: str, device: str, storage_settings: StorageSettings):
        from pipeline.processing.caption_model import ModelCaptioner
        from pipeline.processing.caption_shard import ShardCaptioner

        self.device = actor_device(device)
        self.shards = ShardCaptioner(
            ModelCaptioner(model_spec, device=self.device), Storage(storage_settings), model_spec
        )

    def info(self) -> dict:
        return {
            "pid": os.getpid(),
            "device": self.device,
            "node": ray.get_runtime_context().get_node_id(),
        }

    def caption_shard(self, tar_uri: str, out_uri: str) -> int:
        return self.shards.caption_shard(tar_uri, out_uri)


class EvalActor:
    """Holds the metric backbones of one eval; scores committed shards, embeds reference sets."""

    def __init__(self, settings: EvalSettings, device: str, storage_settings: StorageSettings):
        from pipeline.processing.eval_shard import ShardEvaluator
        from pipeline.processing.metric_suite import MetricSuite

        self.device = actor_device(device)
        storage = Storage(storage_settings)
        self.evaluator = ShardEvaluator(MetricSuite(settings, storage, self.device), storage)

    def info(self) -> dict:
        return {
            "pid": os.getpid(),
            "device": self.device,
            "eval": self.evaluator.suite.fingerprint,
            "node": ray.get_runtime_context().get_node_id(),
        }

    def score_shard(self, tar: str, records: str, scores: str, features: str) -> int:
        return self.evaluator.evaluate(tar, records, scores, features)

    def reference_features(self, uris: list[str]) -> dict:
        return self.evaluator.reference_features(uris)
