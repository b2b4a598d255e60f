#!/usr/bin/env bash
# Download, on a machine with package-registry access, the wheels the device check
# (benchmarks/gpu_check.sh) needs on a lent GPU machine that reaches nothing outside: into .whl/
# (ignored by git), for CPython 3.12 on manylinux x86-64 unless told otherwise. Carry .whl/ to
# the machine (the device tool's `carry`); gpu_check.sh installs it with
# `pip install --no-index --no-deps --target .device-site`.
#
# The lent machine's python has torch 2.11 (CUDA 13), transformers 5.17, peft, accelerate,
# safetensors, pyarrow, typer and rich (with their own dependencies), and none of the packages
# below. Every one is named, dependencies included (pip runs with --no-deps there), at the
# version restyle is tested with. Not carried: Ray (the check runs the shard processor without
# it), boto3 (local outputs never import it: pipeline.storage loads its S3 backend on first use),
# torchao (the fp8 path is the project's own layer).
#
#   bash scripts/device_wheels.sh                         # CPython 3.12, the lent machine
#   bash scripts/device_wheels.sh --python-version 3.11 --dest /tmp/wheels311   # a local rehearsal
set -euo pipefail
cd "$(dirname "$0")/.."
PYTHON_VERSION=3.12
DEST=.whl
while [ $# -gt 0 ]; do
  case "$1" in
    --python-version) PYTHON_VERSION="$2"; shift 2 ;;
    --dest) DEST="$2"; shift 2 ;;
    *) echo "usage: $0 [--python-version X.Y] [--dest FOLDER]" >&2; exit 2 ;;
  esac
done
WHEELS=(
  diffusers==0.42.1            # the FLUX classes both models are built on
  huggingface_hub==1.33.0      # diffusers 0.42.1 needs >= 1.32, transformers 5.17 needs < 2
  importlib_metadata==10.2.0   # diffusers
  zipp==4.1.2                  # importlib_metadata
  requests==2.34.2             # diffusers
  urllib3==2.8.0               # requests
  idna==3.20                   # requests
  charset_normalizer==3.5.3    # requests
  certifi==2026.10.19.post1    # requests
  pillow==13.0.0               # images (decode, encode)
  pydantic==2.14.4             # the run configuration
  pydantic_core==2.50.5        # pydantic
  annotated_types==0.8.0       # pydantic
  typing_inspection==0.4.5     # pydantic
  webdataset==1.0.2            # output shards (tar)
  braceexpand==0.1.7           # manifest URI patterns
  sentencepiece==0.2.3         # the locally trained T5 tokenizer of random-weight models
  protobuf==7.36.2             # transformers reads that sentencepiece model through it
)
mkdir -p "$DEST"
python3 -m pip download --quiet --no-deps --only-binary=:all: \
  --python-version "$PYTHON_VERSION" --implementation cp \
  --platform manylinux_2_28_x86_64 --platform manylinux_2_17_x86_64 \
  --platform manylinux2014_x86_64 \
  -d "$DEST" "${WHEELS[@]}"
SIZE_KIB=$(du -sk "$DEST" | cut -f1)
echo "$(ls "$DEST"/*.whl | wc -l) wheels, $((SIZE_KIB / 1024)) MiB in $DEST"
if [ "$SIZE_KIB" -gt $((50 * 1024)) ]; then
  echo "device_wheels: $DEST is over 50 MiB; the device tool carries 64 MiB in all" >&2
  exit 1
fi
