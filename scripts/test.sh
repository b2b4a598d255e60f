#!/usr/bin/env bash
# The project's test command (CI runs it through .ci/run): install restyle with its test and dev
# extras, then the lanes in order, each failing fast:
#   lint (ruff check, ruff format --check) -> import contract (lint-imports) -> types (mypy)
#   -> fast tests (not slow) -> slow tests (real Ray end to end).
# Chromium (for the report test) is installed with apt-get when missing.
# GPU tests (marker `gpu`) are skipped where torch sees no CUDA device.
# Extra arguments go to both pytest lanes, e.g. `bash scripts/test.sh -x`.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/install.sh test
. .venv/bin/activate
lane() { printf '\n==> %s\n' "$*"; }
# The report test opens pages in a real headless Chromium (Debian's package; no browser
# download): install it where it is missing and apt-get can.
if ! command -v chromium >/dev/null 2>&1 && command -v apt-get >/dev/null 2>&1; then
  lane "installing chromium (apt-get)"
  (apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium) >/dev/null \
    || echo "chromium could not be installed: the report's browser test will be skipped"
fi
lane "lint";            ruff check . && ruff format --check .
lane "import contract"; lint-imports
lane "types";           mypy
lane "fast tests";      python -m pytest -q -m "not slow" "$@"
lane "slow tests";      python -m pytest -q -m "slow" "$@"
