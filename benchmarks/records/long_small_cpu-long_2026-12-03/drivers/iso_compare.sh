#!/bin/bash
# The iso-loss speedup against the best baseline measured by compare itself (new in 1c1fd99), seed 109:
# the baselines' decayed lengths 12,000 and 20,000 steps. From the snapshot worktree /work/wt-iso.
cd /work/main
export PYTHONPATH=/work/wt-iso
echo "$(date -u +%T) start"
taskset -c 1 nice -n 5 .venv/bin/superpose compare --preset cpu-long --steps 12000 --baseline-lengths 1,1.6667 \
    --baselines "model.init=normal" --train.threads=1 --seeds 1 --seed0 109 --out runs/iso/compare-109 \
    > runs/iso/compare-109.log 2>&1 || echo FAILED
echo "$(date -u +%T) end"
