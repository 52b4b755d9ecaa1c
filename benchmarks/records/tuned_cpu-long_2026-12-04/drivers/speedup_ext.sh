#!/usr/bin/env bash
# Exploratory, after the pre-registered runs (not part of them): on the 3 confirmation seeds whose
# TST loss the tuned baseline did not reach even at 18,000 steps (300, 303, 306: bounds, >= 1.5x),
# the same compare with the baseline decayed at 21,000 and 24,000 steps (--baseline-lengths
# 1.75,2), so that their speedup is read between measured lengths too. The TST arm is the
# confirmation's own run again (the same seed and config: its loss must come out identical, a
# check). Two seeds at a time, one core each; resumable (checkpoints every 1,000 steps). From the
# frozen checkout of the confirmation:
#
#   cd /work/wt-confirm && PYTHONPATH=$PWD nohup setsid bash \
#     /work/main/benchmarks/records/tuned_cpu-long_2026-12-04/drivers/speedup_ext.sh > runs/speedup-ext.log 2>&1 &
set -uo pipefail
drivers=$(cd "$(dirname "$0")" && pwd)
mapfile -t arms < <(python3 "$drivers/arms.py" --compare-args)
out=runs/speedup-ext; mkdir -p "$out"
one() {  # seed, core
  [ -f "$out/seed-$1/seed-$1/result.json" ] && return 0
  taskset -c "$2" .venv/bin/superpose compare --preset cpu-long --steps 12000 --baseline-lengths 1.75,2 "${arms[@]}" \
    --data.val_tokens=229376 --train.threads=1 --checkpoint.every=1000 --seeds 1 --seed0 "$1" \
    --out "$out/seed-$1" >> "$out/seed-$1.log" 2>&1 || echo "speedup_ext.sh: seed $1 failed: $out/seed-$1.log" >&2
}
echo "speedup_ext.sh: $(date -u +%H:%M) seeds 300, 303, 306: ${arms[*]}"
(one 300 0; one 306 0) & (one 303 1) & wait
echo "speedup_ext.sh: $(date -u +%H:%M) done"
