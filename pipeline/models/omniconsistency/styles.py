"""The 22 style LoRAs OmniConsistency ships, and their trigger phrases.

This module is the one place that decides whether a LoRA is one of them (by name or by its
shipped file name) and what their files are called; the weights build and the style LoRA
resolver of `pipeline.processing` ask it.

The authors' demo (app.py `update_trigger_word`) puts "<Name with _ as spaces> style," in front
of the prompt when one of these styles is chosen, after removing any other shipped style's
trigger. We do the same when a request's style LoRA is one of them, named either by its name
("Van_Gogh") or by its shipped file (`Van_Gogh_rank128_bf16.safetensors`). Other LoRAs get no
trigger: their users write their own trigger words, as the demo tells them to.
"""

from __future__ import annotations

from pathlib import Path

SHIPPED_STYLES = (
    "3D_Chibi",
    "American_Cartoon",
    "Chinese_Ink",
    "Clay_Toy",
    "Fabric",
    "Ghibli",
    "Irasutoya",
    "Jojo",
    "LEGO",
    "Line",
    "Macaron",
    "Oil_Painting",
    "Origami",
    "Paper_Cutting",
    "Picasso",
    "Pixel",
    "Poly",
    "Pop_Art",
    "Rick_Morty",
    "Snoopy",
    "Van_Gogh",
    "Vector",
)
SHIPPED_FILE_SUFFIX = "_rank128_bf16.safetensors"  # LoRAs/<Name>_rank128_bf16.safetensors


def shipped_file_name(style: str) -> str:
    """ "Ghibli" -> "Ghibli_rank128_bf16.safetensors", the name the authors ship the file under."""
    return style + SHIPPED_FILE_SUFFIX


def style_name_of(path: Path | str) -> str:
    """The name a LoRA file goes by: without the shipped suffix when it has it, else its stem."""
    name = Path(path).name
    return (
        name[: -len(SHIPPED_FILE_SUFFIX)] if name.endswith(SHIPPED_FILE_SUFFIX) else Path(path).stem
    )


def trigger_phrase(style: str) -> str:
    """ "Van_Gogh" -> "Van Gogh style," (the demo's spelling, without the trailing space)."""
    return " ".join(style.split("_")) + " style,"


def shipped_style(name: str | None, path: Path | str | None = None) -> str | None:
    """The canonical shipped style a LoRA refers to, by name or by shipped file name, else None."""
    candidates = []
    if name:
        candidates.append(name)
    if path is not None and Path(path).name.endswith(SHIPPED_FILE_SUFFIX):
        candidates.append(style_name_of(path))
    for candidate in candidates:
        if candidate in SHIPPED_STYLES:
            return candidate
    return None


def with_trigger(prompt: str, style: str | None) -> str:
    """`prompt` starting with `style`'s trigger ("Ghibli style, ..."); unchanged if style is None.

    A leading trigger of any shipped style is replaced, so a prompt is never double-prefixed.
    """
    if style is None:
        return prompt
    text = prompt.lstrip()
    for other in SHIPPED_STYLES:
        if text.startswith(trigger_phrase(other)):
            text = text[len(trigger_phrase(other)) :].lstrip()
            break
    return f"{trigger_phrase(style)} {text}" if text else trigger_phrase(style)
