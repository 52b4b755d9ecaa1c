# Sourced by the GPU benchmarks (gpu.sh, gpu_compare.sh): refuse in one line, exit 2, unless an
# NVIDIA GPU is present; then set up .venv (nothing is installed, and no network is needed, when
# scripts/setup.sh has already run with this pyproject.toml) and check that its torch can use the GPU.
# Usage: cuda_setup SCRIPT_NAME [HINT]
cuda_setup() {
  if ! command -v nvidia-smi >/dev/null 2>&1 || ! nvidia-smi -L >/dev/null 2>&1; then
    echo "$1: no NVIDIA GPU found (nvidia-smi lists none); run it on a CUDA machine${2:+, $2}" >&2
    exit 2
  fi
  bash scripts/setup.sh
  if ! .venv/bin/python -c 'import sys, torch; sys.exit(not torch.cuda.is_available())'; then
    echo "$1: .venv's torch cannot use the GPU (a CPU build?); remove .venv or set SUPERPOSE_TORCH_INDEX to a CUDA wheel index and rerun" >&2
    exit 2
  fi
}

# Usage: start_record PREFIX. Sets $gpu (the GPU's name) and $record
# (benchmarks/records/PREFIX_GPU_DATE.md, never an existing one) and sends everything the script
# prints from then on to the terminal and the record, so the record is written whatever happens.
start_record() {
  gpu=$(nvidia-smi --query-gpu=name --format=csv,noheader | head -1 | sed 's/^NVIDIA //; s/[^A-Za-z0-9]\+/-/g; s/-$//')
  record="benchmarks/records/$1_${gpu}_$(date +%Y-%m-%d).md"
  [ -e "$record" ] && record="${record%.md}-$(date +%H%M%S).md"
  exec > >(tee "$record") 2>&1
}
