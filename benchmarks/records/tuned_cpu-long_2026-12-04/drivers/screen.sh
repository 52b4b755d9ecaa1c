#!/usr/bin/env bash
# The whole screen of PREREGISTRATION.md section 1, round after round, unattended: ask arms.py
# which cells the rules still need (the rest of the grid, a widening, stage 2), run them on seeds
# 0 and 1 side by side (one grid.sh per seed, one torch thread each), and stop when arms.py names
# the two arms. Every cell is resumable (grid.sh), so stopping and rerunning this loses at most the
# minutes since a cell's last checkpoint. Run it from the frozen checkout (see NOTES.md):
#
#   cd /work/wt-bench && PYTHONPATH=$PWD SUPERPOSE_CACHE=/work/cache-bench \
#     nohup setsid bash /work/main/benchmarks/records/tuned_cpu-long_2026-12-04/drivers/screen.sh \
#     > /work/main/runs/tune12k/screen.log 2>&1 &
set -euo pipefail
drivers=$(cd "$(dirname "$0")" && pwd)
log=${GRID_OUT:-runs/tune12k}
mkdir -p "$log"
# SIZE=d32: the second size (d = 32, 3,000 steps, cells named d32-..., stage 1 only)
size=(); [ "${SIZE:-}" = d32 ] && { size=(--size d32); export GRID_TAG=d32- GRID_STEPS=3000 GRID_MODEL="--model.dim=32 --model.ffn_dim=96"; }
while cells=$(python3 "$drivers/arms.py" --cells "${size[@]}") && [ -n "$cells" ]; do
  echo "screen.sh: $(date -u +%H:%M) round: $cells"
  pids=()
  for seed in 0 1; do
    bash "$drivers/grid.sh" "$seed" $cells >> "$log/grid-s$seed.log" 2>&1 & pids+=($!)
  done
  for pid in "${pids[@]}"; do wait "$pid"; done
done
echo "screen.sh: $(date -u +%H:%M) done"
python3 "$drivers/arms.py" "${size[@]}"
