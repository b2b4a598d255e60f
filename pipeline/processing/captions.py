"""Captions written beside every result (`<key>.txt`).

Sources: the item's prompt (default), or a `str.format` template over the item's fields
(id, prompt, model, style_lora and any extra manifest column). A captioning model is a separate
stage (see `pipeline.processing.caption_model`) and plugs in through the same `Captioner` interface.
"""

from __future__ import annotations

import string
from typing import Protocol

import numpy as np

from pipeline.config import OutputOptions


class Captioner(Protocol):
    def caption(self, fields: dict, image: np.ndarray) -> str:
        """Caption for one result; `fields` are the item's manifest fields."""


class PromptCaptioner:
    """The prompt itself (what the model was asked for)."""

    def caption(self, fields: dict, image: np.ndarray) -> str:
        return fields.get("prompt") or ""


class TemplateCaptioner:
    """`str.format` over the item's fields, e.g. "{prompt}, {style_lora} style"."""

    def __init__(self, template: str):
        if not template:
            raise ValueError("caption template is empty")
        self.template = template
        self.fields = {name for _, name, _, _ in string.Formatter().parse(template) if name}

    def check(self, fields: dict) -> None:
        """Raise when the item lacks a field the template names: called before the model runs,
        so such an item costs no generation."""
        missing = self.fields - fields.keys()
        if missing:
            raise KeyError(
                f"caption template needs field(s) {sorted(missing)} "
                f"that the item does not have (it has {sorted(fields)})"
            )

    def caption(self, fields: dict, image: np.ndarray) -> str:
        self.check(fields)
        values = {k: ("" if v is None else v) for k, v in fields.items()}
        return self.template.format(**values)


def make_captioner(options: OutputOptions, device: str = "cpu") -> Captioner:
    if options.caption == "prompt":
        return PromptCaptioner()
    if options.caption == "template":
        return TemplateCaptioner(options.caption_template)
    if options.caption == "model":
        from pipeline.processing.caption_model import ModelCaptioner

        return ModelCaptioner(options.caption_model, device=device)
    raise ValueError(f"unknown caption source {options.caption!r}; use prompt, template or model")
