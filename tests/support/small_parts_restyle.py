"""`restyle` whose S3 uploads are all multipart (threshold 1 byte): the chaos test's driver.

A tiny run's tars are far below the default 64 MiB threshold, so they would go up as single
PUTs and a kill could never leave an open multipart upload behind. This entry point sets the
threshold through the one place every process's settings come from (`StorageSettings.from_env`:
the settings object then travels to the actors), and runs the real command line:

    python -m support.small_parts_restyle run MANIFEST --out s3://... (PYTHONPATH=tests)
"""

from __future__ import annotations

from typing import Any

from pipeline.storage.settings import StorageSettings

_from_env = StorageSettings.from_env.__func__  # type: ignore[attr-defined]


def _small_parts(cls: type[StorageSettings], environ: Any = None, **overrides: Any):
    overrides.setdefault("multipart_threshold_bytes", 1)
    return _from_env(cls, environ, **overrides)


StorageSettings.from_env = classmethod(_small_parts)  # type: ignore[method-assign,assignment]

if __name__ == "__main__":
    from pipeline.cli.main import app

    app()
