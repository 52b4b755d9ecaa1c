#!/usr/bin/env bash
# Run `superpose compare` on several seeds two at a time (2 cores: one torch thread and one core
# each), then write one report over all of them. compare itself runs its seeds one after another in
# one process; this splits them over processes, and the final compare reuses every finished seed
# (same config, lengths and baselines) and only writes the report.
#
#   bash benchmarks/confirm_seeds.sh OUT SEED0 NSEEDS -- COMPARE_ARGS...
#
# e.g. (issue 21's fresh-seed confirmation):
#   bash benchmarks/confirm_seeds.sh runs/confirm 100 5 -- --preset cpu-long --steps 3000,6000 \
#       --baseline-lengths 1 --baselines "model.init=normal"
# Each seed's compare log is OUT/parts/seed-K.log; the report is OUT/all/report.md. CONFIRM_CORES
# lists the cores to use, in the order the queues take them (default: all).
set -euo pipefail
cd "$(dirname "$0")/.."
out=${1:?usage: confirm_seeds.sh OUT SEED0 NSEEDS -- COMPARE_ARGS...}; seed0=${2:?}; n=${3:?}
shift 3; [ "${1:-}" = "--" ] && shift
args=("$@")  # compare's own arguments
mkdir -p "$out/parts" "$out/all"
final=(.venv/bin/superpose compare "${args[@]}" --train.threads=1 --seeds "$n" --seed0 "$seed0" --out "$out/all")
# all/ is this experiment's own compare directory, which the final compare continues: mark it as
# compare marks its --out (superpose's sealed mark, with the command that finishes it) before any
# seed is copied in, or compare refuses a folder of seed-* it did not make.
.venv/bin/python - "$out/all" "$(printf '%q ' "${final[@]}")" <<'PY'
import sys
from pathlib import Path

from superpose.training.ownership import begin_experiment

begin_experiment(Path(sys.argv[1]), "compare", sys.argv[2].strip())
PY
core_ids=(${CONFIRM_CORES:-$(seq 0 $(($(nproc) - 1)))})  # e.g. CONFIRM_CORES="1 0": the first seed on core 1
cores=${#core_ids[@]}
seeds=($(seq "$seed0" $((seed0 + n - 1))))
run_seed() {  # one seed's compare, pinned to core $2, copied into all/ when it finished
  local k=$1 core=$2
  [ -f "$out/all/seed-$k/result.json" ] && return 0
  taskset -c "$core" .venv/bin/superpose compare "${args[@]}" --train.threads=1 --seeds 1 --seed0 "$k" \
      --out "$out/parts/seed-$k" > "$out/parts/seed-$k.log" 2>&1 || { echo "seed $k failed: $out/parts/seed-$k.log" >&2; return 1; }
  cp -r "$out/parts/seed-$k/seed-$k" "$out/all/"
}
# One queue per core, each running its seeds one after another: two runs never share a core.
for q in $(seq 0 $((cores - 1))); do
  (for i in "${!seeds[@]}"; do
     [ $((i % cores)) -eq "$q" ] && run_seed "${seeds[$i]}" "${core_ids[$q]}" || true
   done) &
done
wait
"${final[@]}"
