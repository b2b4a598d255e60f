#!/usr/bin/env bash
# Install restyle with its test dependencies, then run the whole test suite (real SeaweedFS S3
# server, real local Ray, tiny real models). Extra arguments go to pytest.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/install.sh test
. .venv/bin/activate
python -m pytest -q "$@"
