#!/usr/bin/env bash
# PREREGISTRATION.md section 4: the earlier record's second corpus (Python 3.11 docs) again, with
# the seed count fixed in advance: 10 seeds, 400-409, 6,000 steps, the earlier record's arms and
# command (TST with the preset's torch init against its own torch-init baseline, the init=normal
# baseline beside), two seeds at a time, then one report over the 10.
#
#   bash benchmarks/second_corpus.sh runs/pydoc-4096      (once: 2,970,242 train tokens)
#   cd /work/wt-confirm && PYTHONPATH=$PWD bash /work/main/benchmarks/records/tuned_cpu-long_2026-12-04/drivers/corpus2.sh
set -euo pipefail
data=${PYDOC:-runs/pydoc-4096}
[ -f "$data/meta.json" ] || { echo "corpus2.sh: no $data: bash benchmarks/second_corpus.sh $data" >&2; exit 1; }
echo "corpus2.sh: $(date -u +%H:%M) seeds 400-409 on $data"
bash benchmarks/confirm_seeds.sh runs/corpus2-rerun 400 10 -- --preset cpu-long --steps 6000 --baseline-lengths 1 \
  --baselines "model.init=normal" --data.path "$data"
echo "corpus2.sh: $(date -u +%H:%M) done"
