#!/usr/bin/env bash
# Set up superpose in ./.venv: PyTorch (the CPU build when no NVIDIA GPU is present), then the
# package with its test extras and the torchtitan extra, resolved together in ONE pip call so the
# environment is consistent, then `pip check` (setup fails if it does not pass). Safe to re-run:
# when pyproject.toml and the extras are unchanged since the last good setup it installs nothing
# (so it also runs offline on a machine already set up).
#   SUPERPOSE_PYTHON       interpreter to build the venv from (default: python3)
#   SUPERPOSE_TORCH_INDEX  a pip index URL to take torch from (e.g. PyTorch's CPU-only index)
#   SUPERPOSE_TITAN=0      leave out the torchtitan extra (superpose[titan]: torchtitan, triton: a 0.29 GB
#                          download, 1 GB installed); tests/test_titan.py then skips
#   SUPERPOSE_SYSTEM_PACKAGES=1  build .venv on the interpreter's own packages (--system-site-packages),
#                          e.g. a container image's CUDA torch; `pip check` then judges packages superpose
#                          did not install, so its conflicts are printed as a warning, not a failure
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${SUPERPOSE_PYTHON:-python3}
TORCH_CPU=2.13.0          # the CPU wheel we test with
TORCH_RANGE=">=2.5,<2.15"  # what pyproject.toml accepts
EXTRAS=test
[ "${SUPERPOSE_TITAN:-1}" = 0 ] || { EXTRAS=test,titan; TORCH_RANGE=">=2.13,<2.15"; }  # torchtitan 0.3.0: torch >= 2.13

"$PY" -c 'import sys; sys.exit(sys.version_info < (3, 11))' || { echo "superpose needs Python >= 3.11" >&2; exit 1; }
system=${SUPERPOSE_SYSTEM_PACKAGES:-0}
venv_args=()
[ "$system" = 1 ] && venv_args=(--system-site-packages)
[ -x .venv/bin/python ] || "$PY" -m venv "${venv_args[@]}" .venv
pip() {  # pip, quiet, failing setup when it fails (this machine's pip.conf warnings left out)
  local log rc=0
  log=$(mktemp)
  .venv/bin/python -m pip --disable-pip-version-check -q "$@" >"$log" 2>&1 || rc=$?
  grep -v "^WARNING: Location" "$log" >&2 || true
  rm -f "$log"
  [ "$rc" = 0 ] || { echo "setup: pip $1 failed (above); fix it and rerun bash scripts/setup.sh" >&2; exit 1; }
}

stamp=.venv/superpose-setup
want="$EXTRAS $(sha256sum pyproject.toml | cut -d' ' -f1)"
if [ "$(cat "$stamp" 2>/dev/null)" != "$want" ]; then
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
  # One resolve for every extra, with the torch already here pinned (the CPU build stays the CPU
  # build): separate calls let a later extra downgrade what an earlier one needs.
  # (read from the installed metadata: importing torch before numpy is installed warns)
  have=$(.venv/bin/python -c 'from importlib.metadata import version; print(version("torch").split("+")[0])')
  echo "setup: installing superpose[$EXTRAS] with torch==$have" >&2
  pip install -e ".[$EXTRAS]" "torch==$have"
  rm -f "$stamp"
fi
if ! check=$(.venv/bin/python -m pip --disable-pip-version-check check 2>&1); then
  echo "$check" >&2
  if [ "$system" = 1 ]; then
    echo "setup: warning: pip check found conflicts (above) among the interpreter's own packages (SUPERPOSE_SYSTEM_PACKAGES=1); superpose does not manage them" >&2
  else
    rm -f "$stamp"  # the next run resolves again
    echo "setup: pip check found conflicting packages in .venv (above); rerun bash scripts/setup.sh to resolve again, or remove .venv first" >&2
    exit 1
  fi
fi
echo "$want" >"$stamp"
.venv/bin/python -c 'import torch, superpose; print(f"setup: superpose {superpose.__version__}, torch {torch.__version__}", flush=True)' >&2
