#!/bin/bash
# threads=1 vs threads=2 on cpu-long: step time and whether the losses are bit-identical.
cd /work/main
for th in 1 2; do
  rm -rf runs/speed/t$th
  /usr/bin/time -f "threads=$th wall %e s" .venv/bin/superpose train --preset cpu-long --train.steps=600 \
      --train.threads=$th --train.seed=105 --model.init=torch --out runs/speed/t$th > runs/speed/t$th.log 2>&1
  tail -1 runs/speed/t$th.log
done
.venv/bin/python - <<'PY'
import json
def recs(p): return [json.loads(l) for l in open(p)]
a, b = (recs(f"runs/speed/t{t}/metrics.jsonl") for t in (1, 2))
ta = [r for r in a if r["type"] == "train"]; tb = [r for r in b if r["type"] == "train"]
same = sum(x["loss"] == y["loss"] for x, y in zip(ta, tb))
print(f"identical train losses: {same}/{len(ta)}; last {ta[-1]['loss']} vs {tb[-1]['loss']}")
print("train_time_s", ta[-1].get("train_time_s"), tb[-1].get("train_time_s"))
PY
