#!/usr/bin/env bash
# The project's test command (CI runs it through .ci/run): install restyle with its test and dev
# extras, then the lanes in order, each failing fast:
#   lint (ruff check, ruff format --check) -> import contract (lint-imports) -> types (mypy)
#   -> fast tests (not slow) -> slow tests (real Ray end to end).
# GPU tests (marker `gpu`) are skipped where torch sees no CUDA device.
# Extra arguments go to both pytest lanes, e.g. `bash scripts/test.sh -x`.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/install.sh test
. .venv/bin/activate
lane() { printf '\n==> %s\n' "$*"; }
lane "lint";            ruff check . && ruff format --check .
lane "import contract"; lint-imports
lane "types";           mypy
lane "fast tests";      python -m pytest -q -m "not slow" "$@"
lane "slow tests";      python -m pytest -q -m "slow" "$@"
