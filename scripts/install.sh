#!/usr/bin/env bash
# Create .venv and install restyle into it (with the test and dev extras when called with "test"),
# at the exact versions CI tests (scripts/constraints.txt; pyproject.toml keeps ranges).
# torch is pinned to 2.13.0 first so that nothing later pulls another build; on a machine
# without a GPU, set PIP_EXTRA_INDEX_URL=https://download.pytorch.org/whl/cpu beforehand to get
# the small CPU build instead of the CUDA one.
set -euo pipefail
cd "$(dirname "$0")/.."
started=$SECONDS
step() { printf 'install: %s (%ds)\n' "$*" "$((SECONDS - started))" >&2; }
if [ ! -x .venv/bin/python ]; then
  step "creating .venv"
  python3 -m venv .venv
fi
. .venv/bin/activate
PIP=(python -m pip install --quiet --progress-bar off -c scripts/constraints.txt)
step "torch 2.13.0 (the largest download: about a minute the first time)"
"${PIP[@]}" "torch==2.13.0"
if [ "${1:-}" = "test" ]; then
  step "restyle and its dependencies, with the test and dev tools and the papers' metric packages"
  "${PIP[@]}" -e ".[test,dev,paper-metrics]"
else
  step "restyle and its dependencies"
  "${PIP[@]}" -e .
fi
# PyPI's torchvision is built for the CUDA torch; beside a CPU-only torch its compiled ops
# cannot load and its import fails. scripts/torchvision_cpu_hook.py lets it import (see there).
if python -c "import importlib.util as u, sys; sys.exit(u.find_spec('torchvision') is None)" \
  && ! python -c "import torchvision" 2>/dev/null; then
  step "torchvision's compiled ops cannot load beside this torch: adding scripts/torchvision_cpu_hook.py"
  site=$(python -c 'import sysconfig; print(sysconfig.get_paths()["purelib"])')
  cp scripts/torchvision_cpu_hook.py "$site/restyle_torchvision_cpu_hook.py"
  echo "import restyle_torchvision_cpu_hook" >"$site/restyle_torchvision_cpu_hook.pth"
  python -c "import torchvision"
fi
step "done: $(restyle --version)"
