#!/usr/bin/env bash
# One command on a CUDA machine: the 270M TST config in torchtitan (superpose.titan, one GPU) for a
# few hundred steps through the switch, next to superpose's own trainer on the same shape
# (benchmarks/gpu.py with the Llama-3 vocabulary), and a dated record of both under
# benchmarks/records/. Refuses in one line (exit 2) without an NVIDIA GPU. Needs no network: the
# text and the tokenizer are synthetic (throughput does not depend on them).
#   bash benchmarks/titan_gpu.sh                # 300 steps, the switch at step 150
#   STEPS=500 MICRO=8 bash benchmarks/titan_gpu.sh
set -euo pipefail
cd "$(dirname "$0")/.."
source benchmarks/cuda_setup.sh
export SUPERPOSE_TITAN=1  # scripts/setup.sh then installs superpose[titan] too
cuda_setup benchmarks/titan_gpu.sh
STEPS=${STEPS:-300}
MICRO=${MICRO:-16}      # rows of 2048 positions per micro-batch
ACCUM=${ACCUM:-4}       # micro-batches per optimizer step
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT

# Synthetic documents and a 32k BPE tokenizer trained on them (ids fit the model's 128,256).
.venv/bin/python - "$work" <<'PY'
import json, random, sys
from pathlib import Path
from tokenizers import Tokenizer, models, pre_tokenizers, trainers
d = Path(sys.argv[1]); (d / "data").mkdir()
rng = random.Random(0)
words = ["".join(rng.choice("abcdefghijklmnopqrstuvwxyz") for _ in range(rng.randint(2, 9))) for _ in range(60000)]
docs = [" ".join(rng.choice(words) for _ in range(rng.randint(200, 2000))) for _ in range(20000)]
(d / "data" / "train.jsonl").write_text("".join(json.dumps({"text": t}) + "\n" for t in docs))
tok = Tokenizer(models.BPE(unk_token="<unk>")); tok.pre_tokenizer = pre_tokenizers.Whitespace()
tok.train_from_iterator(docs[:4000], trainers.BpeTrainer(vocab_size=32000, special_tokens=["<unk>", "<s>", "</s>"]))
tok.save(str(d / "tokenizer.json"))
(d / "tokenizer_config.json").write_text(json.dumps({"bos_token": "<s>", "eos_token": "</s>"}))
PY

gpu=$(nvidia-smi --query-gpu=name --format=csv,noheader | head -1 | sed 's/^NVIDIA //; s/[^A-Za-z0-9]\+/-/g; s/-$//')
record="benchmarks/records/titan_gpu_${gpu}_$(date +%Y-%m-%d).md"
[ -e "$record" ] && record="${record%.md}-$(date +%H%M%S).md"
{
  echo "# TST in torchtitan vs superpose's trainer, 270M shape, $gpu ($(date '+%Y-%m-%d %H:%M %Z'))"
  echo
  echo "Command: \`bash benchmarks/titan_gpu.sh\` (STEPS=$STEPS MICRO=$MICRO ACCUM=$ACCUM; git $(git rev-parse --short HEAD 2>/dev/null || echo unknown))"
  echo "torchtitan's tps counts raw tokens (s per position in phase 1); its MFU uses the FLOPs per raw token of the step's phase."
  echo
  echo '```'
  nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv
  .venv/bin/python -c 'import torch, torchtitan; print("torch", torch.__version__, "torchtitan", torchtitan.__version__)'
  echo
  echo "== torchtitan: --module superpose.titan --config tst_llama3_270m (s=6, r=0.5, bf16 FSDP mixed precision)"
  .venv/bin/python -m torch.distributed.run --nproc-per-node 1 -m superpose.titan.train \
    --module superpose.titan --config tst_llama3_270m --hf_assets_path "$work" \
    --dataloader.dataset c4_test --dataloader.dataset_path "$work/data" \
    --training.steps "$STEPS" --training.local_batch_size "$MICRO" \
    --training.global_batch_size $((MICRO * ACCUM)) --tst.ratio 0.5 --lr_scheduler.warmup_steps 20 \
    --metrics.log_freq 10 --checkpoint.no-enable --dump_folder "$work/out" 2>&1 \
    | grep -E "step: |TST|Error|error" || true
  echo
  echo "== superpose's trainer, the same shape (benchmarks/gpu.py, vocabulary 128,256)"
  .venv/bin/python benchmarks/gpu.py --preset 270m --bag-size 6 --micro-batch "$MICRO" --grad-accum "$ACCUM" \
    --set model.vocab_size=128256 2>&1
  echo '```'
} | tee "$record"
echo "benchmarks/titan_gpu.sh: wrote $record" >&2
