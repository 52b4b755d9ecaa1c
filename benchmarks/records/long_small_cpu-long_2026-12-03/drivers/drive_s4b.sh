#!/bin/bash
# Session 4 measurements for issue 21: one fresh seed of a cpu-long compare, from the snapshot
# worktree /work/wt-meas (main at 24b6936) so that edits to /work/main cannot change the code mid-run.
# drive_s4b.sh OUT SEED CORE STEPS [extra compare args]
cd /work/main
export PYTHONPATH=/work/wt-meas
out=$1; k=$2; core=$3; steps=$4; shift 4
mkdir -p "$out/parts" "$out/all"
echo "$(date -u +%T) start $out seed $k core $core"
taskset -c "$core" .venv/bin/superpose compare --preset cpu-long --baseline-lengths 1 --baselines "model.init=normal" \
    --steps "$steps" "$@" --train.threads=1 --seeds 1 --seed0 "$k" --out "$out/parts/seed-$k" > "$out/parts/seed-$k.log" 2>&1 \
    || { echo "FAILED $out seed $k"; exit 1; }
cp -r "$out/parts/seed-$k/seed-$k" "$out/all/"
echo "$(date -u +%T) end $out seed $k"
