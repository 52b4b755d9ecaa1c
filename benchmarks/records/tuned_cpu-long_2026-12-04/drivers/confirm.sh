#!/usr/bin/env bash
# PREREGISTRATION.md section 2 on both corpora, once the screen has named the arms: seeds 300-307,
# each one compare (the tuned baseline as compare's own, decayed at 12,000, 15,000 and 18,000 steps;
# TST as its one --tst-grid cell), two seeds at a time on the two cores (benchmarks/confirm_seeds.sh),
# then one report over the 8 seeds. Resumable: a finished seed is reused, an interrupted one
# continues from its checkpoints. Run from a checkout frozen for the confirmation (NOTES.md):
#
#   cd /work/wt-confirm && PYTHONPATH=$PWD nohup setsid bash \
#     /work/main/benchmarks/records/tuned_cpu-long_2026-12-04/drivers/confirm.sh > runs/confirm.log 2>&1 &
set -euo pipefail
drivers=$(cd "$(dirname "$0")" && pwd)
# SIZE=d32: the second size's confirmation (section 2): d = 32, 3,000 steps, the default corpus only
size=(); [ "${SIZE:-}" = d32 ] && size=(--size d32)
picked=$(python3 "$drivers/arms.py" --compare-args "${size[@]}") || { echo "confirm.sh: the screen has not named the arms yet (python3 $drivers/arms.py ${size[*]})" >&2; exit 1; }
mapfile -t arms <<<"$picked"
big=${BIG_CORPUS:-runs/bigcorpus-v4096}
if [ "${SIZE:-}" = d32 ]; then
  common=(--preset cpu-long --steps 3000 --model.dim=32 --model.ffn_dim=96 --baseline-lengths 1,1.25,1.5 "${arms[@]}")
  echo "confirm.sh: $(date -u +%H:%M) d = 32, default corpus: ${common[*]}"
  bash benchmarks/confirm_seeds.sh runs/confirm-d32 300 8 -- "${common[@]}" --data.val_tokens=229376
  echo "confirm.sh: $(date -u +%H:%M) done"
  exit 0
fi
common=(--preset cpu-long --steps 12000 --baseline-lengths 1,1.25,1.5 "${arms[@]}")
# CORPUS=default or CORPUS=big runs one corpus only (the order of the sections' runs is free; the
# seeds, arms and analysis are not); unset, both, the default corpus first.
corpus=${CORPUS:-both}
if [ "$corpus" != big ]; then
  echo "confirm.sh: $(date -u +%H:%M) default corpus: ${common[*]}"
  bash benchmarks/confirm_seeds.sh runs/confirm-default 300 8 -- "${common[@]}" --data.val_tokens=229376
fi
[ "$corpus" = default ] && { echo "confirm.sh: $(date -u +%H:%M) done"; exit 0; }
[ -f "$big/meta.json" ] || { echo "confirm.sh: no non-repeating corpus at $big: build it with benchmarks/big_corpus.sh (NOTES of records/big_corpus_2026-12-04)" >&2; exit 1; }
echo "confirm.sh: $(date -u +%H:%M) non-repeating corpus $big"
# --checkpoint.every=1000 (the preset saves only every 30 minutes of wall time): a session that ends
# mid-seed then loses at most 1,000 steps of each arm. Checkpoints change no bits of a run.
bash benchmarks/confirm_seeds.sh runs/confirm-big 300 8 -- "${common[@]}" --data.path "$big" --data.val_tokens=262144 \
  --checkpoint.every=1000
echo "confirm.sh: $(date -u +%H:%M) done"
