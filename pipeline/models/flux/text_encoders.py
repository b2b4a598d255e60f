"""The FLUX prompt encoder shared by USO and OmniConsistency: T5 v1.1 XXL + CLIP-L.

Both authors' codes encode a prompt the same way, and this module reproduces exactly that:
- CLIP-L (`CLIPTextModel` + `CLIPTokenizer`): padding "max_length" to 77, truncation, no
  attention mask, `pooler_output` -> the pooled vector [1, 768] that FLUX calls `vec`/`y`.
- T5 v1.1 XXL encoder (`T5EncoderModel` + T5 tokenizer): padding "max_length" to
  `max_sequence_length` (512), truncation, NO attention mask, `last_hidden_state` ->
  [1, 512, 4096], FLUX's `txt`. Pad tokens are encoded and attended to, as in the reference.
The empty prompt "" is legal (USO's layout-preserved stylization uses it).

Why a class and not a function: a batch shard repeats prompts (a nightly run often uses one
prompt per style), and T5-XXL is the most expensive thing outside the denoising loop, so the
embeddings of recent prompts are kept in an LRU cache on the target device. Cached tensors cost
512*4096*2 bytes = 4 MiB each in bf16 at full size; `cache_size` bounds that.

Memory: T5-XXL is ~9.5 GB in bf16. With `offload=True` the encoders stay on the CPU and move to
the accelerator only for the duration of an encode (what the authors' `--offload` does);
`free()` drops them for good once every prompt of a job is cached.

Weights come only from local transformers folders (`FluxFiles.t5`, `.t5_tokenizer`, `.clip`,
`.clip_tokenizer`, which also resolve a FLUX.1-dev snapshot's text_encoder_2/tokenizer_2 and
text_encoder/tokenizer), never from the Hub.
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import TypeVar

import torch
from transformers import (
    CLIPTextConfig,
    CLIPTextModel,
    CLIPTokenizer,
    PreTrainedModel,
    PreTrainedTokenizerBase,
    T5Config,
    T5EncoderModel,
    T5Tokenizer,
)

from pipeline.errors import WeightFileError
from pipeline.models.architecture import architecture
from pipeline.models.flux import tiny_tokenizers
from pipeline.models.runtime import random_init, resident
from pipeline.models.weight_layout import FluxFiles

CLIP_MAX_LENGTH = 77  # CLIP-L's context, used by both references
T5_MAX_LENGTH = 512  # FLUX.1-dev's max_sequence_length (the references' default and maximum)

_Loaded = TypeVar("_Loaded")
_Model = TypeVar("_Model", bound=PreTrainedModel)  # a transformers model class's instances


def _load_local(folder: Path, what: str, loader: Callable[[], _Loaded]) -> _Loaded:
    """Run a transformers `from_pretrained` on a local folder; any failure -> WeightFileError."""
    if not folder.is_dir():
        raise WeightFileError(folder, f"{what} folder does not exist")
    try:
        return loader()
    except Exception as exc:  # transformers raises OSError/ValueError/SafetensorError/...
        raise WeightFileError(folder, f"cannot load {what}: {type(exc).__name__}: {exc}") from exc


def _load_model_strictly(
    model_class: type[_Model], folder: Path, dtype: torch.dtype, what: str
) -> _Model:
    """`from_pretrained` that refuses missing or mis-shaped weights.

    transformers 5 only logs missing keys and initialises them randomly; a wrong or partial
    checkpoint must fail here instead. Unexpected keys are allowed: full checkpoints such as
    google/t5-v1_1-xxl (with a decoder) or openai/clip-vit-large-patch14 (with a vision tower)
    are legitimately loaded into their encoder-only classes.
    """
    model, info = _load_local(
        folder,
        what,
        lambda: model_class.from_pretrained(
            folder,
            dtype=dtype,
            local_files_only=True,
            use_safetensors=True,  # never a pickle, not even weights-only
            output_loading_info=True,
        ),
    )
    missing = sorted(info.get("missing_keys") or ())
    mismatched = sorted(str(k) for k in info.get("mismatched_keys") or ())
    if missing:
        raise WeightFileError(folder, f"{what} checkpoint lacks weights", missing)
    if mismatched:
        raise WeightFileError(folder, f"{what} checkpoint has mis-shaped weights", mismatched)
    return model


def _check_vocab(
    model: PreTrainedModel,
    tokenizer: PreTrainedTokenizerBase,
    model_dir: Path,
    tokenizer_dir: Path,
    what: str,
) -> None:
    """A tokenizer that emits ids past the embedding table would fail later, mid-batch."""
    if len(tokenizer) > model.config.vocab_size:
        raise WeightFileError(
            tokenizer_dir,
            f"{what} tokenizer has {len(tokenizer)} tokens but "
            f"the model in {model_dir} has vocab_size "
            f"{model.config.vocab_size}",
        )


class FluxTextEncoders:
    """T5 + CLIP prompt encoder with a per-prompt LRU cache of embeddings.

    Contract: `encode(prompt)` -> (t5 [1, L, D_t5], pooled [1, D_clip]) and
    `encode_many(prompts)` -> ([B, L, D_t5], [B, D_clip]), on `device` in `dtype`, with
    L = `max_sequence_length`. The returned tensors are fresh copies (the cache cannot be
    corrupted by a caller). Each distinct prompt is encoded once while it stays in the cache.
    Direct construction takes models already in `dtype` (`load`/`random` do that).
    """

    def __init__(
        self,
        t5: T5EncoderModel,
        t5_tokenizer: PreTrainedTokenizerBase,
        clip: CLIPTextModel,
        clip_tokenizer: PreTrainedTokenizerBase,
        device: torch.device,
        dtype: torch.dtype,
        max_sequence_length: int = T5_MAX_LENGTH,
        cache_size: int = 32,
        offload: bool = False,
        batch_size: int = 8,
    ):
        if not 1 <= max_sequence_length <= T5_MAX_LENGTH:
            raise ValueError(
                f"max_sequence_length must be in [1, {T5_MAX_LENGTH}], got {max_sequence_length}"
            )
        if clip.config.max_position_embeddings < CLIP_MAX_LENGTH:
            raise ValueError(
                f"CLIP text model has {clip.config.max_position_embeddings} "
                f"positions, needs {CLIP_MAX_LENGTH}"
            )
        self.device = torch.device(device)
        self.dtype = dtype
        self.max_sequence_length = max_sequence_length
        self.cache_size = cache_size
        self.offload = offload
        self.batch_size = batch_size
        self.t5_tokenizer = t5_tokenizer
        self.clip_tokenizer = clip_tokenizer
        self._t5: T5EncoderModel | None = t5.eval().requires_grad_(False)
        self._clip: CLIPTextModel | None = clip.eval().requires_grad_(False)
        # Models arrive in `dtype` from their loader; only the device changes here, so that
        # transformers' own dtype plan (e.g. T5's fp32 `wo` under fp16) is kept.
        self._move(torch.device("cpu") if offload else self.device)
        self._cache: OrderedDict[str, tuple[torch.Tensor, torch.Tensor]] = OrderedDict()
        self.encoded_prompts = 0  # prompts actually run through the encoders (cache misses)
        self.cache_hits = 0

    # ----------------------------------------------------------------------------- loading
    @classmethod
    def load(
        cls,
        files: FluxFiles,
        device: torch.device,
        dtype: torch.dtype,
        max_sequence_length: int = T5_MAX_LENGTH,
        cache_size: int = 32,
        offload: bool = False,
    ) -> FluxTextEncoders:
        """Load both encoders and tokenizers from the local folders named by `files`.

        A missing or corrupt folder raises `WeightFileError` naming that folder. Models are
        read on the CPU in `dtype`, then moved to `device` (or kept on the CPU if `offload`).
        """
        t5 = _load_model_strictly(T5EncoderModel, files.t5, dtype, "T5 encoder")
        t5_tokenizer = _load_local(
            files.t5_tokenizer,
            "T5 tokenizer",
            lambda: T5Tokenizer.from_pretrained(files.t5_tokenizer, local_files_only=True),
        )
        clip = _load_model_strictly(CLIPTextModel, files.clip, dtype, "CLIP text encoder")
        clip_tokenizer = _load_local(
            files.clip_tokenizer,
            "CLIP tokenizer",
            lambda: CLIPTokenizer.from_pretrained(files.clip_tokenizer, local_files_only=True),
        )
        _check_vocab(t5, t5_tokenizer, files.t5, files.t5_tokenizer, "T5")
        _check_vocab(clip, clip_tokenizer, files.clip, files.clip_tokenizer, "CLIP")
        return cls(
            t5,
            t5_tokenizer,
            clip,
            clip_tokenizer,
            device,
            dtype,
            max_sequence_length=max_sequence_length,
            cache_size=cache_size,
            offload=offload,
        )

    @classmethod
    def random(
        cls,
        size: str = "full",
        device: torch.device | str = "cpu",
        dtype: torch.dtype = torch.bfloat16,
        max_sequence_length: int = T5_MAX_LENGTH,
        seed: int = 0,
        offload: bool = False,
        **kwargs,
    ) -> FluxTextEncoders:
        """Random-weight encoders with the real architectures, built directly where they live
        (`device`, or the CPU with `offload`).

        For speed benchmarks only: the T5/CLIP configs of `size` in
        `pipeline.models.architecture` ("full" is T5 v1.1 XXL + CLIP-L, ~4.8B params; "small"
        and "tiny" share the tiny encoders). The tokenizers are the locally trained ones of
        `tiny_tokenizers` (nothing comes from the Hub); their vocabularies are smaller than the
        real ones, so every id is valid for the full-size embedding tables. Token counts differ
        from the real tokenizers', which does not change the cost: T5 always runs on
        `max_sequence_length` tokens and CLIP on 77.
        """
        arch = architecture(size)
        clip_tokenizer = tiny_tokenizers.build_clip_tokenizer()
        t5_tokenizer = tiny_tokenizers.build_t5_tokenizer()
        t5_config = {"vocab_size": len(t5_tokenizer), **arch.t5}
        clip_config = {
            "vocab_size": len(clip_tokenizer),
            **arch.clip_text,
            "bos_token_id": clip_tokenizer.bos_token_id,
            "eos_token_id": clip_tokenizer.eos_token_id,
            "pad_token_id": clip_tokenizer.pad_token_id,
        }
        device = torch.device(device)
        home = torch.device("cpu") if offload else device
        with random_init(home, seed):
            # _from_config(dtype=...) initialises directly in `dtype`: no fp32 copy of T5-XXL
            t5 = T5EncoderModel._from_config(T5Config(**t5_config), dtype=dtype)
            clip = CLIPTextModel._from_config(CLIPTextConfig(**clip_config), dtype=dtype)
        return cls(
            t5,
            t5_tokenizer,
            clip,
            clip_tokenizer,
            device,
            dtype,
            max_sequence_length=max_sequence_length,
            offload=offload,
            **kwargs,
        )

    def check_widths(self, transformer_config, files: FluxFiles | None = None) -> None:
        """T5/CLIP widths must be what the transformer's context/pooled embedders read. Found at
        load time (by encoding the empty prompt, which also warms the cache), not mid-batch;
        `WeightFileError` names the encoder's folder."""
        t5, pooled = self.encode("")
        checks = (
            (
                "T5 width",
                t5.shape[-1],
                "context width",
                transformer_config.joint_attention_dim,
                files.t5 if files else None,
            ),
            (
                "CLIP pooled width",
                pooled.shape[-1],
                "pooled width",
                transformer_config.pooled_projection_dim,
                files.clip if files else None,
            ),
        )
        for what, width, reads, expected, folder in checks:
            if width != expected:
                raise WeightFileError(
                    folder or "<random text encoders>",
                    f"{what} {width} != the transformer's {reads} {expected}",
                )

    # ---------------------------------------------------------------------------- encoding
    def encode(self, prompt: str) -> tuple[torch.Tensor, torch.Tensor]:
        """(T5 last hidden state [1, L, D_t5], pooled CLIP [1, D_clip]) for one prompt."""
        return self.encode_many([prompt])

    def encode_many(self, prompts: Sequence[str]) -> tuple[torch.Tensor, torch.Tensor]:
        """Batched `encode`: ([B, L, D_t5], [B, D_clip]) in the order of `prompts`.

        Prompts already cached are not re-encoded; the missing distinct ones are encoded in
        batches of `batch_size`. Batched and single encodes agree to float rounding (no mask,
        identical padding), not necessarily bit for bit on every accelerator kernel.
        """
        if isinstance(prompts, str) or not prompts:
            raise ValueError("encode_many needs a non-empty list of prompt strings")
        for prompt in prompts:
            if not isinstance(prompt, str):
                raise TypeError(f"a prompt must be a str, got {type(prompt).__name__}: {prompt!r}")
        missing = [p for p in dict.fromkeys(prompts) if p not in self._cache]
        fresh: dict[str, tuple[torch.Tensor, torch.Tensor]] = {}
        if missing:
            with self._on_device():
                for start in range(0, len(missing), self.batch_size):
                    chunk = missing[start : start + self.batch_size]
                    t5, pooled = self._run_encoders(chunk)
                    for i, prompt in enumerate(chunk):
                        fresh[prompt] = (t5[i : i + 1], pooled[i : i + 1])
            self.encoded_prompts += len(missing)
        t5_rows, pooled_rows = [], []
        for prompt in prompts:
            if prompt in fresh:
                entry = fresh[prompt]
            else:
                entry = self._cache[prompt]
                self._cache.move_to_end(prompt)
                self.cache_hits += 1
            t5_rows.append(entry[0])
            pooled_rows.append(entry[1])
        for prompt, entry in fresh.items():
            self._remember(prompt, entry)
        return torch.cat(t5_rows), torch.cat(pooled_rows)

    @torch.inference_mode()
    def _run_encoders(self, prompts: list[str]) -> tuple[torch.Tensor, torch.Tensor]:
        if self._t5 is None or self._clip is None:
            raise RuntimeError(
                "FluxTextEncoders.free() was called: only cached prompts can be "
                f"encoded, and these are not cached: {prompts!r}"
            )
        clip_ids = self.clip_tokenizer(
            prompts,
            padding="max_length",
            max_length=CLIP_MAX_LENGTH,
            truncation=True,
            return_tensors="pt",
        ).input_ids
        t5_ids = self.t5_tokenizer(
            prompts,
            padding="max_length",
            max_length=self.max_sequence_length,
            truncation=True,
            return_tensors="pt",
        ).input_ids
        device = self.device
        pooled = self._clip(input_ids=clip_ids.to(device), output_hidden_states=False).pooler_output
        t5 = self._t5(input_ids=t5_ids.to(device), output_hidden_states=False).last_hidden_state
        return t5.to(dtype=self.dtype), pooled.to(dtype=self.dtype)

    def _remember(self, prompt: str, entry: tuple[torch.Tensor, torch.Tensor]) -> None:
        if self.cache_size <= 0:
            return
        self._cache[prompt] = entry
        self._cache.move_to_end(prompt)
        while len(self._cache) > self.cache_size:
            self._cache.popitem(last=False)

    # ------------------------------------------------------------------ memory management
    def _on_device(self):
        """With offload, the encoders on the accelerator for the block (`runtime.resident`)."""
        return resident(self.device, self.offload, self._t5, self._clip)

    def _move(self, device: torch.device) -> None:
        for model in (self._t5, self._clip):
            if model is not None:
                model.to(device)

    def to(self, device: torch.device | str) -> FluxTextEncoders:
        """Move the encoders (when not offloaded) and the cached embeddings to `device`."""
        self.device = torch.device(device)
        if not self.offload:
            self._move(self.device)
        for prompt, (t5, pooled) in self._cache.items():
            self._cache[prompt] = (t5.to(self.device), pooled.to(self.device))
        return self

    def free(self) -> None:
        """Drop both encoder models; cached prompts stay available, new prompts raise."""
        self._t5 = None
        self._clip = None
        if self.device.type == "cuda":
            torch.cuda.empty_cache()

    def clear_cache(self) -> None:
        self._cache.clear()

    @property
    def cached_prompts(self) -> list[str]:
        """Prompts in the cache, least recently used first."""
        return list(self._cache)

    @property
    def is_freed(self) -> bool:
        return self._t5 is None
