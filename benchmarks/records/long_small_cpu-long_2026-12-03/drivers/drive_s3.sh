#!/bin/bash
# Session 3 measurements for issue 21: two queues, one pinned core each.
cd /work/main
seed() {  # seed(core, out, k, extra compare args...)
  local core=$1 out=$2 k=$3; shift 3
  mkdir -p "$out/parts" "$out/all"
  [ -f "$out/all/seed-$k/result.json" ] && return 0
  echo "$(date -u +%T) start $out seed $k core $core"
  taskset -c "$core" .venv/bin/superpose compare --preset cpu-long --baseline-lengths 1 --baselines "model.init=normal" \
      "$@" --train.threads=1 --seeds 1 --seed0 "$k" --out "$out/parts/seed-$k" > "$out/parts/seed-$k.log" 2>&1 \
      && cp -r "$out/parts/seed-$k/seed-$k" "$out/all/" || echo "FAILED $out seed $k"
  echo "$(date -u +%T) end $out seed $k"
}
screen() {  # the s, r, LR screen: share the work through knobs' per-run locks
  taskset -c "$1" nice -n 0 .venv/bin/python benchmarks/knobs.py --preset cpu-long --out runs/screen --seeds 0,1 \
      --groups long-sr --cells "torch s=2,torch r=0.1,torch lr=6e-3" --set train.steps=3000 --set train.threads=1 \
      > runs/screen/proc-s3-$1.log 2>&1
  echo "$(date -u +%T) screen done on core $1"
}
( seed 0 runs/scan12k 105 --steps 12000; seed 0 runs/scan12k 107 --steps 12000
  seed 0 runs/corpus2 102 --steps 6000 --data.path runs/pydoc-4096; screen 0 ) &
( seed 1 runs/scan12k 106 --steps 12000
  seed 1 runs/corpus2 100 --steps 6000 --data.path runs/pydoc-4096
  seed 1 runs/corpus2 101 --steps 6000 --data.path runs/pydoc-4096; screen 1 ) &
wait
echo "$(date -u +%T) all queues done"
