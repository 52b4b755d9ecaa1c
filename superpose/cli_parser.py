"""The `superpose` command line's options, verb by verb (what each verb does: cli.py)."""

from __future__ import annotations

import argparse

from .overrides import RESUMABLE

WATCH_EVERY = 10.0  # plot --watch's default seconds between looks at metrics.jsonl


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="superpose", description="Token Superposition Training (arXiv 2605.06546)")
    sub = p.add_subparsers(dest="verb", required=True)
    for add in (_data, _train, _experiments, _plot, _model_verbs):
        add(sub)
    sub.add_parser("presets", help="list the named configs")
    return p


def _data(sub) -> None:
    """prepare and mi: data directories."""
    pp = sub.add_parser("prepare", help="build a tokenized data directory (default corpus or your text)")
    pp.add_argument("--out", required=True, help="data directory to create")
    pp.add_argument("--vocab-size", type=int, default=4096, help="BPE vocabulary size (default 4096)")
    pp.add_argument("--text", nargs="+", metavar="PATH", help="your own text: .txt/.md, .jsonl/.json (also .gz, .zst), "
                    ".parquet, .arrow files, folders of them, or datasets save_to_disk folders")
    pp.add_argument("--hf-dataset", metavar="NAME", help="a Hugging Face dataset (datasets.load_dataset, streamed), "
                    "or a builder such as json/parquet with --data-files")
    pp.add_argument("--hf-config", metavar="NAME", help="the dataset's configuration (subset)")
    pp.add_argument("--data-files", nargs="+", metavar="PATH", help="local files for --hf-dataset json/parquet/...")
    pp.add_argument("--split", default="train", help="the dataset split to read (default train)")
    pp.add_argument("--text-field", default="text", help="the field/column holding the text (default text)")
    pp.add_argument("--tokens", metavar="FILE", help="import token ids without re-tokenizing: a nanoGPT .bin or a .npy "
                    "(with --tokenizer, the tokenizer that made them)")
    pp.add_argument("--token-dtype", choices=["uint16", "uint32"], help="a raw .bin's token type (default uint16)")
    pp.add_argument("--tokenizer", metavar="TOKENIZER", help="use this tokenizer (a tokenizer.json, or a folder holding "
                    "one) instead of training one")
    pp.add_argument("--eot-token", metavar="TOKEN", help="the end-of-document token (default: <|endoftext|>, "
                    "<|end_of_text|>, </s>, <eos> or <|eot_id|>, whichever the tokenizer has)")
    pp.add_argument("--progress", action="store_true", help="a progress bar even when stderr is not a terminal")
    pp.add_argument("--val-fraction", type=float, default=0.02, help="share of each source held out (default 0.02)")
    pp.add_argument("--seed", type=int, default=0, help="seed of the validation split")
    pm = sub.add_parser("mi", help="token-pair mutual information by distance and its fit, for tst.weights=mi")
    pm.add_argument("--data", metavar="DATA_DIR", help="prepared data directory (default: the default corpus)")
    pm.add_argument("--vocab-size", type=int, default=4096, help="the default corpus's tokenizer size (default 4096)")
    pm.add_argument("--max-distance", type=int, default=16, help="largest distance d measured (default 16)")
    pm.add_argument("--max-tokens", type=int, default=4_000_000, help="train tokens sampled (default 4M)")


def _train(sub) -> None:
    """train: a new run, or a resumed one."""
    pt = sub.add_parser("train", help="train with TST: phase 1 (bags) then phase 2 (next token)",
                        epilog="Any config field can be overridden: --tst.bag_size=6 --train.steps 2000 ... "
                        "Data parallel: torchrun --nproc_per_node N -m superpose train ... --parallel.mode ddp|fsdp")
    pt.add_argument("--preset", help="named config: see `superpose presets`")
    pt.add_argument("--config", metavar="FILE", help="a config file (.toml, .yaml or .json, or a run directory's "
                    "config.json) over the preset (or the defaults); --section.field overrides go over both")
    pt.add_argument("--print-config", action="store_true", help="print the resolved config as JSON and exit")
    pt.add_argument("--out", help="run directory to create")
    pt.add_argument("--resume", metavar="RUN_DIR", help="continue RUN_DIR from its newest checkpoint, exactly "
                    f"(only {', '.join('--' + entry for entry in RESUMABLE)} may change; under torchrun at any "
                    "number of processes)")
    pt.add_argument("--init-from-hf", metavar="HF_DIR", help="start from a Hugging Face Llama or Qwen3-MoE folder's "
                    "weights; the architecture comes from its config.json, the data must use its tokenizer")


def _experiments(sub) -> None:
    """compare and sweep: many runs and their reports."""
    pc = sub.add_parser("compare", help="TST vs the matched-FLOPs baseline over seeds: report.md + plots",
                        epilog="Config overrides (--section.field=value) apply to both arms.")
    pc.add_argument("--preset", help="named config: see `superpose presets`")
    pc.add_argument("--config", metavar="FILE", help="a config file over the preset (see train --config)")
    pc.add_argument("--out", required=True, help="directory for the runs, report.md, report.json and plots")
    pc.add_argument("--seeds", type=int, default=3, help="number of seeds (default 3)")
    pc.add_argument("--seed0", type=int, default=0, help="first seed (default 0)")
    pc.add_argument("--bag-size", type=int, help="s of the TST arm (default: the preset's)")
    pc.add_argument("--ratio", type=float, help="r of the TST arm (default: the preset's)")
    pc.add_argument("--baseline-lengths", default="0.5,0.75,1,1.25,1.5,2",
                    help="baseline lengths as multiples of the TST steps, each decayed (default 0.5,...,2)")
    pc.add_argument("--steps", help="TST run lengths to scan, e.g. 300,600,1200 (default: the preset's "
                    "train.steps): the gain at each, its trend with length and the predicted crossover; one "
                    "baseline trunk per seed serves every length")
    pc.add_argument("--baselines", metavar="VARIANTS", help="more baselines to beat, e.g. \"model.init=normal;"
                    "model.init=titan;optim.lr=6e-3,model.init=normal\" (';' between variants, ',' between the fields "
                    "of one): each is one more baseline trunk per seed in the same lock-step, and each length also "
                    "reports TST's gain against the best baseline (the lowest mean final loss there)")
    pc.add_argument("--baseline-grid", metavar="GRID", help="a tuning grid of baselines, every combination one more "
                    "baseline, e.g. \"optim.lr=1e-3,1.5e-3,2e-3,3e-3;model.init=torch,normal\" (';' between fields, "
                    "',' between the values of one); the best baseline is then the best cell, and a best cell on the "
                    "grid's edge is reported")
    pc.add_argument("--tst-grid", metavar="GRID", help="the same for TST's own arm (tst.* fields allowed): every "
                    "combination is one more TST arm per seed, and TST is the cell with the lowest mean final loss")
    ps = sub.add_parser("sweep", help="the r x s grid of final losses, resumable",
                        epilog="Config overrides (--section.field=value) apply to every cell.")
    ps.add_argument("--preset", help="named config: see `superpose presets`")
    ps.add_argument("--config", metavar="FILE", help="a config file over the preset (see train --config)")
    ps.add_argument("--out", required=True, help="directory for the cells, sweep.md, sweep.json, the heat map")
    ps.add_argument("--bag-sizes", default="2,3,4,6,8", help="comma-separated s values (default 2,3,4,6,8)")
    ps.add_argument("--ratios", default="0.1,0.2,0.3,0.4,0.6", help="comma-separated r values (default 0.1,...,0.6)")
    ps.add_argument("--seeds", type=int, default=1, help="number of seeds (default 1)")
    ps.add_argument("--seed0", type=int, default=0, help="first seed (default 0)")


def _plot(sub) -> None:
    """plot: runs drawn from their metrics.jsonl."""
    pl = sub.add_parser("plot", help="draw runs from their metrics.jsonl: train/val loss, LR, grad norm; --watch "
                        "redraws while they train")
    pl.add_argument("runs", nargs="+", metavar="RUN_DIR", help="run directories (each has a metrics.jsonl)")
    pl.add_argument("--out", metavar="PNG", help="the image to write (default: RUN_DIR/plot.png for one run; "
                    "required for several)")
    pl.add_argument("--x", default="step", metavar="step|tokens|time", help="x axis: optimizer steps, raw tokens "
                    "read, or wall clock since the run started (default step)")
    pl.add_argument("--watch", action="store_true", help="redraw whenever a metrics.jsonl grows, until every run "
                    "has finished (its summary.json) or Ctrl-C")
    pl.add_argument("--every", type=float, default=WATCH_EVERY, metavar="SECONDS",
                    help=f"--watch: seconds between looks at the metrics (default {WATCH_EVERY:g})")


def _model_verbs(sub) -> None:
    """export, generate and eval: what a trained run or checkpoint is used for."""
    pe = sub.add_parser("export", help="write a run's model as a Hugging Face folder (LlamaForCausalLM or "
                        "Qwen3MoeForCausalLM)")
    pe.add_argument("path", metavar="RUN_DIR_OR_CHECKPOINT")
    pe.add_argument("--hf", required=True, metavar="OUT_DIR", help="folder to create (config.json, model.safetensors, "
                    "tokenizer files)")
    pe.add_argument("--dtype", default="float32", choices=["float32", "bfloat16", "float16"],
                    help="weight dtype (default float32)")
    pg = sub.add_parser("generate", help="sample text from a run or checkpoint")
    pg.add_argument("path", metavar="RUN_DIR_OR_CHECKPOINT")
    pg.add_argument("--prompt", required=True, help="the text to continue")
    pg.add_argument("--max-new-tokens", type=int, default=100, help="tokens to sample at most (default 100)")
    pg.add_argument("--temperature", type=float, default=0.8, help="0 = greedy (default 0.8)")
    pg.add_argument("--top-k", type=int, default=50, help="sample among the k likeliest tokens; 0 = all (default 50)")
    pg.add_argument("--seed", type=int, help="seed of the sampler (default: random)")
    pg.add_argument("--device", default="cpu", help="cpu, cuda, ... (default cpu)")
    pv = sub.add_parser("eval", help="validation loss, perplexity, bits per byte; or lm-eval tasks (--tasks)")
    pv.add_argument("path", metavar="RUN_DIR_OR_CHECKPOINT")
    pv.add_argument("--data", metavar="DATA_DIR", help="data directory (default: the run's own); its validation split "
                    "is used")
    pv.add_argument("--val-tokens", type=int, help="held-out tokens to score (default: the run's data.val_tokens)")
    pv.add_argument("--tasks", metavar="PATH.yaml|NAME[,...]", help="lm-eval tasks: task yaml files, superpose_cloze "
                    "(built from held-out text, offline), or lm-eval names such as hellaswag (need the HF hub)")
    pv.add_argument("--limit", type=int, help="score only the first N examples of each task")
    pv.add_argument("--num-fewshot", type=int, help="few-shot examples per task (default: the task's, usually 0)")
    pv.add_argument("--batch-size", type=int, help="rows per forward pass (default: the run's train.batch_size; 16 "
                    "for tasks)")
    pv.add_argument("--device", default="cpu", help="cpu, cuda, ... (default cpu)")
    pv.add_argument("--json", metavar="PATH", help="also write the results to this JSON file")
