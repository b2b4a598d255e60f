"""Resolving a manifest's `style_lora` reference to a local file, once per actor.

A reference is one of:
- a shipped OmniConsistency style name ("Ghibli", "3D_Chibi", ...; case and spaces are
  forgiven): the staged `<weights root>/style_loras/<Name>_rank128_bf16.safetensors` (folder:
  `weight_layout.STYLE_LORA_DIR`, file names and what counts as shipped:
  `omniconsistency.styles`); its trigger phrase is added by the model (StyleLora.name carries
  the canonical name);
- a local path to a .safetensors file;
- an `s3://` URI: downloaded once into the actor's cache folder;
- a Hugging Face reference, `hf://owner/repo/file.safetensors` or `owner/repo/file.safetensors`
  (or `owner/repo` for the repo's first .safetensors file, as the authors' demo does), through
  huggingface_hub with the usual HF_TOKEN and HF_ENDPOINT; its size is read from the Hub and
  held to the budget before the download, and Hub failures are worded as the weights' are.
Only safetensors files are ever opened: a reference to a pickle format (.bin, .pt, .ckpt, ...)
is refused as such. Every file is held to `limits.max_lora_bytes` (an s3:// object before it is
downloaded), local paths to `limits.local_roots`, and devices or kernel files are refused.
Failures are `ItemError(kind=lora_error)` naming the item and the reference.
"""

from __future__ import annotations

import hashlib
import shutil
import threading
from pathlib import Path, PurePosixPath

from pipeline.config.input_limits import DEFAULT_LIMITS, InputLimits
from pipeline.errors import ItemError, ItemStatus
from pipeline.models.base import StyleLora
from pipeline.models.omniconsistency.styles import shipped_style, style_name_of
from pipeline.models.weight_layout import STYLE_LORA_DIR
from pipeline.outputs.provenance import style_lora_reference
from pipeline.storage import Storage
from pipeline.storage.local import check_regular_file
from pipeline.weights.hashing import file_sha256

PICKLE_SUFFIXES = (".bin", ".pt", ".pth", ".ckpt", ".pkl", ".pickle")


class StyleLoraResolver:
    def __init__(
        self,
        storage: Storage,
        weights_root: Path | None,
        cache_dir: Path,
        limits: InputLimits = DEFAULT_LIMITS,
    ):
        self.storage = storage
        self.limits = limits
        self.styles_dir = (weights_root / STYLE_LORA_DIR) if weights_root else None
        self.cache_dir = Path(cache_dir)
        self._lock = threading.Lock()
        self._resolved: dict[str, Path] = {}

    def resolve(self, reference: str, scale: float | None, item_id: str) -> StyleLora:
        scale = 1.0 if scale is None else float(scale)
        with self._lock:  # one download per reference even with several reader threads
            try:
                path, name = self._locate(reference)
            except Exception as error:
                raise ItemError(
                    item_id,
                    ItemStatus.LORA_ERROR,
                    f"style LoRA {reference!r}: {type(error).__name__}: {error}",
                ) from error
        if not path.is_file():
            raise ItemError(
                item_id, ItemStatus.LORA_ERROR, f"style LoRA {reference!r}: {path} not found"
            )
        try:
            check_regular_file(str(path), "read")
        except OSError as error:
            raise ItemError(
                item_id, ItemStatus.LORA_ERROR, f"style LoRA {reference!r}: {error}"
            ) from error
        if path.stat().st_size > self.limits.max_lora_bytes:
            raise ItemError(item_id, ItemStatus.LORA_ERROR, self._too_large(reference, path))
        return StyleLora(path=path, scale=scale, name=name)

    def _too_large(self, reference: str, path: Path | str) -> str:
        return (
            f"style LoRA {reference!r}: {path} is larger than the {self.limits.max_lora_bytes}-"
            "byte budget (limits.max_lora_bytes)"
        )

    def sha256(self, path: Path) -> str:
        return file_sha256(path)

    @staticmethod
    def public_reference(reference: str) -> str:
        """The reference as outputs record it (`outputs.provenance.style_lora_reference`)."""
        return style_lora_reference(reference)

    def _locate(self, reference: str) -> tuple[Path, str]:
        if reference in self._resolved:
            path = self._resolved[reference]
            return path, self._name(reference, path)
        path = self._fetch(reference)
        self._resolved[reference] = path
        return path, self._name(reference, path)

    def _name(self, reference: str, path: Path) -> str:
        """Canonical shipped-style name when the reference names one, else the reference."""
        if "/" not in reference and not reference.endswith(".safetensors"):
            return shipped_style(None, path) or reference
        return reference

    def _fetch(self, reference: str) -> Path:
        suffix = PurePosixPath(reference).suffix.lower()
        if suffix in PICKLE_SUFFIXES:
            raise ValueError(
                f"a {suffix} file is a pickle format, which restyle never loads: convert the "
                "LoRA to .safetensors"
            )
        if reference.startswith("s3://"):
            return self._download_s3(reference)
        local = Path(reference).expanduser()
        if reference.endswith(".safetensors") and (local.is_absolute() or local.exists()):
            if not self.limits.allows_local(str(local)):
                raise PermissionError(
                    f"{local} lies outside the allowed local roots (limits.local_roots: "
                    f"{', '.join(self.limits.local_roots)})"
                )
            return local
        if "/" not in reference:
            return self._shipped(reference)
        return self._download_hf(reference.removeprefix("hf://"))

    def _shipped(self, name: str) -> Path:
        if self.styles_dir is None or not self.styles_dir.is_dir():
            raise FileNotFoundError(
                f"no shipped style LoRAs are staged (expected a "
                f"{STYLE_LORA_DIR}/ folder in the weights root) for style "
                f"{name!r}"
            )
        wanted = name.lower().replace(" ", "_")
        for file in sorted(self.styles_dir.glob("*.safetensors")):
            if style_name_of(file).lower() == wanted:
                return file
        known = sorted(f.name for f in self.styles_dir.glob("*.safetensors"))
        raise FileNotFoundError(
            f"unknown style {name!r}; staged styles: {', '.join(known) or 'none'}"
        )

    def _download_s3(self, uri: str) -> Path:
        target = (
            self.cache_dir
            / "style_loras"
            / (hashlib.sha256(uri.encode()).hexdigest()[:16] + "-" + Path(uri).name)
        )
        if target.exists():
            return target
        size = self.storage.size(uri)
        if size > self.limits.max_lora_bytes:
            raise ValueError(
                f"{size} bytes, larger than the {self.limits.max_lora_bytes}-byte budget "
                "(limits.max_lora_bytes); not downloaded"
            )
        target.parent.mkdir(parents=True, exist_ok=True)
        tmp = target.with_suffix(".partial")
        with self.storage.open_read(uri) as src, open(tmp, "wb") as dst:
            shutil.copyfileobj(src, dst, length=16 << 20)
        tmp.replace(target)
        return target

    def _download_hf(self, reference: str) -> Path:
        """A Hub file, held to the size budget by the Hub's own metadata before a byte is
        downloaded; Hub failures worded as the weights' (`pipeline.weights.hub_errors`)."""
        from huggingface_hub import HfApi, hf_hub_download

        from pipeline.weights.hub_errors import hub_errors, request_from_env

        parts = reference.split("/")
        repo_id, filename = "/".join(parts[:2]), "/".join(parts[2:])
        request = request_from_env(
            repo_id,
            "main",
            named_in="the manifest's style_lora",
            offline_advice="stage the LoRA on S3 or a local path and name that instead",
        )
        api = HfApi(endpoint=request.endpoint, token=request.token)
        with hub_errors(request, f"fetch the style LoRA {reference}"):
            if not filename:
                names = api.list_repo_files(repo_id)
                candidates = sorted(f for f in names if f.endswith(".safetensors"))
                if not candidates:
                    raise FileNotFoundError(f"Hugging Face repo {repo_id} has no .safetensors file")
                filename = candidates[0]
            found = [i for i in api.get_paths_info(repo_id, [filename]) if hasattr(i, "size")]
            if not found:
                raise FileNotFoundError(f"Hugging Face repo {repo_id} has no file {filename}")
            if found[0].size > self.limits.max_lora_bytes:
                raise ValueError(
                    f"{repo_id}/{filename} is {found[0].size} bytes on the Hub, larger than the "
                    f"{self.limits.max_lora_bytes}-byte budget (limits.max_lora_bytes); not "
                    "downloaded"
                )
            downloaded = hf_hub_download(
                repo_id,
                filename,
                cache_dir=self.cache_dir / "hf",
                endpoint=request.endpoint,
                token=request.token,
            )
        return Path(downloaded)
