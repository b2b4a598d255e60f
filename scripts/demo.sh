#!/usr/bin/env bash
# Install restyle, then stylize the bundled sample manifests with both models on tiny
# random-weight checkpoints (built locally on first use). The pictures are noise: the weights
# are random. What is real is everything around them: shards, records, captions, provenance.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/install.sh
. .venv/bin/activate
OUT="${1:-demo-output}"
COMMON=(--out "$OUT" --weights tiny --width 256 --height 256 --steps 8)
restyle run manifests/examples/uso.parquet manifests/examples/webdataset \
  --model uso --run demo-uso "${COMMON[@]}"
restyle run manifests/examples/omniconsistency.parquet \
  --model omniconsistency --run demo-omniconsistency "${COMMON[@]}"
restyle status "$OUT/demo-uso"
restyle status "$OUT/demo-omniconsistency"
echo "Shards written under $OUT/. Open one with: tar tvf $OUT/demo-uso/part-000000.tar"
