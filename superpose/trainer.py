"""The two-phase trainer: one run, one optimizer, one learning-rate schedule, one data stream.

    for step in 0..T-1:
        phase = lookup(phases, step)                 # phase 1: bags of s; phase 2: s = 1
        rows  = loader.next_rows(B, s * L)           # (B, s*L + 1) raw tokens, position carried on
        loss  = sum over micro-batches of superposed_loss(...) / global valid-target count
        clip, AdamW step with lr = wsd_lr(step)      # the schedule never looks at the phase
        log one JSON line; evaluate next-token loss on held-out tokens every eval_every steps

With s = 1 every TST function reduces to the ordinary computation, so a baseline run (r = 0 or
s = 1) and phase 2 run exactly the code of plain next-token training.
"""

from __future__ import annotations

import json
import math
import os
import platform
import shutil
import sys
import time
from pathlib import Path
from typing import Callable

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor

from .config import Config, save_config
from .data import Dataset, TrainLoader, bits_per_byte, open_dataset, token_byte_lengths, val_windows
from .errors import UserError
from .model import Transformer, build_model
from .schedule import Phase, build_phases, lookup, wsd_lr
from .superposition import count_valid_targets, multi_hot_cross_entropy, next_bag_targets, superpose_embeddings


def superposed_loss(model: Transformer, rows: Tensor, bag_size: int, weights: str = "uniform") -> Tensor:
    """Summed (multi-hot) next-token loss of one micro-batch; divide by the global target count.

    rows: (b, s*L + 1) raw tokens. Inputs are the first s*L, next-token labels the last s*L.
    With bag_size = 1 this is model(x) and a summed F.cross_entropy, bit for bit.
    """
    x, y = rows[:, :-1], rows[:, 1:]  # (b, s*L) each
    h = superpose_embeddings(model.embed(x), bag_size)  # (b, L, D)
    logits = model(inputs_embeds=h)  # (b, L, V)
    return multi_hot_cross_entropy(logits, next_bag_targets(y, bag_size), weights, reduction="sum")


def resolve_device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name.startswith("cuda") and not torch.cuda.is_available():
        raise UserError(f"train.device={name} but no CUDA GPU is available; use --train.device=cpu")
    return torch.device(name)


def configure_optimizer(model: Transformer, cfg: Config) -> torch.optim.AdamW:
    """AdamW; weight decay on matrices only (not norms, not the embedding)."""
    decay, no_decay = [], []
    for name, p in model.named_parameters():
        (decay if p.ndim >= 2 and "embed_tokens" not in name else no_decay).append(p)
    o = cfg.optim
    groups = [{"params": decay, "weight_decay": o.weight_decay}, {"params": no_decay, "weight_decay": 0.0}]
    return torch.optim.AdamW(groups, lr=o.lr, betas=(o.beta1, o.beta2), eps=o.eps)


class MetricsLog:
    """Append-only JSONL sink, flushed every line so a crash loses nothing logged."""

    def __init__(self, path: Path):
        self._f = open(path, "a", buffering=1)

    def write(self, record: dict) -> None:
        self._f.write(json.dumps(record) + "\n")

    def close(self) -> None:
        self._f.close()


def environment() -> dict:
    return {"python": platform.python_version(), "torch": torch.__version__, "numpy": np.__version__,
            "platform": platform.platform(), "cpu_count": os.cpu_count(), "threads": torch.get_num_threads(),
            "cuda": torch.cuda.get_device_name() if torch.cuda.is_available() else None}


class Trainer:
    def __init__(self, cfg: Config, run_dir: Path, dataset: Dataset, log: Callable[[str], None] = print):
        self.cfg, self.run_dir, self.ds, self.log = cfg, run_dir, dataset, log
        tr, d = cfg.train, cfg.data
        if tr.threads:
            torch.set_num_threads(tr.threads)
        self.device = resolve_device(tr.device)
        if cfg.model.vocab_size == 0:
            cfg.model.vocab_size = dataset.vocab_size
        elif cfg.model.vocab_size < dataset.vocab_size:
            raise UserError(f"model.vocab_size={cfg.model.vocab_size} is smaller than the tokenizer's "
                            f"{dataset.vocab_size} tokens in {dataset.path}; set --model.vocab_size=0 (= from data)")
        torch.manual_seed(tr.seed)  # the same seed gives the same initial weights in every arm
        self.model = build_model(cfg.model, self.device)
        self.optimizer = configure_optimizer(self.model, cfg)
        self.phases = build_phases(tr.steps, cfg.tst.ratio, cfg.tst.bag_size)
        self.loader = TrainLoader(dataset.train, dataset.train_docs, seed=tr.seed, vocab_size=cfg.model.vocab_size)
        self.val = torch.from_numpy(val_windows(dataset, d.seq_len, d.val_tokens))  # (N, L + 1)
        from tokenizers import Tokenizer

        tokenizer = Tokenizer.from_file(str(dataset.tokenizer_path))
        self.token_bytes = torch.from_numpy(token_byte_lengths(tokenizer, cfg.model.vocab_size))  # (V,)
        self.autocast_dtype = torch.bfloat16 if tr.dtype == "bfloat16" else None
        self.step, self.tokens_seen, self.train_time, self.elapsed_offset = 0, 0, 0.0, 0.0
        self.last_eval: dict = {}

    # ------------------------------------------------------------------ accounting

    def data_plan(self) -> dict:
        """Raw tokens each phase will read, against the size of the train split."""
        B, L = self.cfg.train.batch_size, self.cfg.data.seq_len
        plan = {"train_tokens": self.loader.tokens_per_epoch}
        for p in self.phases:
            plan[f"phase{p.index}_tokens"] = p.num_steps * B * L * p.bag_size
        plan.setdefault("phase1_tokens", 0)
        plan.setdefault("phase2_tokens", 0)
        plan["total_tokens"] = plan["phase1_tokens"] + plan["phase2_tokens"]
        return plan

    def warn_about_repeats(self) -> None:
        plan = self.data_plan()
        n = plan["train_tokens"]
        self.log(f"data: phase 1 reads {plan['phase1_tokens']:,} and phase 2 {plan['phase2_tokens']:,} raw tokens; "
                 f"the train split has {n:,} ({plan['total_tokens'] / n:.2f} epochs in all)")
        if plan["phase1_tokens"] > n:
            self.log(f"warning: phase 1 alone reads {plan['phase1_tokens'] / n:.2f} epochs of the train split, so it "
                     "repeats data. TST trades data for compute: with repeated data its gain can vanish (a 2M-parameter "
                     "run lost it on a 3M-token corpus). Use more data, or a smaller tst.ratio or tst.bag_size.")
        elif plan["total_tokens"] > n:
            self.log(f"warning: the run reads {plan['total_tokens'] / n:.2f} epochs of the train split, so phase 2 "
                     "repeats data")

    # ------------------------------------------------------------------ steps

    def _autocast(self):
        return torch.autocast(self.device.type, dtype=self.autocast_dtype, enabled=self.autocast_dtype is not None)

    def train_step(self, phase: Phase) -> dict:
        cfg = self.cfg
        B, L, s, accum = cfg.train.batch_size, cfg.data.seq_len, phase.bag_size, cfg.train.grad_accum
        lr = wsd_lr(self.step, cfg.train.steps, cfg.optim.lr, cfg.optim.warmup_steps, cfg.optim.decay_frac,
                    cfg.optim.min_lr_ratio, cfg.optim.decay_shape)
        for group in self.optimizer.param_groups:
            group["lr"] = lr
        t0 = time.perf_counter()
        rows = torch.from_numpy(self.loader.next_rows(B, s * L)).to(self.device)  # (B, s*L + 1)
        data_time = time.perf_counter() - t0
        # The normaliser is fixed before any forward pass, over the whole global batch, so the
        # sum of micro-batch gradients equals the gradient of the full-batch mean exactly.
        targets = next_bag_targets(rows[:, 1:], s)  # (B, L, s)
        denom = count_valid_targets(targets, cfg.tst.weights)
        loss_total = torch.zeros((), device=self.device)
        for micro in rows.chunk(accum):
            with self._autocast():
                loss = superposed_loss(self.model, micro, s, cfg.tst.weights) / denom
            loss.backward()
            loss_total += loss.detach()
        clip = cfg.optim.grad_clip if cfg.optim.grad_clip > 0 else math.inf
        grad_norm = torch.nn.utils.clip_grad_norm_(self.model.parameters(), clip)
        self.optimizer.step()
        self.optimizer.zero_grad(set_to_none=True)
        self.tokens_seen += B * L * s
        return {"loss": loss_total.item(), "lr": lr, "grad_norm": grad_norm.item(), "data_time_s": data_time}

    @torch.no_grad()
    def evaluate(self) -> dict:
        """Next-token loss and bits per byte on the fixed held-out windows (in every phase)."""
        self.model.eval()
        nll_sum, n_targets, nll_bytes, n_bytes = 0.0, 0, 0.0, 0
        for batch in self.val.split(self.cfg.train.batch_size):
            batch = batch.to(self.device)
            x, y = batch[:, :-1], batch[:, 1:]
            with self._autocast():
                logits = self.model(x)
            nll = F.cross_entropy(logits.flatten(0, 1).float(), y.flatten(), reduction="none")  # (b*L,)
            nbytes = self.token_bytes.to(self.device)[y.flatten()]
            nll_sum += nll.sum().item()
            n_targets += nll.numel()
            # Bits per byte leave out tokens that stand for no text (end-of-text), as nanochat does.
            nll_bytes += nll[nbytes > 0].sum().item()
            n_bytes += int(nbytes.sum().item())
        self.model.train()
        return {"val_loss": nll_sum / n_targets, "val_bpb": bits_per_byte(nll_bytes, n_bytes)}

    # ------------------------------------------------------------------ the run

    def begin(self, progress: bool = True) -> None:
        """Create the run directory, write the config, open the metrics log, say what will run."""
        cfg, tr = self.cfg, self.cfg.train
        self.run_dir.mkdir(parents=True, exist_ok=True)
        save_config(cfg, self.run_dir / "config.json")
        self.metrics = MetricsLog(self.run_dir / "metrics.jsonl")
        self.log(f"model: {self.model.num_params():,} parameters ({self.model.num_params(non_embedding=True):,} "
                 f"non-embedding) on {self.device}; {tr.steps} steps of {tr.batch_size} x {cfg.data.seq_len} positions")
        for p in self.phases:
            what = f"bags of s={p.bag_size}, multi-hot next-bag loss" if p.index == 1 else "next-token loss"
            self.log(f"phase {p.index} ({p.name}): steps {p.start}-{p.end - 1}, {what}")
        self.warn_about_repeats()
        self.bar = _progress(tr.steps, enabled=progress)
        self.t_start = time.perf_counter() - self.elapsed_offset

    def step_once(self) -> dict:
        """One optimizer step, its metrics line, and an evaluation when one is due."""
        cfg, tr = self.cfg, self.cfg.train
        phase = lookup(self.phases, self.step)
        if self.step > 0 and lookup(self.phases, self.step - 1) is not phase:
            self.log(f"step {self.step}: switching to phase {phase.index} ({phase.name}); parameters, "
                     "optimizer state, LR schedule and data position carry over")
        t0 = time.perf_counter()
        out = self.train_step(phase)
        if not math.isfinite(out["loss"]):
            raise UserError(f"loss is {out['loss']} at step {self.step} (phase {phase.index}); lower "
                            "--optim.lr or raise --optim.warmup_steps")
        step_time = time.perf_counter() - t0
        self.train_time += step_time
        rec = {"type": "train", "step": self.step, "phase": phase.index, "bag_size": phase.bag_size,
               "loss": out["loss"], "lr": out["lr"], "grad_norm": out["grad_norm"],
               "tokens_seen": self.tokens_seen, "epoch": self.loader.epoch_progress,
               "elapsed_s": time.perf_counter() - self.t_start, "train_time_s": self.train_time,
               "step_time_s": step_time, "data_time_s": out["data_time_s"],
               "tokens_per_s": tr.batch_size * cfg.data.seq_len * phase.bag_size / step_time}
        self.metrics.write(rec)
        last = self.step == tr.steps - 1
        if last or (tr.eval_every and (self.step + 1) % tr.eval_every == 0):
            self.last_eval = self.evaluate()
            self.metrics.write({"type": "eval", "step": self.step, "phase": phase.index, "bag_size": phase.bag_size,
                                "tokens_seen": self.tokens_seen, "elapsed_s": time.perf_counter() - self.t_start,
                                "train_time_s": self.train_time, **self.last_eval})
        self.bar.update(rec, self.last_eval, self.log, force=last or (self.step + 1) % tr.log_every == 0)
        self.step += 1
        return rec

    def finish(self) -> dict:
        """Close the log, save the final model and summary."""
        self.bar.close()
        self.metrics.close()
        summary = {"steps": self.cfg.train.steps, "tokens_seen": self.tokens_seen,
                   "wall_s": time.perf_counter() - self.t_start, "train_time_s": self.train_time,
                   "parameters": self.model.num_params(), **self.last_eval, "data_dir": str(self.ds.path),
                   "data": self.data_plan(), "environment": environment()}
        self.save_final(summary)
        self.log(f"done: val_loss {self.last_eval['val_loss']:.4f}, val_bpb {self.last_eval['val_bpb']:.4f}, "
                 f"{summary['wall_s']:.0f}s; model in {self.run_dir}")
        return summary

    def train(self, progress: bool = True) -> dict:
        self.begin(progress)
        while self.step < self.cfg.train.steps:
            self.step_once()
        return self.finish()

    # ------------------------------------------------------------------ state

    def state_dict(self) -> dict:
        """Everything that determines the rest of the run (tensors are live references: copy
        with `copy.deepcopy` to keep a snapshot)."""
        return {"model": self.model.state_dict(), "optimizer": self.optimizer.state_dict(),
                "loader": self.loader.state_dict(), "step": self.step, "tokens_seen": self.tokens_seen,
                "train_time_s": self.train_time, "elapsed_s": time.perf_counter() - self.t_start,
                "last_eval": dict(self.last_eval), "torch_rng": torch.get_rng_state()}

    def load_state_dict(self, state: dict) -> None:
        self.model.load_state_dict(state["model"])
        self.optimizer.load_state_dict(state["optimizer"])
        self.loader.load_state_dict(state["loader"])
        self.step, self.tokens_seen = int(state["step"]), int(state["tokens_seen"])
        self.train_time, self.elapsed_offset = float(state["train_time_s"]), float(state["elapsed_s"])
        self.last_eval = dict(state["last_eval"])
        torch.set_rng_state(state["torch_rng"])

    def save_final(self, summary: dict) -> None:
        """The final model: plain Llama weights + architecture + tokenizer. Nothing about TST."""
        from safetensors.torch import save_model

        save_model(self.model, str(self.run_dir / "model.safetensors"))
        (self.run_dir / "model.json").write_text(json.dumps(self.cfg.model.to_dict(), indent=2) + "\n")
        shutil.copyfile(self.ds.tokenizer_path, self.run_dir / "tokenizer.json")
        (self.run_dir / "summary.json").write_text(json.dumps(summary, indent=2) + "\n")


class _progress:
    """A tqdm bar on a terminal; plain log lines every `log_every` steps elsewhere (CI, files)."""

    def __init__(self, total: int, enabled: bool = True):
        self.tty = sys.stderr.isatty()
        self.bar = None
        self.enabled = enabled
        if self.tty and enabled:
            from tqdm import tqdm

            self.bar = tqdm(total=total, unit="step", dynamic_ncols=True)
        self.total = total

    def update(self, rec: dict, ev: dict, log: Callable[[str], None], force: bool) -> None:
        val = f" val {ev['val_loss']:.3f}" if ev else ""
        if self.bar is not None:
            self.bar.set_postfix_str(f"phase {rec['phase']} s={rec['bag_size']} loss {rec['loss']:.3f}{val} "
                                     f"{rec['tokens_per_s'] / 1e3:.1f}k tok/s", refresh=False)
            self.bar.update(1)
        elif force and self.enabled:
            done = rec["step"] + 1
            eta = rec["elapsed_s"] / done * (self.total - done)
            log(f"step {done}/{self.total} phase {rec['phase']} s={rec['bag_size']} loss {rec['loss']:.4f}{val} "
                f"lr {rec['lr']:.2e} gnorm {rec['grad_norm']:.2f} {rec['tokens_per_s'] / 1e3:.1f}k tok/s "
                f"epoch {rec['epoch']:.3f} eta {eta:.0f}s")

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()


def run_training(cfg: Config, run_dir: Path, log: Callable[[str], None] = print) -> dict:
    """Resolve the data (preparing the default corpus on first use), then train."""
    if (run_dir / "metrics.jsonl").exists():
        raise UserError(f"{run_dir} already holds a run; choose another --out")
    return Trainer(cfg, run_dir, resolve_data(cfg, log), log).train()


def resolve_data(cfg: Config, log: Callable[[str], None] = print) -> Dataset:
    """The run's data directory, preparing the default corpus on first use when data.path is empty."""
    from .prepare import ensure_default_corpus

    return open_dataset(Path(cfg.data.path) if cfg.data.path else ensure_default_corpus(cfg.data.vocab_size, log))
