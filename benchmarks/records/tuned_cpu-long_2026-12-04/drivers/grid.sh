#!/usr/bin/env bash
# Issue 30's 12,000-step tuning grid on the screen seeds, one `superpose train` run per cell, so
# the grid survives being stopped: a cell with summary.json is done, one with a run directory is
# continued with `train --resume` from its newest checkpoint (bit for bit), others start fresh.
# Each cell is one arm: "tst" (the preset's s = 4, r = 0.3) or "base" (r = 0), an init and a rate,
# and for stage 2 a warmup and a decay fraction (default 100 and 0.2, the stage-1 schedule; a cell
# with other values is named ...-wWARMUP-dDECAY).
#
#   usage: grid.sh SEED ARM:INIT:LR[:WARMUP:DECAY] ...     e.g. grid.sh 0 base:normal:1e-3 tst:torch:2e-3:400:0.4
#   two at a time on 2 cores, one torch thread each (drivers/README in NOTES.md has the exact calls)
set -euo pipefail
seed=$1; shift
root=${GRID_OUT:-runs/tune12k}
# Each finished cell's summary, config and metrics are copied into the record (runs/ does not
# outlive the machine; the record does once committed).
keep=${GRID_RECORD:-$(cd "$(dirname "$0")/.." && pwd)/screen}
# The second size (PREREGISTRATION.md section 2): GRID_TAG=d32- GRID_STEPS=3000
# GRID_MODEL="--model.dim=32 --model.ffn_dim=96" names its cells d32-... and trains that shape.
tag=${GRID_TAG:-}; steps=${GRID_STEPS:-12000}; model=(${GRID_MODEL:-})
common=(--preset cpu-long --train.steps="$steps" --train.seed="$seed" --train.threads=1 "${model[@]}"
        --data.val_tokens=229376 --train.eval_every=$((steps / 12)) --checkpoint.every=500 --checkpoint.every_minutes=5)
for cell in "$@"; do
  IFS=: read -r arm init lr warmup decay <<<"$cell"
  warmup=${warmup:-100}; decay=${decay:-0.2}
  case $arm in
    tst) tst=() ;;
    base) tst=(--tst.ratio=0) ;;
    *) echo "grid.sh: unknown arm $arm in $cell (tst or base)" >&2; exit 2 ;;
  esac
  sched=""; [ "$warmup:$decay" = 100:0.2 ] || sched="-w$warmup-d$decay"
  out=$root/$tag$arm-$init-lr$lr$sched-s$seed
  name=$(basename "$out")
  if [ -f "$keep/$name/summary.json" ]; then continue; fi
  if [ -f "$out/summary.json" ]; then :  # finished, not yet copied
  elif [ -d "$out/checkpoints" ] && ls "$out"/checkpoints/step-* >/dev/null 2>&1; then
    nice -n 19 .venv/bin/superpose train --resume "$out" --train.threads=1
  else
    rm -rf "$out"
    nice -n 19 .venv/bin/superpose train "${common[@]}" "${tst[@]}" --model.init="$init" --optim.lr="$lr" \
      --optim.warmup_steps="$warmup" --optim.decay_frac="$decay" --out "$out"
  fi
  mkdir -p "$keep/$name" && cp "$out"/summary.json "$out"/config.json "$out"/metrics.jsonl "$keep/$name/"
  echo "grid.sh: $cell seed $seed: $(python3 -c "import json,sys; print(json.load(open(sys.argv[1]))['val_loss'])" "$out/summary.json")"
done
