"""The `superpose` command line: thin verbs over the library.

    superpose prepare --out DATA_DIR [--vocab-size N] [--text PATH ...] [--tokenizer tokenizer.json]
    superpose train --preset NAME --out RUN_DIR [--section.field=value | --section.field value ...]
    superpose presets

Every mistake a user can make ends in one line on stderr and exit status 2, no traceback.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from .errors import UserError


def _log(msg: str) -> None:
    print(msg, file=sys.stderr, flush=True)


def cmd_prepare(args: argparse.Namespace) -> None:
    from . import corpus
    from .prepare import cache_dir, prepare

    if args.text:
        sources = corpus.text_sources([Path(p) for p in args.text])
    else:
        sources = corpus.default_sources(cache_dir() / "downloads", log=_log)
    prepare(Path(args.out), sources, vocab_size=args.vocab_size,
            tokenizer=Path(args.tokenizer) if args.tokenizer else None,
            val_fraction=args.val_fraction, seed=args.seed, log=_log)


def cmd_train(args: argparse.Namespace, overrides: list[str]) -> None:
    from .config import resolve
    from .trainer import run_training

    cfg = resolve(args.preset, overrides)
    run_training(cfg, Path(args.out), log=_log)


def cmd_presets(_: argparse.Namespace) -> None:
    from .config import PRESETS

    print(f"{'preset':<10} {'params':>8} {'d':>4} {'layers':>6} {'L':>5} {'B':>5} {'steps':>6} {'s':>3} {'r':>4} {'lr':>7}")
    for name, make in PRESETS.items():
        c = make()
        m = c.model.resolve()
        print(f"{name:<10} {_approx_params(c):>8} {m.dim:>4} {m.n_layers:>6} {c.data.seq_len:>5} "
              f"{c.train.batch_size:>5} {c.train.steps:>6} {c.tst.bag_size:>3} {c.tst.ratio:>4} {c.optim.lr:>7.0e}")


def _approx_params(c) -> str:
    m, v = c.model, c.model.vocab_size or c.data.vocab_size
    per_layer = m.dim * m.head_dim * (2 * m.n_heads + 2 * m.n_kv_heads) + 3 * m.dim * m.ffn_dim
    n = m.n_layers * per_layer + v * m.dim * (1 if m.tie_embeddings else 2)
    return f"{n / 1e6:.1f}M"


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="superpose", description="Token Superposition Training (arXiv 2605.06546)")
    sub = p.add_subparsers(dest="verb", required=True)
    pp = sub.add_parser("prepare", help="build a tokenized data directory (default corpus or your text)")
    pp.add_argument("--out", required=True, help="data directory to create")
    pp.add_argument("--vocab-size", type=int, default=4096, help="BPE vocabulary size (default 4096)")
    pp.add_argument("--text", nargs="+", metavar="PATH", help="your own .txt/.md/.jsonl files or folders")
    pp.add_argument("--tokenizer", metavar="tokenizer.json", help="use this tokenizer instead of training one")
    pp.add_argument("--val-fraction", type=float, default=0.02, help="share of each source held out (default 0.02)")
    pp.add_argument("--seed", type=int, default=0, help="seed of the validation split")
    pt = sub.add_parser("train", help="train with TST: phase 1 (bags) then phase 2 (next token)",
                        epilog="Any config field can be overridden: --tst.bag_size=6 --train.steps 2000 ...")
    pt.add_argument("--preset", required=True, help="named config: see `superpose presets`")
    pt.add_argument("--out", required=True, help="run directory to create")
    sub.add_parser("presets", help="list the named configs")
    return p


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args, extra = parser.parse_known_args(argv)
    try:
        if args.verb == "train":
            cmd_train(args, extra)
        elif extra:
            parser.error(f"unrecognized arguments: {' '.join(extra)}")
        elif args.verb == "prepare":
            cmd_prepare(args)
        else:
            cmd_presets(args)
    except UserError as e:
        print(f"superpose: error: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("superpose: interrupted", file=sys.stderr)
        return 130
    return 0
