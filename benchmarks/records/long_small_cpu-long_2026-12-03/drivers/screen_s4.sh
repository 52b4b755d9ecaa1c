#!/bin/bash
# Session 4: the screen's LR cells (seeds 0-1, 3,000 steps) for TST and for both baselines' inits,
# from the snapshot worktree /work/wt-meas (main at 24b6936). Processes share the work through
# knobs.py's per-run locks. screen_s4.sh CORE
cd /work/main
export PYTHONPATH=/work/wt-meas
taskset -c "$1" .venv/bin/python /work/wt-meas/benchmarks/knobs.py --preset cpu-long --out runs/screen --seeds 0,1 \
    --groups long-sr --cells "torch lr=6e-3,normal lr=6e-3" --set train.steps=3000 --set train.threads=1 \
    > runs/screen/proc-s4-$1.log 2>&1
echo "$(date -u +%T) screen done on core $1"
