#!/usr/bin/env bash
# Set up superpose in ./.venv: PyTorch (the CPU build when no NVIDIA GPU is present), then the
# package with its test extras. Safe to re-run; it installs only what is missing.
#   SUPERPOSE_PYTHON       interpreter to build the venv from (default: python3)
#   SUPERPOSE_TORCH_INDEX  a pip index URL to take torch from (e.g. PyTorch's CPU-only index)
#   SUPERPOSE_TITAN=1      also install the torchtitan extra (superpose[titan], ~1 GB with triton),
#                          keeping the torch already installed
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${SUPERPOSE_PYTHON:-python3}
TORCH_CPU=2.13.0          # the CPU wheel we test with
TORCH_RANGE=">=2.5,<2.15"  # what pyproject.toml accepts

"$PY" -c 'import sys; sys.exit(sys.version_info < (3, 11))' || { echo "superpose needs Python >= 3.11" >&2; exit 1; }
[ -x .venv/bin/python ] || "$PY" -m venv .venv
pip() { .venv/bin/python -m pip --disable-pip-version-check -q "$@" 2>&1 | grep -v "^WARNING: Location" || true; }

if ! .venv/bin/python -c 'import torch' 2>/dev/null; then
  index=()
  [ -n "${SUPERPOSE_TORCH_INDEX:-}" ] && index=(--index-url "$SUPERPOSE_TORCH_INDEX")
  if command -v nvidia-smi >/dev/null 2>&1 && nvidia-smi -L >/dev/null 2>&1; then
    echo "setup: NVIDIA GPU found: installing a CUDA build of torch$TORCH_RANGE" >&2
    pip install "torch$TORCH_RANGE" "${index[@]}"
  else
    echo "setup: no GPU: installing the CPU build torch==$TORCH_CPU" >&2
    pip install "torch==$TORCH_CPU" "${index[@]}"
  fi
fi
pip install -e ".[test]"
if [ "${SUPERPOSE_TITAN:-0}" = 1 ]; then
  # Pin the torch already here, so torchtitan's dependencies never swap in another build.
  have=$(.venv/bin/python -c 'import torch; print(torch.__version__.split("+")[0])')
  pip install -e ".[titan]" "torch==$have"
fi
.venv/bin/python -c 'import torch, superpose; print(f"setup: superpose {superpose.__version__}, torch {torch.__version__}", flush=True)' >&2
