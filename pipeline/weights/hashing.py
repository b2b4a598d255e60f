"""sha256 of weight files, cached by (path, size, mtime) so a 30 GB set is hashed once per node.

The cache is one JSON file ($RESTYLE_CACHE, else ~/.cache/restyle, /sha256-cache.json) shared by
every process of the node; a file lock keeps concurrent writers (several actors) from losing
each other's entries. Staging, which has just verified a download, records its digest with
`remember_sha256` so nothing is read twice.
"""

from __future__ import annotations

import hashlib
import json
import os
import threading
from pathlib import Path

from filelock import FileLock

_LOCK = threading.Lock()
_CHUNK = 16 << 20


def _cache_file() -> Path:
    root = Path(os.environ.get("RESTYLE_CACHE", Path.home() / ".cache" / "restyle"))
    return root / "sha256-cache.json"


def _load_cache() -> dict:
    try:
        return json.loads(_cache_file().read_text())
    except (OSError, ValueError):
        return {}


def _key(path: Path) -> str:
    path = Path(path).resolve()
    st = path.stat()
    return f"{path}|{st.st_size}|{st.st_mtime_ns}"


def _store(key: str, value: str) -> None:
    target = _cache_file()
    target.parent.mkdir(parents=True, exist_ok=True)
    with _LOCK, FileLock(str(target) + ".lock"):
        cache = _load_cache()
        cache[key] = value
        tmp = target.with_suffix(f".{os.getpid()}.{threading.get_ident()}.tmp")
        tmp.write_text(json.dumps(cache))
        os.replace(tmp, target)


def digest_file(path: Path, git_blob: bool = False) -> tuple[str, str | None]:
    """(sha256, git blob sha1 or None) of a file's bytes, in one read.

    The git blob sha1 is what the Hub publishes for small files it does not keep in LFS.
    """
    path = Path(path)
    sha256 = hashlib.sha256()
    sha1 = None
    if git_blob:
        sha1 = hashlib.sha1()
        sha1.update(f"blob {path.stat().st_size}\0".encode())
    with open(path, "rb") as f:
        while chunk := f.read(_CHUNK):
            sha256.update(chunk)
            if sha1 is not None:
                sha1.update(chunk)
    return sha256.hexdigest(), (sha1.hexdigest() if sha1 is not None else None)


def file_sha256(path: Path) -> str:
    """sha256 hex of a file's bytes, remembered until the file's size or mtime change."""
    key = _key(path)
    with _LOCK:
        cached = _load_cache().get(key)
    if cached:
        return cached
    value, _ = digest_file(path)
    _store(key, value)
    return value


def remember_sha256(path: Path, value: str) -> None:
    """Record a digest just verified for `path` (as it is now: same size and mtime)."""
    _store(_key(path), value)
