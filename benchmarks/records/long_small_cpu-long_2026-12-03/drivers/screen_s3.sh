#!/bin/bash
# After seed 108 (12,000 steps) ends on core 1: copy it, then the s, r and LR screen on core 1.
cd /work/main
while pgrep -f "seed0 108 " >/dev/null; do sleep 10; done
cp -r runs/scan12k/parts/seed-108/seed-108 runs/scan12k/all/ && echo "$(date -u +%T) end runs/scan12k seed 108"
for cells in "torch s=2,torch r=0.1" "torch lr=6e-3"; do
  echo "$(date -u +%T) screen start: $cells"
  taskset -c 1 .venv/bin/python benchmarks/knobs.py --preset cpu-long --out runs/screen --seeds 0,1 \
      --groups long-sr --cells "$cells" --set train.steps=3000 --set train.threads=1 >> runs/screen/proc-s3.log 2>&1
  echo "$(date -u +%T) screen done: $cells"
done
