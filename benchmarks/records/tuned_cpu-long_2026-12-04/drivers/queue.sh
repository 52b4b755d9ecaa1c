#!/usr/bin/env bash
# Everything of issue 30 still to run, in order, unattended, resumable (each step skips or continues
# what is done): the confirmation on the default corpus (primary), an exploratory look at the
# baseline's decay edge, the d = 32 screen and confirmation, the second corpus's rerun, the
# confirmation on the non-repeating corpus. The order is free (PREREGISTRATION.md fixes the seeds,
# arms and analysis, not when each runs); cheapest answers first after the primary. Needs the two
# frozen checkouts of NOTES.md (/work/wt-bench at e8a7a41, /work/wt-confirm at 192da38):
#
#   nohup setsid bash benchmarks/records/tuned_cpu-long_2026-12-04/drivers/queue.sh > runs/queue.log 2>&1 &
set -u
D=$(cd "$(dirname "$0")" && pwd)
bench=${WT_BENCH:-/work/wt-bench}; confirm=${WT_CONFIRM:-/work/wt-confirm}
runs=$(cd "$confirm" && cd "$(readlink -f runs)" && pwd)
while pgrep -f "drivers/screen.sh" >/dev/null; do sleep 30; done
cd "$confirm" && export PYTHONPATH=$confirm
CORPUS=default bash "$D/confirm.sh" >> "$runs/confirm.log" 2>&1
# Exploratory, not pre-registered, kept out of screen/ so arms.py (and so the confirmation's arms)
# cannot see it: does the baseline gain more from a longer decay (0.6) than TST does?
(cd "$bench" && export PYTHONPATH=$bench SUPERPOSE_CACHE=/work/cache-bench GRID_OUT=runs/explore \
   GRID_RECORD="$D/../explore" && cell() { bash "$D/grid.sh" "$1" base:normal:2e-3:100:0.6 tst:normal:1.5e-3:100:0.6; } &&
 mkdir -p runs/explore && { cell 0 >> runs/explore/grid-s0.log 2>&1 & cell 1 >> runs/explore/grid-s1.log 2>&1; wait; })
(cd "$bench" && PYTHONPATH=$bench SUPERPOSE_CACHE=/work/cache-bench SIZE=d32 bash "$D/screen.sh" >> "$runs/tune12k/screen-d32.log" 2>&1)
SIZE=d32 bash "$D/confirm.sh" >> "$runs/confirm-d32.log" 2>&1
bash "$D/corpus2.sh" >> "$runs/corpus2.log" 2>&1
CORPUS=big bash "$D/confirm.sh" >> "$runs/confirm.log" 2>&1
echo "queue.sh: $(date -u +%H:%M) done"
