#!/usr/bin/env bash
# The one-shot device check (benchmarks/gpu_check.py; its docstring lists the options).
# On a lent machine without internet, the wheels carried in .whl/ (scripts/device_wheels.sh)
# are installed first into .device-site/, which then comes first on the module path; compiled
# kernels are cached in .gpu-check-cache/ so that a rerun on the same machine compiles less.
set -euo pipefail
cd "$(dirname "$0")/.."
PYTHON="${PYTHON:-python3}"
if [ -d .whl ] && compgen -G ".whl/*.whl" > /dev/null; then
  if [ ! -f .device-site/.installed ] || [ .whl -nt .device-site/.installed ]; then
    rm -rf .device-site
    "$PYTHON" -m pip install --quiet --no-index --no-deps --target .device-site .whl/*.whl
    touch .device-site/.installed
  fi
  export PYTHONPATH="$PWD/.device-site${PYTHONPATH:+:$PYTHONPATH}"
fi
# One stack after another in one process: expandable segments keep freed memory reusable.
export PYTORCH_CUDA_ALLOC_CONF="${PYTORCH_CUDA_ALLOC_CONF:-expandable_segments:True}"
export TORCHINDUCTOR_CACHE_DIR="${TORCHINDUCTOR_CACHE_DIR:-$PWD/.gpu-check-cache/inductor}"
exec "$PYTHON" benchmarks/gpu_check.py "$@"
