"""`superpose eval`: a trained run or checkpoint scored on held-out data, or on lm-eval tasks.

    evaluate_loss(path, data=None)   next-token loss, perplexity and bits per byte on held-out
                                     windows: by default the windows the trainer evaluated (the
                                     run's data directory, data.seq_len, data.val_tokens), with the
                                     arithmetic it trained with, so the numbers match summary.json
    cmd_eval(args)                   the verb: those numbers, or lm-eval tasks
                                     (`interop.lm_eval_tasks.run_tasks`), printed and optionally
                                     written as JSON

It sits above training because the run's arithmetic (autocast, attention kernel) is
`training.perf.compute_context`; the evaluation loop itself is `inference.evaluate.next_token_eval`.
"""

from __future__ import annotations

import argparse
import json
import math
from collections.abc import Callable
from functools import partial
from pathlib import Path

import torch

from .config import Config
from .data import token_byte_lengths, val_windows
from .data.tokenizer import load_tokenizer_file
from .errors import UserError
from .inference.evaluate import next_token_eval, open_eval_data
from .inference.load import load_model, locate
from .training.perf import CUDA_ONLY_ATTENTION, compute_context


def evaluate_loss(path: Path | str, data: Path | str | None = None, val_tokens: int | None = None,
                  batch_size: int | None = None, device: str = "cpu") -> dict:
    """Loss, perplexity and bits per byte of a run or checkpoint on a validation split, computed
    as the trainer computes them: with the run's train.dtype (bf16 autocast) and attention kernel,
    so a run scored on its own data gives its summary.json numbers."""
    src = locate(path)
    ds = open_eval_data(src, data)
    cfg = src.run_config or Config()  # a run that recorded no config: the defaults
    # None means "the run's own"; 0 is a mistake, said below, not the default.
    val_tokens = val_tokens if val_tokens is not None else cfg.data.val_tokens
    batch_size = batch_size if batch_size is not None else cfg.train.batch_size
    if val_tokens < 1 or batch_size < 1:
        raise UserError(f"--val-tokens and --batch-size must be >= 1, got {val_tokens} and {batch_size}")
    model = load_model(src, device)
    device = next(model.parameters()).device
    attention = cfg.train.attention
    if device.type != "cuda" and attention in CUDA_ONLY_ATTENTION:
        attention = "auto"  # a GPU run scored on CPU: the kernel is a speed choice, the arithmetic is the same
    context = partial(compute_context, cfg.train.dtype, attention, device)
    windows = torch.from_numpy(val_windows(ds, src.seq_len, val_tokens, src.model_config.vocab_size))  # (N, L + 1)
    tokenizer = load_tokenizer_file(ds.tokenizer_path)
    token_bytes = torch.from_numpy(token_byte_lengths(tokenizer, src.model_config.vocab_size))  # (V,)
    out = next_token_eval(model, windows, batch_size, device, token_bytes, context)
    return {"model": str(src.path), "step": src.step, "data": ds.spec,
            "seq_len": src.seq_len,
            "val_loss": out["val_loss"], "val_ppl": math.exp(out["val_loss"]), "val_bpb": out["val_bpb"],
            "val_tokens": out["val_tokens"], "val_bytes": out["val_bytes"]}


def cmd_eval(args: argparse.Namespace, log: Callable[[str], None]) -> None:
    from .files import write_text
    from .interop.lm_eval_tasks import run_tasks

    if args.json and Path(args.json).is_dir():  # said before the evaluation, not after it
        raise UserError(f"--json {args.json} is a directory; give a file path for the results, e.g. "
                        f"{Path(args.json) / 'eval.json'}")
    if args.tasks:
        names = [t.strip() for t in args.tasks.split(",") if t.strip()]
        out = run_tasks(args.path, names, data=args.data, limit=args.limit, num_fewshot=args.num_fewshot,
                        batch_size=args.batch_size or 16, device=args.device, log=log)
        print(out.pop("table"))
    else:
        out = evaluate_loss(args.path, data=args.data, val_tokens=args.val_tokens, batch_size=args.batch_size,
                            device=args.device)
        print(f"{out['model']} (step {out['step']}) on {out['data']}: {out['val_tokens']:,} held-out tokens, "
              f"context {out['seq_len']}")
        print(f"val_loss {out['val_loss']:.4f}  perplexity {out['val_ppl']:.2f}  bits/byte {out['val_bpb']:.4f}")
    if args.json:
        write_text(Path(args.json), json.dumps(out, indent=2) + "\n", intact="the results are printed above")
