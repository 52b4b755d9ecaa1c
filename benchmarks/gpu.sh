#!/usr/bin/env bash
# One command on a CUDA machine: set up, benchmark the trainer on the 270m preset shape (phase 2
# and phase 1, bf16 autocast, fused AdamW, torch.compile), print tokens/s, step time and MFU, and
# write the output as a dated record under benchmarks/records/ (written whatever happens; the
# script exits non-zero if the benchmark fails). Needs no network once the project is set up
# (scripts/setup.sh installs nothing when it already has). About 3-5 minutes on one H100/H200,
# most of it compiling. Arguments go to benchmarks/gpu.py, e.g.
#   bash benchmarks/gpu.sh --loss-chunk-rows 0,4096      # also time the fused chunked head + loss
#   bash benchmarks/gpu.sh --no-compile --micro-batch 8
set -euo pipefail
cd "$(dirname "$0")/.."
source benchmarks/cuda_setup.sh
cuda_setup benchmarks/gpu.sh
start_record throughput  # sets $gpu and $record; all output from here goes to the terminal and the record
echo "# Trainer throughput on $gpu, 270m preset ($(date '+%Y-%m-%d %H:%M %Z'))"
echo
echo "Command: \`bash benchmarks/gpu.sh $*\` (git $(git rev-parse --short HEAD 2>/dev/null || echo unknown))"
echo
echo '```'
nvidia-smi --query-gpu=name,driver_version,memory.total,power.limit,clocks.max.sm --format=csv
echo
status=0
.venv/bin/python benchmarks/gpu.py "$@" || status=$?
echo '```'
echo "exit status: $status"
echo "benchmarks/gpu.sh: wrote $record" >&2
exit "$status"
