#!/bin/bash
# Session 5 (issue 21): the second corpus's best baseline (its own config, init=torch) trained to
# 10,000 steps for seeds of the 6,000-step corpus2 compare, to place TST's 6,000-step loss between the
# baseline's 6,000- and 10,000-step losses. Snapshot worktree /work/wt-meas (24b6936), one pinned core,
# one thread. drive_s5c.sh CORE SEED [SEED ...]
cd /work/main
export PYTHONPATH=/work/wt-meas
core=$1; shift
mkdir -p runs/iso/c2-own-10000
for k in "$@"; do
    out=runs/iso/c2-own-10000/seed-$k
    [ -f "$out/summary.json" ] && { echo "$(date -u +%T) seed $k already done"; continue; }
    echo "$(date -u +%T) start seed $k core $core"
    taskset -c "$core" nice -n 5 .venv/bin/superpose train --preset cpu-long --train.steps=10000 --train.seed="$k" \
        --tst.bag_size=1 --tst.ratio=0 --data.path runs/pydoc-4096 --train.threads=1 --out "$out" > "$out.log" 2>&1 \
        || { echo "FAILED seed $k"; exit 1; }
    echo "$(date -u +%T) end seed $k"
done
