#!/usr/bin/env bash
# Create .venv and install restyle into it (with the test and dev extras when called with "test").
# torch is pinned to 2.13.0 first so that nothing later pulls another build; on a machine
# without a GPU, set PIP_EXTRA_INDEX_URL=https://download.pytorch.org/whl/cpu beforehand to get
# the small CPU build instead of the CUDA one.
set -euo pipefail
cd "$(dirname "$0")/.."
if [ ! -x .venv/bin/python ]; then
  python3 -m venv .venv
fi
. .venv/bin/activate
python -m pip install --quiet "torch==2.13.0"
if [ "${1:-}" = "test" ]; then
  python -m pip install --quiet -e ".[test,dev]"
else
  python -m pip install --quiet -e .
fi
