#!/usr/bin/env bash
# One command on a CUDA machine where the project is set up (bash scripts/setup.sh once, with
# PyPI; this script then needs no network): the 270M TST config in torchtitan (superpose.titan,
# one GPU) for a few hundred steps through the switch, reading pre-tokenized superpose shards
# (tst_llama3_270m_data), next to superpose's own trainer on the same shape (benchmarks/gpu.py
# with the Llama-3 vocabulary), and a dated record of both under benchmarks/records/. The record
# is written whatever happens; the script exits non-zero if either run fails. Refuses in one line
# (exit 2) without an NVIDIA GPU. The text and the tokenizer are synthetic (throughput does not
# depend on them). Each TST log line says the share of the step time spent loading data, so the
# record shows whether the loader keeps up with phase 1's s-times-more text.
#   bash benchmarks/titan_gpu.sh                # 300 steps, the switch at step 150
#   STEPS=500 MICRO=8 bash benchmarks/titan_gpu.sh
#   STEPS=100 DOCS=4000 bash benchmarks/titan_gpu.sh   # a shorter check (fewer synthetic documents to tokenize)
set -euo pipefail
cd "$(dirname "$0")/.."
source benchmarks/cuda_setup.sh
cuda_setup benchmarks/titan_gpu.sh
.venv/bin/python -c 'import superpose.titan' || { echo "benchmarks/titan_gpu.sh: superpose.titan does not import in .venv (above); rerun bash scripts/setup.sh" >&2; exit 2; }
STEPS=${STEPS:-300}
MICRO=${MICRO:-16}      # rows of 2048 positions per micro-batch
ACCUM=${ACCUM:-4}       # micro-batches per optimizer step
DOCS=${DOCS:-20000}     # synthetic documents of 200-2,000 words for the tokenizer and the shards
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT

start_record titan_gpu  # sets $gpu and $record; all output from here goes to the terminal and the record
echo "# TST in torchtitan vs superpose's trainer, 270M shape, $gpu ($(date '+%Y-%m-%d %H:%M %Z'))"
echo
echo "Command: \`bash benchmarks/titan_gpu.sh\` (STEPS=$STEPS MICRO=$MICRO ACCUM=$ACCUM DOCS=$DOCS; git $(git rev-parse --short HEAD 2>/dev/null || echo unknown))"
echo "torchtitan's tps counts positions (L per row in both phases); the TST lines give raw tokens/s (s per"
echo "position in phase 1) and the share of time spent loading data."
echo
echo '```'
nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv
.venv/bin/python -c 'import torch, torchtitan; print("torch", torch.__version__, "torchtitan", torchtitan.__version__)'

# Synthetic documents, a 32k BPE trained on them, tokenized once into a superpose data directory.
.venv/bin/python - "$work" "$DOCS" <<'PY'
import json, random, sys
from pathlib import Path
d = Path(sys.argv[1])
rng = random.Random(0)
words = ["".join(rng.choice("abcdefghijklmnopqrstuvwxyz") for _ in range(rng.randint(2, 9))) for _ in range(60000)]
docs = [" ".join(rng.choice(words) for _ in range(rng.randint(200, 2000))) for _ in range(int(sys.argv[2]))]
(d / "docs.jsonl").write_text("".join(json.dumps({"text": t}) + "\n" for t in docs))
PY
start=$(date +%s)
.venv/bin/superpose prepare --text "$work/docs.jsonl" --vocab-size 32000 --out "$work/data"
echo "prepare: $(( $(date +%s) - start )) s"

status=0
echo
echo "== torchtitan: --module superpose.titan --config tst_llama3_270m_data (s=6, r=0.5, bf16 FSDP mixed precision)"
.venv/bin/python -m torch.distributed.run --nproc-per-node 1 -m superpose.titan.train \
  --module superpose.titan --config tst_llama3_270m_data --dataloader.path "$work/data" \
  --training.steps "$STEPS" --training.local_batch_size "$MICRO" \
  --training.global_batch_size $((MICRO * ACCUM)) --tst.ratio 0.5 --lr_scheduler.warmup_steps 20 \
  --metrics.log_freq 10 --checkpoint.no-enable --dump_folder "$work/out" \
  --parallelism.spmd_backend partial_dtensor >"$work/titan.log" 2>&1 || status=$?
grep -E "step: |TST|Error|error|Traceback" "$work/titan.log" || true
[ "$status" = 0 ] || { echo "torchtitan run FAILED (exit $status); its last lines:"; tail -40 "$work/titan.log"; }
echo
echo "== superpose's trainer, the same shape (benchmarks/gpu.py, vocabulary 128,256)"
.venv/bin/python benchmarks/gpu.py --preset 270m --bag-size 6 --micro-batch "$MICRO" --grad-accum "$ACCUM" \
  --set model.vocab_size=128256 || { s=$?; echo "superpose's trainer FAILED (exit $s)"; status=$((status ? status : s)); }
echo '```'
echo "exit status: $status"
echo "benchmarks/titan_gpu.sh: wrote $record" >&2
exit "$status"
