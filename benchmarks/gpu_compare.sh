#!/usr/bin/env bash
# The crossover study on one GPU (issue 10): a 3-seed length scan of TST against the matched-FLOPs
# baseline on the gpu-30m preset, in under 8 minutes of GPU time on one H100/H200 (setup and
# compile included), writing a dated record under benchmarks/records/ and printing the gain at each
# length with its 95% interval and the predicted crossover.
#
#   bash benchmarks/gpu_compare.sh                      # default corpus (prepared if missing)
#   bash benchmarks/gpu_compare.sh --data DIR           # a `superpose prepare` directory (recommended:
#                                                       # >= 100M tokens, so nothing repeats)
#   bash benchmarks/gpu_compare.sh --steps 500,1000,2000 --seeds 3 [--section.field=value ...]
#
# How it is sized (FLOP arithmetic; `--dry-run` prints it for the arguments given):
#   gpu-30m: d=512, 8 layers, SwiGLU 1408, vocab 4096 -> 27.5M matmul parameters incl. the LM head;
#   training FLOPs per position = 6 x 27.5M + 12 x 8 x 512 x 256 (attention) = 0.18 GFLOP.
#   A step is 32 rows x 256 positions = 8,192 positions = 1.5 TFLOP (the same in both phases:
#   phase 1 puts s tokens into each position).
#   A scan over lengths T_1 < ... < T_n per seed trains the TST arms (sum T_i) and ONE baseline
#   trunk (T_n) with decay branches (20% of each shorter length): for 500,1000,2000 that is
#   3,500 + 2,000 + 300 = 5,800 steps per seed, 17,400 for 3 seeds = 26 PFLOP.
#   At a sustained 150 TFLOP/s in bf16 (~15-20% MFU: a 30M model at 8k positions per step is
#   bound by kernel launches and the optimizer, not by the tensor cores) that is ~3 minutes,
#   plus ~1-2 minutes of setup and evaluation: inside the 8-minute budget with room for a rerun.
#   No torch.compile: every run of the scan is its own model, and recompiling each would cost more
#   than it saves at these lengths.
# Data: the default corpus has 11.2M training tokens; the 2000-step baseline reads 16.4M (1.5
# epochs) and TST at s=4, r=0.3 reads 1.9x that. Repeated text favours the arm that reads less
# (the baseline), so a corpus of >= 100M tokens (`--data`) is the fair setting; the record says
# which was used.
set -euo pipefail
cd "$(dirname "$0")/.."
data="" steps="500,1000,2000" seeds=3 dry=0 extra=()
while [ $# -gt 0 ]; do
  case "$1" in
    --data) data="$2"; shift 2 ;;
    --steps) steps="$2"; shift 2 ;;
    --seeds) seeds="$2"; shift 2 ;;
    --dry-run) dry=1; shift ;;
    *) extra+=("$1"); shift ;;
  esac
done
if [ "$dry" = 0 ]; then
  source benchmarks/cuda_setup.sh
  cuda_setup benchmarks/gpu_compare.sh "or use --dry-run to see the plan"
fi
PY=${PY:-.venv/bin/python}
"$PY" - "$steps" "$seeds" <<'EOF'
import sys
from superpose.presets import preset
from superpose.core.llama import Transformer
import torch
steps = [int(x) for x in sys.argv[1].split(",")]
seeds = int(sys.argv[2])
c = preset("gpu-30m")
c.model.vocab_size = c.model.vocab_size or c.data.vocab_size
with torch.device("meta"):
    m = Transformer(c.model)
per_step = m.flops_per_position(c.data.seq_len) * c.train.batch_size * c.data.seq_len
trunk = steps[-1] + sum(round(c.optim.decay_frac * t) for t in steps[:-1])
total = seeds * (sum(steps) + trunk)
print(f"gpu_compare plan: {m.num_params() / 1e6:.1f}M parameters, {per_step / 1e12:.2f} TFLOP per step; "
      f"{seeds} seeds x ({sum(steps)} TST + {trunk} baseline steps) = {total:,} steps = {total * per_step / 1e15:.1f} PFLOP "
      f"= {total * per_step / 150e12 / 60:.1f} min at 150 TFLOP/s", flush=True)
EOF
[ "$dry" = 1 ] && exit 0
gpu=$(nvidia-smi --query-gpu=name --format=csv,noheader | head -1 | sed 's/^NVIDIA //; s/[^A-Za-z0-9]\+/-/g; s/-$//')
out="benchmarks/records/gpu_compare_${gpu}_$(date +%Y-%m-%d)"
[ -e "$out" ] && out="${out}-$(date +%H%M%S)"
args=(compare --preset gpu-30m --steps "$steps" --seeds "$seeds" --baseline-lengths 1 --out "$out"
      --train.device=cuda)
[ -n "$data" ] && args+=(--data.path "$data")
start=$(date +%s)
.venv/bin/superpose "${args[@]}" "${extra[@]}" 2>&1 | tee "$out.log"
# Keep the record small: reports, plots and per-seed results, not the runs' weights.
find "$out" \( -name '*.safetensors' -o -name 'checkpoints' \) -prune -exec rm -rf {} +
mv "$out.log" "$out/compare.log"
{
  echo "# GPU length scan on $gpu ($(date '+%Y-%m-%d %H:%M %Z'))"
  echo
  echo "Command: \`bash benchmarks/gpu_compare.sh $*\` (git $(git rev-parse --short HEAD 2>/dev/null || echo unknown)), $(( $(date +%s) - start )) s of wall clock for the scan."
  echo
  echo '```'
  nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv
  echo '```'
  echo
  echo "Report: [report.md](report.md)"
} > "$out/RECORD.md"
echo "benchmarks/gpu_compare.sh: wrote $out" >&2
