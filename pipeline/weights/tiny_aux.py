"""Tiny random-weight auxiliary models: CLIP, BLIP captioner, DINO and CSD, built locally.

Scoring (`pipeline.processing.scoring`) and model captions (`pipeline.processing.caption_model`) load transformers
folders; tests and demos need such folders without the Hub. These builders write real
`save_pretrained` folders of the real classes at tiny sizes, with tokenizers and image
processors built on this machine:

    build_tiny_clip(folder)       CLIPModel (text + vision towers, projections) + CLIPProcessor
                                  (the CLIP BPE tokenizer of `tiny_tokenizers`, PIL image processor)
    build_tiny_captioner(folder)  BlipForConditionalGeneration + BlipProcessor (a BERT WordPiece
                                  tokenizer over the same small corpus, "[DEC]" as BLIP's BOS)
    build_tiny_dino(folder)       ViTModel (DINO's architecture) + ViTImageProcessor
    build_tiny_csd(folder)        CLIPVisionModel + CLIPImageProcessor + csd_heads.safetensors
                                  (CSD's style and content heads, pipeline.metrics.csd)

Both are deterministic (same seed, same bytes) and idempotent: a folder that already holds a
complete build of the same kind and seed (its `tiny_aux.json` marker) is reused as is. The
pictures they "see" are meaningless, but every tensor goes through the real code path.
"""

from __future__ import annotations

import hashlib
import re
from pathlib import Path

import torch

from pipeline.models.flux import tiny_tokenizers
from pipeline.weights.atomic_build import build_seeded
from pipeline.weights.tiny import randomize_module

MARKER = "tiny_aux.json"
BUILD_FORMAT = 1
IMAGE_SIZE = 32  # both vision towers: 32x32 pixels, 8x8 patches -> 16 patch tokens

TINY_CLIP_TEXT = dict(
    hidden_size=32,
    intermediate_size=64,
    num_hidden_layers=2,
    num_attention_heads=4,
    max_position_embeddings=77,
    hidden_act="quick_gelu",
)
TINY_CLIP_VISION = dict(
    hidden_size=32,
    intermediate_size=64,
    num_hidden_layers=2,
    num_attention_heads=4,
    image_size=IMAGE_SIZE,
    patch_size=8,
    hidden_act="quick_gelu",
)
TINY_CLIP_PROJECTION = 16

TINY_BLIP_TEXT = dict(
    hidden_size=32,
    intermediate_size=64,
    num_hidden_layers=2,
    num_attention_heads=4,
    max_position_embeddings=64,
    encoder_hidden_size=32,
)
TINY_BLIP_VISION = dict(
    hidden_size=32,
    intermediate_size=64,
    num_hidden_layers=2,
    num_attention_heads=4,
    image_size=IMAGE_SIZE,
    patch_size=8,
)

BLIP_MATRIX_STD = 0.5
BERT_SPECIALS = ("[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]")
BLIP_BOS = "[DEC]"  # BLIP's decoder start token, added to BERT's vocabulary like the release


def _generator(seed: int, name: str) -> torch.Generator:
    digest = hashlib.sha256(f"tiny-aux:{seed}:{name}".encode()).digest()
    return torch.Generator().manual_seed(int.from_bytes(digest[:8], "big"))


def build_tiny_clip(folder: Path, seed: int = 0) -> Path:
    """A tiny `CLIPModel` + `CLIPProcessor` folder at `folder` (reused when already built)."""
    return _build(Path(folder), "clip", seed, _write_clip)


def build_tiny_captioner(folder: Path, seed: int = 0) -> Path:
    """A tiny `BlipForConditionalGeneration` + `BlipProcessor` folder (reused when built)."""
    return _build(Path(folder), "blip", seed, _write_blip)


def _write_clip(folder: Path, seed: int) -> None:
    from transformers import CLIPConfig, CLIPImageProcessorPil, CLIPModel, CLIPProcessor

    tokenizer = tiny_tokenizers.build_clip_tokenizer()
    config = CLIPConfig(
        text_config=dict(
            **TINY_CLIP_TEXT,
            vocab_size=len(tokenizer),
            bos_token_id=tokenizer.bos_token_id,
            eos_token_id=tokenizer.eos_token_id,
            pad_token_id=tokenizer.pad_token_id,
        ),
        vision_config=TINY_CLIP_VISION,
        projection_dim=TINY_CLIP_PROJECTION,
    )
    model = randomize_module(CLIPModel(config), _generator(seed, "clip")).eval()
    processor = CLIPProcessor(
        image_processor=CLIPImageProcessorPil(
            size={"shortest_edge": IMAGE_SIZE},
            crop_size={"height": IMAGE_SIZE, "width": IMAGE_SIZE},
        ),
        tokenizer=tokenizer,
    )
    model.save_pretrained(folder)
    processor.save_pretrained(folder)


def build_tiny_dino(folder: Path, seed: int = 0) -> Path:
    """A tiny DINO-shaped `ViTModel` + `ViTImageProcessor` folder (reused when built)."""
    return _build(Path(folder), "dino", seed, _write_dino)


def build_tiny_csd(folder: Path, seed: int = 0) -> Path:
    """A tiny CSD folder: `CLIPVisionModel` + processor + style/content heads."""
    return _build(Path(folder), "csd", seed, _write_csd)


def _write_dino(folder: Path, seed: int) -> None:
    from transformers import ViTConfig, ViTImageProcessorPil, ViTModel

    config = ViTConfig(
        hidden_size=32,
        intermediate_size=64,
        num_hidden_layers=2,
        num_attention_heads=4,
        image_size=IMAGE_SIZE,
        patch_size=8,
    )
    model = ViTModel(config, add_pooling_layer=False)
    randomize_module(model, _generator(seed, "dino"))
    processor = ViTImageProcessorPil(
        size={"height": IMAGE_SIZE, "width": IMAGE_SIZE},
        image_mean=[0.485, 0.456, 0.406],
        image_std=[0.229, 0.224, 0.225],
    )
    model.save_pretrained(folder)
    processor.save_pretrained(folder)


def _write_csd(folder: Path, seed: int) -> None:
    from safetensors.torch import save_file
    from transformers import CLIPImageProcessorPil, CLIPVisionConfig, CLIPVisionModel

    model = CLIPVisionModel(CLIPVisionConfig(**TINY_CLIP_VISION))
    randomize_module(model, _generator(seed, "csd"))
    gen = _generator(seed, "csd-heads")
    width = int(TINY_CLIP_VISION["hidden_size"])  # type: ignore[call-overload]  # dict of mixed values
    heads = {
        name: torch.randn(width, TINY_CLIP_PROJECTION, generator=gen) / width**0.5
        for name in ("style", "content")
    }
    model.save_pretrained(folder)
    CLIPImageProcessorPil(
        size={"shortest_edge": IMAGE_SIZE}, crop_size={"height": IMAGE_SIZE, "width": IMAGE_SIZE}
    ).save_pretrained(folder)
    save_file(heads, str(folder / "csd_heads.safetensors"))


def bert_vocab() -> list[str]:
    """A WordPiece vocabulary over the tiny corpus: specials, single characters (plain and as
    "##" continuations, so no word is ever unknown), then every lower-cased corpus word."""
    words: set[str] = set()
    for line in tiny_tokenizers.CORPUS:
        words.update(re.findall(r"\w+|[^\w\s]", line.lower()))
    chars = sorted({c for w in words for c in w})
    return [
        *BERT_SPECIALS,
        BLIP_BOS,
        *chars,
        *(f"##{c}" for c in chars),
        *sorted(w for w in words if len(w) > 1),
    ]


def _write_blip(folder: Path, seed: int) -> None:
    from transformers import (
        BertTokenizer,
        BlipConfig,
        BlipForConditionalGeneration,
        BlipImageProcessorPil,
        BlipProcessor,
    )

    vocab = bert_vocab()
    tokenizer = BertTokenizer(
        vocab={token: i for i, token in enumerate(vocab)}, bos_token=BLIP_BOS, model_max_length=64
    )
    config = BlipConfig(
        text_config=dict(
            **TINY_BLIP_TEXT,
            vocab_size=len(vocab),
            bos_token_id=vocab.index(BLIP_BOS),
            pad_token_id=vocab.index("[PAD]"),
            sep_token_id=vocab.index("[SEP]"),
            eos_token_id=vocab.index("[SEP]"),
        ),
        vision_config=TINY_BLIP_VISION,
        projection_dim=TINY_CLIP_PROJECTION,
    )
    model = BlipForConditionalGeneration(config)
    randomize_module(model, _generator(seed, "blip"))
    _widen(model, _generator(seed, "blip-decoder"), BLIP_MATRIX_STD)
    processor = BlipProcessor(
        image_processor=BlipImageProcessorPil(size={"height": IMAGE_SIZE, "width": IMAGE_SIZE}),
        tokenizer=tokenizer,
    )
    model.save_pretrained(folder)
    processor.save_pretrained(folder)


def _widen(model: torch.nn.Module, gen: torch.Generator, std: float) -> None:
    """Redraw weight matrices with a larger spread: at the usual small init a tiny decoder
    repeats one token whatever it sees; at this spread its captions depend on the image."""
    with torch.no_grad():
        for _, param in model.named_parameters():
            if param.dim() >= 2:
                param.copy_(std * torch.randn(param.shape, generator=gen))


def _build(folder: Path, kind: str, seed: int, write) -> Path:
    """Build `folder` once, crash- and concurrency-safe (see `build_seeded`)."""
    return build_seeded(folder, MARKER, kind, seed, BUILD_FORMAT, write, f"tiny {kind}")
