#!/bin/bash
# Session 5 (issue 21, the iso-loss speedup at 12,000 steps): the best baseline (init=normal) trained
# to 20,000 steps for seeds of the 12,000-step record, so that TST's 12,000-step loss can be placed
# between the baseline's 12,000- and 20,000-step losses. Runs from the snapshot worktree /work/wt-meas
# (main at 24b6936, the code of the 12,000-step seeds), one pinned core per queue, one thread.
# drive_s5.sh CORE SEED [SEED ...]
cd /work/main
export PYTHONPATH=/work/wt-meas
core=$1; shift
mkdir -p runs/iso/normal-20000
for k in "$@"; do
    out=runs/iso/normal-20000/seed-$k
    [ -f "$out/summary.json" ] && { echo "$(date -u +%T) seed $k already done"; continue; }
    echo "$(date -u +%T) start seed $k core $core"
    taskset -c "$core" nice -n 5 .venv/bin/superpose train --preset cpu-long --train.steps=20000 --train.seed="$k" \
        --model.init=normal --tst.bag_size=1 --tst.ratio=0 --train.threads=1 --out "$out" > "$out.log" 2>&1 \
        || { echo "FAILED seed $k"; exit 1; }
    echo "$(date -u +%T) end seed $k"
done
