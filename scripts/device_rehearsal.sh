#!/usr/bin/env bash
# Rehearse the device check on this CPU machine with the lent GPU machine's own package versions,
# so that its first call finds nothing missing or incompatible. The lent machine's python has
# torch 2.11 (a CUDA 13 build), torchvision 0.26, transformers 5.17, huggingface_hub 1.33, peft,
# accelerate, safetensors, pyarrow, typer and rich (KINDS.md of the device tool); everything else
# comes from the carried wheels (.whl/, scripts/device_wheels.sh), exactly as gpu_check.sh
# installs them there. torch 2.11 exists on PyPI only as its CUDA build (about 3 GB with its
# nvidia-* wheels); it runs on a CPU.
#
#   bash scripts/device_rehearsal.sh            # venv in .device-rehearsal/ (made once), then
#                                               # gpu_check.sh --device cpu --size small
#   bash scripts/device_rehearsal.sh --only 1   # any gpu_check.py options
#   bash scripts/device_rehearsal.sh --tests    # instead: the model tests (parity, fp8, compile)
#                                               # under those versions, `pytest -m "not slow"
#                                               # tests/models` (pytest is there too; boto3, which
#                                               # the tests' conftest imports, is added here only)
#
# Results: $OUT or ./gpu-check/ (gpu_check.json, gpu_check.md). The repository is not installed in
# the venv, as on the lent machine. The exit status is the check's (benchmarks/gpu_check.py).
set -euo pipefail
cd "$(dirname "$0")/.."
VENV=.device-rehearsal
PYVER=$(python3 -c 'import sys; print(f"{sys.version_info[0]}.{sys.version_info[1]}")')
if [ ! -x "$VENV/bin/python3" ]; then
  echo "device_rehearsal: building $VENV with the lent machine's versions" >&2
  python3 -m venv "$VENV"
  "$VENV/bin/pip" install --quiet \
    torch==2.11.0 transformers==5.17.0 huggingface_hub==1.33.0 accelerate==1.15.0 \
    safetensors==0.8.0 torchvision==0.26.0 peft pyarrow typer rich "numpy<2.6" pyyaml \
    sentencepiece tokenizers pytest boto3
fi
# The lent machine gets a copy of the working tree (tracked and untracked-not-ignored files)
# plus the carried .whl/: so does the rehearsal, in a scratch folder, with wheels for this
# machine's python (the lent one is 3.12).
WHEELS="$VENV/wheels-$PYVER"
if ! compgen -G "$WHEELS/*.whl" >/dev/null; then
  bash scripts/device_wheels.sh --python-version "$PYVER" --dest "$WHEELS"
fi
COPY=$(mktemp -d "${TMPDIR:-/tmp}/device-rehearsal.XXXXXX")
trap 'rm -rf "$COPY"' EXIT
git ls-files -z --cached --others --exclude-standard | tar --null -T - -cf - | tar -xf - -C "$COPY"
cp -r "$WHEELS" "$COPY/.whl"
OUT="${OUT:-$PWD/gpu-check}"
mkdir -p "$OUT"
CLEAN=(env -i PATH=/usr/bin:/bin HOME="$HOME" PYTHONUNBUFFERED=1)  # nothing of this shell leaks in
if [ "${1:-}" = "--tests" ]; then
  shift
  "${CLEAN[@]}" "$PWD/$VENV/bin/python3" -m pip install --quiet --no-index --no-deps \
    --target "$COPY/.device-site" "$COPY"/.whl/*.whl
  PYTHON_BIN="$PWD/$VENV/bin/python3"
  cd "$COPY"
  "${CLEAN[@]}" PYTHONPATH="$COPY/.device-site:$COPY" "$PYTHON_BIN" -m pytest \
    -q -p no:cacheprovider -m "not slow" tests/models "$@"
  exit  # with pytest's status; the trap removes the copy
fi
echo "device_rehearsal: running the check in $COPY, results in $OUT" >&2
"${CLEAN[@]}" OUT="$OUT" \
  PYTHON="$PWD/$VENV/bin/python3" bash "$COPY/benchmarks/gpu_check.sh" --device cpu --size small "$@"
