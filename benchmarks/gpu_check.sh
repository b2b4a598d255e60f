#!/usr/bin/env bash
# The one-shot device check (benchmarks/gpu_check.py; its docstring lists the options).
# On a lent machine without internet, whatever the check imports and the machine lacks comes from
# the wheels carried in .whl/ (scripts/device_wheels.sh): they are installed once into
# .device-site/, which then comes first on the module path. Where everything imports already (a
# developer's virtualenv, CI), .whl/ is left alone. Compiled kernels are cached in
# .gpu-check-cache/ so that a rerun on the same machine compiles less.
set -euo pipefail
cd "$(dirname "$0")/.."
PYTHON="${PYTHON:-python3}"
NEEDED="diffusers, huggingface_hub, PIL, pydantic, yaml, webdataset, braceexpand, sentencepiece, google.protobuf"
if [ -d .device-site ]; then
  export PYTHONPATH="$PWD/.device-site${PYTHONPATH:+:$PYTHONPATH}"
fi
if ! "$PYTHON" -c "import $NEEDED" >/dev/null 2>&1 && compgen -G ".whl/*.whl" >/dev/null; then
  echo "gpu_check.sh: installing the carried wheels (.whl/) into .device-site/" >&2
  rm -rf .device-site
  "$PYTHON" -m pip install --quiet --no-index --no-deps --target .device-site .whl/*.whl
  export PYTHONPATH="$PWD/.device-site${PYTHONPATH:+:$PYTHONPATH}"
fi
# One stack after another in one process: expandable segments keep freed memory reusable.
export PYTORCH_CUDA_ALLOC_CONF="${PYTORCH_CUDA_ALLOC_CONF:-expandable_segments:True}"
export TORCHINDUCTOR_CACHE_DIR="${TORCHINDUCTOR_CACHE_DIR:-$PWD/.gpu-check-cache/inductor}"
exec "$PYTHON" benchmarks/gpu_check.py "$@"
