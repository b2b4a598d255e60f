"""Captions written by an image-to-text model (BLIP, Florence-2, GIT, ...) from transformers.

Two ways to use it:
- in the model actor, beside every result: `caption: model` + `caption_model: <folder>` in the
  run's outputs (`pipeline.processing.captions.make_captioner` builds a `ModelCaptioner`). The caption is
  the sample's `<key>.txt`, the record's `caption` and is part of the config fingerprint.
- as a separate CPU/GPU stage over a finished run, `restyle caption <run>`
  (`pipeline.jobs.caption`), which writes a sidecar `captions/<k>[.retry-<nn>].parquet` for
  each committed shard and never rewrites a committed tar.

The model is any `AutoModelForImageTextToText` checkpoint in a local folder, an s3:// mirror or
"tiny" (`pipeline.weights.aux_models`), loaded in fp32 with the PIL image processor; decoding is greedy
(deterministic). Florence-2 needs a task prompt and gets "<CAPTION>" unless one is given. The
runner calls `caption` from several I/O threads, so generation is serialised by a lock.
"""

from __future__ import annotations

import threading
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from pipeline.weights.aux_models import CAPTIONER, model_folder

DEFAULT_MAX_NEW_TOKENS = 40
TASK_PROMPTS = {"florence2": "<CAPTION>"}  # models that caption only when told to


class ModelCaptioner:
    """`Captioner` (see `pipeline.processing.captions`) backed by an image-to-text model."""

    def __init__(
        self,
        model_dir: str | Path,
        device: str = "cpu",
        prompt: str | None = None,
        max_new_tokens: int = DEFAULT_MAX_NEW_TOKENS,
    ):
        from transformers import AutoConfig, AutoModelForImageTextToText, AutoProcessor

        folder = model_folder(str(model_dir), CAPTIONER)
        self.folder = folder
        self.device = device
        self.max_new_tokens = max_new_tokens
        config = AutoConfig.from_pretrained(folder, local_files_only=True)
        self.prompt = prompt if prompt is not None else TASK_PROMPTS.get(config.model_type)
        self.processor = AutoProcessor.from_pretrained(folder, backend="pil", local_files_only=True)
        try:
            model = AutoModelForImageTextToText.from_pretrained(
                folder, local_files_only=True, use_safetensors=True, dtype=torch.float32
            )
        except ValueError as error:
            raise ValueError(
                f"captioning model {folder}: {config.model_type!r} is not an "
                f"image-to-text model transformers can load ({error})"
            ) from error
        self.model = model.to(device).eval()
        self._lock = threading.Lock()

    def caption(self, fields: dict, image: np.ndarray | Image.Image) -> str:
        return self.caption_images([image])[0]

    def caption_images(self, images: Sequence[np.ndarray | Image.Image]) -> list[str]:
        """Captions of several images in one generate call (the separate stage batches)."""
        pil = [
            (i if isinstance(i, Image.Image) else Image.fromarray(i)).convert("RGB") for i in images
        ]
        kwargs = {"images": pil, "return_tensors": "pt"}
        if self.prompt:
            kwargs["text"] = [self.prompt] * len(pil)
        inputs = self.processor(**kwargs)
        inputs = {k: v.to(self.device) for k, v in inputs.items() if isinstance(v, torch.Tensor)}
        with self._lock, torch.inference_mode():
            tokens = self.model.generate(
                **inputs, max_new_tokens=self.max_new_tokens, do_sample=False, num_beams=1
            )
        if self.prompt and "input_ids" in inputs and not self.model.config.is_encoder_decoder:
            tokens = tokens[:, inputs["input_ids"].shape[1] :]  # decoder-only: drop the prompt
        texts = self.processor.batch_decode(tokens, skip_special_tokens=True)
        return [" ".join(t.split()) for t in texts]
