#!/bin/bash
# Is `train` with the variant's flags the same run as compare's init=normal baseline arm? 300 steps, seed 105.
cd /work/main
export PYTHONPATH=/work/wt-meas
rm -rf runs/iso/parity
taskset -c 0 .venv/bin/superpose compare --preset cpu-long --steps 300 --baseline-lengths 1 --baselines "model.init=normal" \
    --train.threads=1 --seeds 1 --seed0 105 --out runs/iso/parity/compare > runs/iso/parity-compare.log 2>&1 &
taskset -c 1 .venv/bin/superpose train --preset cpu-long --train.steps=300 --train.seed=105 --model.init=normal \
    --tst.bag_size=1 --tst.ratio=0 --train.threads=1 --out runs/iso/parity/train > runs/iso/parity-train.log 2>&1
wait
.venv/bin/python - <<'PY'
import json
c = json.load(open("runs/iso/parity/compare/seed-105/result.json"))
t = json.load(open("runs/iso/parity/train/summary.json"))
v = c["by_steps"]["300"]["variants"]["model.init=normal"]["val_loss"]
print("compare arm", v, "train", t["val_loss"], "identical" if v == t["val_loss"] else "DIFFERENT")
PY
