"""The two-phase trainer: one run, one optimizer, one learning-rate schedule, one data stream.

    for step in 0..T-1:
        phase = lookup(phases, step)                 # phase 1: bags of s; phase 2: s = 1
        rows  = loader.next_rows(B, s * L)           # (B, s*L + 1) raw tokens, position carried on
        loss  = sum over micro-batches of superposed_loss(...) / global valid-target count
        clip, AdamW step with lr = wsd_lr(step)      # the schedule never looks at the phase
        log one JSON line; evaluate next-token loss on held-out tokens every eval_every steps
        every checkpoint.every steps, and on SIGINT/SIGTERM: save RUN_DIR/checkpoints/step-N/

A NaN or Inf in the loss or the gradients is caught before the optimizer step, so it never
reaches the weights: the run stops (train.on_nan=stop) or drops that batch (skip). A resumed run
(`run_training(..., resume=True)`) continues bit for bit where the checkpoint left off.

With s = 1 every TST function reduces to the ordinary computation, so a baseline run (r = 0 or
s = 1) and phase 2 run exactly the code of plain next-token training.

Under torchrun (parallel.mode ddp or fsdp) every rank runs this same loop on its rows of the
global batch, with the collectives of `distributed.py`; in one process those are no-ops.
"""

from __future__ import annotations

import json
import math
import platform
import shutil
import signal
import threading
import time
from pathlib import Path
from typing import Callable

import torch
import torch.nn.functional as F
from torch import Tensor

from ..config import Config, save_config
from ..core.model import Transformer, build_model
from ..core.schedule import Phase, build_phases, lookup, wsd_lr
from ..data import Dataset, TrainLoader, open_dataset, token_byte_lengths, val_windows
from ..errors import Interrupted, UserError
from ..inference.evaluate import bits_per_byte
from . import checkpoint, distributed
from .metrics import MetricsLog, environment
from .metrics import NoMetrics as _NoMetrics
from .metrics import Progress as _progress
from .metrics import quiet as _quiet
from .metrics import truncate_metrics as _truncate_metrics
from .perf import attention_kernel, auto_loss_chunk_rows, keep_freed_memory
from .resume import _sha256_file, check_compatible
from ..core.superposition import (
    chunked_multi_hot_cross_entropy,
    count_valid_targets,
    multi_hot_cross_entropy,
    next_bag_targets,
    superpose_token_embeddings,
)


def superposed_loss(model: Transformer, rows: Tensor, bag_size: int, weights: str = "uniform",
                    chunk_rows: int = 0) -> Tensor:
    """Summed (multi-hot) next-token loss of one micro-batch; divide by the global target count.

    rows: (b, s*L + 1) raw tokens. Inputs are the first s*L, next-token labels the last s*L.
    With bag_size = 1 this is model(x) and a summed F.cross_entropy, bit for bit.
    chunk_rows > 0 fuses the LM head into the loss, that many positions at a time, so the
    (b*L, V) logits never exist at once (`chunked_multi_hot_cross_entropy`).
    """
    x, y = rows[:, :-1], rows[:, 1:]  # (b, s*L) each
    # = superpose_embeddings(model.embed(x), bag_size), with the lookup and bag mean fused
    h = model.embed(x) if bag_size == 1 else superpose_token_embeddings(x, model.embed_tokens.weight, bag_size)
    targets = next_bag_targets(y, bag_size)  # (b, L, s)
    if chunk_rows:
        hidden = model(inputs_embeds=h, return_hidden=True)  # (b, L, D)
        return chunked_multi_hot_cross_entropy(hidden, model.lm_head.weight, targets, weights, chunk_rows=chunk_rows)
    logits = model(inputs_embeds=h)  # (b, L, V)
    return multi_hot_cross_entropy(logits, targets, weights, reduction="sum")


def resolve_device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name.startswith("cuda") and not torch.cuda.is_available():
        raise UserError(f"train.device={name} but no CUDA GPU is available; use --train.device=cpu")
    return torch.device(name)


def configure_optimizer(model: Transformer, cfg: Config) -> torch.optim.AdamW:
    """AdamW; weight decay on matrices only (not norms; not the embedding unless
    optim.decay_embeddings)."""
    o = cfg.optim
    decay, no_decay = [], []
    for name, p in model.named_parameters():
        (decay if p.ndim >= 2 and (o.decay_embeddings or "embed_tokens" not in name) else no_decay).append(p)
    groups = [{"params": decay, "weight_decay": o.weight_decay}, {"params": no_decay, "weight_decay": 0.0}]
    # fused=None (not False) is torch's own default, so optim.fused=false keeps today's kernels.
    return torch.optim.AdamW(groups, lr=o.lr, betas=(o.beta1, o.beta2), eps=o.eps, fused=True if o.fused else None)



class Trainer:
    def __init__(self, cfg: Config, run_dir: Path, dataset: Dataset, log: Callable[[str], None] = print,
                 init_from_hf: Path | None = None):
        self.cfg, self.run_dir, self.ds, self.log = cfg, run_dir, dataset, log
        tr, d = cfg.train, cfg.data
        if tr.threads:
            torch.set_num_threads(tr.threads)
        # Under torchrun: join the job (rank, world size, cuda:LOCAL_RANK); otherwise one process.
        self.par = distributed.setup(cfg.parallel.mode, resolve_device(tr.device), cfg.parallel.timeout_s,
                                     cfg.parallel.mixed_precision)
        self.device = self.par.device
        if not self.par.is_main:  # only rank 0 talks
            self.log = log = _quiet
        for note in self.par.notes:
            log(note)
        W, K = self.par.world_size, tr.grad_accum
        if self.par.distributed and tr.batch_size % (W * K):
            near = W * K * max(1, round(tr.batch_size / (W * K)))
            raise UserError(f"train.batch_size={tr.batch_size} (the global batch) must be divisible by the {W} "
                            f"processes x train.grad_accum={K}: each process takes batch_size/{W} rows in {K} "
                            f"micro-batches; use a multiple of {W * K}, e.g. --train.batch_size={near}")
        if init_from_hf is not None:
            from ..interop.hf_llama import check_hf_tokenizer

            check_hf_tokenizer(init_from_hf, dataset)
        if cfg.model.vocab_size == 0:
            cfg.model.vocab_size = dataset.vocab_size
        elif cfg.model.vocab_size < dataset.vocab_size:
            raise UserError(f"model.vocab_size={cfg.model.vocab_size} is smaller than the tokenizer's "
                            f"{dataset.vocab_size} tokens in {dataset.path}; set --model.vocab_size=0 (= from data)")
        torch.manual_seed(tr.seed)  # the same seed gives the same initial weights in every arm
        self.model = build_model(cfg.model, self.device)
        if init_from_hf is not None:  # continue training a Hugging Face Llama (cfg.model is its architecture)
            from ..interop.hf_llama import init_from_hf as load_hf_weights

            load_hf_weights(self.model, init_from_hf)
            log(f"model: weights from the Hugging Face folder {init_from_hf}")
        # train.compile: model, bag superposition and loss compiled as one function (one graph per
        # phase, since bag_size and the row length are baked in; dynamic=False keeps it that way).
        self.loss_fn = torch.compile(superposed_loss, dynamic=False) if tr.compile else superposed_loss
        attention_kernel(tr.attention, self.device)  # refuses a kernel this device lacks, now
        if tr.keep_freed_memory and self.device.type == "cpu":
            keep_freed_memory()  # step-sized CPU buffers are reused, not page-faulted in again (perf.py)
        # train.loss_chunk_rows = -1 (auto): decided once from a micro-batch's positions (either
        # phase has L of them), the vocabulary and the device.
        micro_positions = tr.batch_size // (tr.grad_accum * self.par.world_size) * d.seq_len
        self.loss_chunk_rows = (tr.loss_chunk_rows if tr.loss_chunk_rows >= 0 else auto_loss_chunk_rows(
            micro_positions, cfg.model.vocab_size, cfg.model.dim, self.device))
        # Data parallel: the module a step calls (DDP, or FSDP2 with self.model's parameters sharded
        # in place); None in one process, which calls superposed_loss(self.model, ...) itself.
        self.fwd = (distributed.wrap(self.model, self.par, self.loss_fn, cfg.parallel.mixed_precision)
                    if self.par.distributed else None)
        self.optimizer = configure_optimizer(self.model, cfg)
        self.phases = build_phases(tr.steps, cfg.tst.ratio, cfg.tst.bag_size)
        self.loader = TrainLoader(dataset.train, dataset.train_docs, seed=tr.seed, vocab_size=cfg.model.vocab_size)
        self.val = torch.from_numpy(val_windows(dataset, d.seq_len, d.val_tokens))  # (N, L + 1)
        from tokenizers import Tokenizer

        tokenizer = Tokenizer.from_file(str(dataset.tokenizer_path))
        self.token_bytes = torch.from_numpy(token_byte_lengths(tokenizer, cfg.model.vocab_size))  # (V,)
        self.autocast_dtype = torch.bfloat16 if tr.dtype == "bfloat16" else None
        self.step, self.tokens_seen, self.train_time, self.elapsed_offset = 0, 0, 0.0, 0.0
        self.skipped_steps = 0
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

    def _attention(self):
        return attention_kernel(self.cfg.train.attention, self.device)

    def train_step(self, phase: Phase) -> dict:
        cfg = self.cfg
        B, L, s, accum = cfg.train.batch_size, cfg.data.seq_len, phase.bag_size, cfg.train.grad_accum
        lr = wsd_lr(self.step, cfg.train.steps, cfg.optim.lr, cfg.optim.warmup_steps, cfg.optim.decay_frac,
                    cfg.optim.min_lr_ratio, cfg.optim.decay_shape)
        for group in self.optimizer.param_groups:
            group["lr"] = lr
        t0 = time.perf_counter()
        # Data parallel: this rank reads only its rows of the global batch, (B/W, s*L + 1).
        keep = self.par.rows(B) if self.par.distributed else None
        rows = torch.from_numpy(self.loader.next_rows(B, s * L, keep)).to(self.device)  # (B, s*L + 1)
        data_time = time.perf_counter() - t0
        # The normaliser is fixed before any forward pass, over the whole global batch (summed over
        # ranks), so the sum of micro-batch and rank gradients equals the gradient of the
        # full-batch mean exactly.
        targets = next_bag_targets(rows[:, 1:], s)  # (B, L, s)
        denom = self.par.sum(count_valid_targets(targets, cfg.tst.weights))
        loss_total = torch.zeros((), device=self.device)
        micros = rows.chunk(accum)
        for i, micro in enumerate(micros):
            # Gradients are summed over ranks on the last micro-batch only (DDP no_sync / FSDP).
            with distributed.grad_sync(self.fwd, self.par, last=i == len(micros) - 1):
                with self._autocast(), self._attention():
                    args = (micro, s, cfg.tst.weights, self.loss_chunk_rows)
                    loss = (self.loss_fn(self.model, *args) if self.fwd is None else self.fwd(*args)) / denom
                loss.backward()
            loss_total += loss.detach()
        # clip_grad_norm_ split in two, so a NaN or Inf is seen before anything touches the weights
        # (the same arithmetic: clip_grad_norm_ is these two calls). Under FSDP the gradients are
        # DTensor shards and the norm is the global one.
        params = [p for p in self.model.parameters() if p.grad is not None]
        grad_norm = torch.nn.utils.get_total_norm([p.grad for p in params])
        # The global loss, and one finiteness decision taken by every rank alike.
        loss, norm, finite = distributed.step_stats(self.par, loss_total, grad_norm)
        bad_grads = []
        if finite:
            clip = cfg.optim.grad_clip if cfg.optim.grad_clip > 0 else math.inf
            torch.nn.utils.clip_grads_with_norm_(params, clip, grad_norm)
            self.optimizer.step()
        else:
            bad_grads = [n for n, p in self.model.named_parameters()  # this rank's shards under FSDP
                         if p.grad is not None and not bool(torch.isfinite(distributed.local(p.grad)).all())]
        self.optimizer.zero_grad(set_to_none=True)
        self.tokens_seen += B * L * s  # read either way: a skipped batch is not read again
        return {"loss": loss, "lr": lr, "grad_norm": norm, "data_time_s": data_time, "finite": finite,
                "bad_grads": bad_grads}

    @torch.no_grad()
    def evaluate(self) -> dict:
        """Next-token loss and bits per byte on the fixed held-out windows (in every phase)."""
        self.model.eval()
        nll_sum, n_targets, nll_bytes, n_bytes = 0.0, 0, 0.0, 0
        for batch in self.val.split(self.cfg.train.batch_size):
            batch = batch.to(self.device)
            x, y = batch[:, :-1], batch[:, 1:]
            with self._autocast(), self._attention():  # under FSDP through the root module, which gathers the weights
                logits = self.model(x) if self.par.mode != "fsdp" else self.fwd(x, logits=True)
            nll = F.cross_entropy(logits.flatten(0, 1).float(), y.flatten(), reduction="none")  # (b*L,)
            nbytes = self.token_bytes.to(self.device)[y.flatten()]
            nll_sum += nll.sum().item()
            n_targets += nll.numel()
            # Bits per byte leave out tokens that stand for no text (end-of-text), as nanochat does.
            nll_bytes += nll[nbytes > 0].sum().item()
            n_bytes += int(nbytes.sum().item())
        self.model.train()
        distributed.reshard(self.fwd, self.par)
        return {"val_loss": nll_sum / n_targets, "val_bpb": bits_per_byte(nll_bytes, n_bytes)}

    # ------------------------------------------------------------------ the run

    def begin(self, progress: bool = True) -> None:
        """Create the run directory, write the config, open the metrics log, say what will run."""
        cfg, tr = self.cfg, self.cfg.train
        self.par.barrier()  # every rank has checked the run directory before rank 0 writes into it
        if self.par.is_main:  # only rank 0 writes files
            self.run_dir.mkdir(parents=True, exist_ok=True)
            save_config(cfg, self.run_dir / "config.json")
            self.metrics = MetricsLog(self.run_dir / "metrics.jsonl")
        else:
            self.metrics = _NoMetrics()
        if self.par.distributed:
            share = tr.batch_size // self.par.world_size
            self.log(f"parallel: {self.par.mode} over {self.par.world_size} processes on {self.device.type}; each "
                     f"reads {share} of the {tr.batch_size} rows of a step, in {tr.grad_accum} micro-batch(es) of "
                     f"{share // tr.grad_accum}")
        self.log(f"model: {self.model.num_params():,} parameters ({self.model.num_params(non_embedding=True):,} "
                 f"non-embedding) on {self.device}; {tr.steps} steps of {tr.batch_size} x {cfg.data.seq_len} positions")
        for p in self.phases:
            what = f"bags of s={p.bag_size}, multi-hot next-bag loss" if p.index == 1 else "next-token loss"
            self.log(f"phase {p.index} ({p.name}): steps {p.start}-{p.end - 1}, {what}")
        self.warn_about_repeats()
        self.bar = _progress(tr.steps, enabled=progress and self.par.is_main, initial=self.step)
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
        if not out["finite"]:
            self._non_finite(phase, out)
        step_time = time.perf_counter() - t0
        self.train_time += step_time
        # JSON has no NaN: a skipped step logs loss and grad_norm as null and "skipped": true.
        rec = {"type": "train", "step": self.step, "phase": phase.index, "bag_size": phase.bag_size,
               "loss": out["loss"] if out["finite"] else None, "lr": out["lr"],
               "grad_norm": out["grad_norm"] if out["finite"] else None,
               "tokens_seen": self.tokens_seen, "epoch": self.loader.epoch_progress,
               "elapsed_s": time.perf_counter() - self.t_start, "train_time_s": self.train_time,
               "step_time_s": step_time, "data_time_s": out["data_time_s"],
               "tokens_per_s": tr.batch_size * cfg.data.seq_len * phase.bag_size / step_time,
               "skipped_steps": self.skipped_steps}
        if not out["finite"]:
            rec["skipped"] = True
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

    def _non_finite(self, phase: Phase, out: dict) -> None:
        """Step-level diagnostics for a NaN/Inf, then stop (UserError) or count the skipped batch."""
        bad = out["bad_grads"]
        weights_ok = self.par.all_true(all(bool(torch.isfinite(distributed.local(p)).all())
                                           for p in self.model.parameters()))
        where = f"step {self.step} (phase {phase.index}, s={phase.bag_size}, lr {out['lr']:.3g})"
        grads = (f"non-finite gradients in {len(bad)} tensors: {', '.join(bad[:4])}{', ...' if len(bad) > 4 else ''}"
                 if bad else "all gradients finite")
        self.log(f"non-finite at {where}: loss {out['loss']}, grad_norm {out['grad_norm']}; {grads}; weights "
                 f"{'all finite' if weights_ok else 'NOT finite'}; the update was not applied")
        self.metrics.write({"type": "non_finite", "step": self.step, "phase": phase.index, "bag_size": phase.bag_size,
                            "loss": str(out["loss"]), "grad_norm": str(out["grad_norm"]), "lr": out["lr"],
                            "bad_grads": bad, "action": self.cfg.train.on_nan})
        if self.cfg.train.on_nan == "skip":
            self.skipped_steps += 1
            self.log(f"step {self.step}: batch skipped (train.on_nan=skip), {self.skipped_steps} skipped so far")
            return
        found = checkpoint.checkpoints(self.run_dir)
        kept = (f"the last checkpoint {found[-1][1].name} is untouched; lower --optim.lr or raise "
                "--optim.warmup_steps in a new run, or resume with --train.on_nan=skip to drop such batches"
                if found else "no checkpoint was written; lower --optim.lr or raise --optim.warmup_steps, or "
                "set --train.on_nan=skip to drop such batches")
        raise UserError(f"loss is {out['loss']} and grad_norm {out['grad_norm']} at {where}; stopped before the "
                        f"update, {kept}")

    def finish(self) -> dict:
        """Close the log, save the final model and summary."""
        self.bar.close()
        self.metrics.close()
        summary = {"steps": self.cfg.train.steps, "tokens_seen": self.tokens_seen,
                   "skipped_steps": self.skipped_steps,
                   "wall_s": time.perf_counter() - self.t_start, "train_time_s": self.train_time,
                   "parameters": self.model.num_params(), **self.last_eval, "data_dir": str(self.ds.path),
                   "parallel": {"mode": self.par.mode, "world_size": self.par.world_size},
                   "data": self.data_plan(), "environment": environment()}
        self.save_final(summary)
        self.log(f"done: val_loss {self.last_eval['val_loss']:.4f}, val_bpb {self.last_eval['val_bpb']:.4f}, "
                 f"{summary['wall_s']:.0f}s; model in {self.run_dir}")
        self.par.barrier()  # no rank leaves before rank 0 has written the model
        return summary

    def train(self, progress: bool = True) -> dict:
        """begin, step_once until the end, finish; checkpoints every `checkpoint.every` steps.

        SIGINT/SIGTERM let the current step finish, save a checkpoint and raise `Interrupted`; a
        second signal stops at once, without saving (the last checkpoint stays as it was).
        """
        steps, every = self.cfg.train.steps, self.cfg.checkpoint.every
        self.begin(progress)
        with _StopSignals(abort_on_repeat=not self.par.distributed) as stop:
            try:
                while self.step < steps:
                    checkpoint.signal_hook(self.step)
                    distributed.fail_hook(self.par.rank, self.step)
                    self.step_once()
                    if every and self.step % every == 0:
                        self.save_checkpoint()
                    # Ranks may see a signal at different steps; they agree to stop after the same one.
                    signum = self.par.max_int(stop.signum or 0)
                    if signum and self.step < steps:
                        name = signal.Signals(signum).name
                        path = self.save_checkpoint(reason=name)
                        again = "torchrun --nproc_per_node N -m superpose" if self.par.distributed else "superpose"
                        raise Interrupted(signum, f"stopped by {name} after step {self.step - 1}; saved "
                                          f"{path}; continue with: {again} train --resume {self.run_dir}")
            except BaseException:
                self.bar.close()
                self.metrics.close()
                raise
            return self.finish()

    # ------------------------------------------------------------------ state

    def state_dict(self) -> dict:
        """Everything that determines the rest of the run (tensors are live references: copy
        with `copy.deepcopy` to keep a snapshot)."""
        state = {"model": self.model.state_dict(), "optimizer": self.optimizer.state_dict(),
                 "loader": self.loader.state_dict(), "step": self.step, "tokens_seen": self.tokens_seen,
                 "skipped_steps": self.skipped_steps, "train_time_s": self.train_time,
                 "elapsed_s": time.perf_counter() - self.t_start if hasattr(self, "t_start") else self.elapsed_offset,
                 "last_eval": dict(self.last_eval), "torch_rng": torch.get_rng_state()}
        if self.device.type == "cuda":
            state["cuda_rng"] = torch.cuda.get_rng_state_all()
        return state

    def load_state_dict(self, state: dict) -> None:
        self.model.load_state_dict(state["model"])
        self.optimizer.load_state_dict(state["optimizer"])
        self.loader.load_state_dict(state["loader"])
        self.step, self.tokens_seen = int(state["step"]), int(state["tokens_seen"])
        self.skipped_steps = int(state.get("skipped_steps", 0))
        self.train_time, self.elapsed_offset = float(state["train_time_s"]), float(state["elapsed_s"])
        self.last_eval = dict(state["last_eval"])
        torch.set_rng_state(state["torch_rng"])
        if "cuda_rng" in state and self.device.type == "cuda":
            torch.cuda.set_rng_state_all(state["cuda_rng"])

    # ------------------------------------------------------------------ checkpoints

    def data_fingerprint(self) -> dict:
        """What a resumed run checks its data against: the vocabulary and the train split."""
        return {"vocab_size": self.ds.vocab_size, "tokenizer_sha256": _sha256_file(self.ds.tokenizer_path),
                "train_tokens": self.ds.train.num_tokens,
                "val_tokens": self.ds.val.num_tokens}

    def save_checkpoint(self, reason: str = "every") -> Path:
        """RUN_DIR/checkpoints/step-NNNNNN/ for the state after `self.step` steps (see checkpoint.py).

        Data parallel: every rank calls it; rank 0 writes the single-process format (under FSDP
        the full model and optimizer state are first gathered to it), the others wait for it."""
        finite = all(bool(torch.isfinite(distributed.local(p)).all()) for p in self.model.parameters())
        if not self.par.all_true(finite):
            raise UserError(f"the weights hold NaN or Inf after step {self.step - 1}; not saving them over the last "
                            "good checkpoint: lower --optim.lr or raise --optim.warmup_steps")
        state = self.state_dict()
        phase = lookup(self.phases, min(self.step, self.cfg.train.steps - 1))
        rng = {"torch": state["torch_rng"], **({"cuda": state["cuda_rng"]} if "cuda_rng" in state else {})}
        o, steps = self.cfg.optim, self.cfg.train.steps
        # The LR and the phase are functions of the step; recorded here so the directory explains itself.
        schedule = {"total_steps": steps, "phase_switch_step": self.phases[0].end if self.phases[0].index == 1 else 0,
                    "next_lr": wsd_lr(min(self.step, steps - 1), steps, o.lr, o.warmup_steps, o.decay_frac,
                                      o.min_lr_ratio, o.decay_shape)}
        meta = {"step": self.step, "phase": phase.index, "bag_size": phase.bag_size, "schedule": schedule,
                "tokens_seen": self.tokens_seen, "skipped_steps": self.skipped_steps,
                "train_time_s": self.train_time, "elapsed_s": state["elapsed_s"], "last_eval": state["last_eval"],
                "loader": state["loader"], "data": self.data_fingerprint(), "reason": reason,
                "saved_at": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
                "versions": {"torch": torch.__version__, "python": platform.python_version()},
                "parallel": {"mode": self.par.mode, "world_size": self.par.world_size},
                "config": self.cfg.to_dict()}
        model, optim_state = self.model, state["optimizer"]
        if self.par.mode == "fsdp":  # a collective: the full state, on rank 0 only
            model, optim_state = distributed.gather_full_state(self.model, self.optimizer, self.cfg.model)
        path = self.run_dir / checkpoint.DIRNAME / checkpoint.step_name(self.step)
        if self.par.is_main:
            path = checkpoint.save(self.run_dir, self.step, model, optim_state, rng, meta,
                                   keep=self.cfg.checkpoint.keep)
        self.par.barrier()  # no rank goes on, or exits on a signal, before the checkpoint is complete
        return path

    def load_checkpoint(self, path: Path) -> dict:
        """Verify a checkpoint directory, check it fits this run (model shape, vocabulary, data and
        every config field a resume may not change), then restore it. Returns its meta."""
        path = Path(path)
        meta = checkpoint.verify(path) if self.par.is_main else checkpoint.read_meta(path)  # rank 0 checks the files
        check_compatible(meta, path / "meta.json", self.cfg, self.ds)
        if self.par.mode == "fsdp":
            # Rank 0 reads the full state into a plain CPU model and optimizer, then broadcasts it
            # into every rank's shards: any world size resumes any checkpoint.
            plain = optim_state = None
            if self.par.is_main:
                plain = distributed.empty_model(self.cfg.model)
                optim_state = self._read_weights_and_optimizer(path, plain, configure_optimizer(plain, self.cfg), "cpu")
            distributed.load_full_state(self.model, self.optimizer, plain, optim_state)
        else:
            self._read_weights_and_optimizer(path, self.model, self.optimizer, self.device)
        rng = checkpoint.load_torch(path, "rng.pt")
        self.loader.load_state_dict(meta["loader"])
        self.step, self.tokens_seen = int(meta["step"]), int(meta["tokens_seen"])
        self.skipped_steps = int(meta.get("skipped_steps", 0))
        self.train_time, self.elapsed_offset = float(meta["train_time_s"]), float(meta["elapsed_s"])
        self.last_eval = dict(meta["last_eval"])
        torch.set_rng_state(rng["torch"])
        if "cuda" in rng and self.device.type == "cuda":
            torch.cuda.set_rng_state_all(rng["cuda"])
        return meta

    def _read_weights_and_optimizer(self, path: Path, model: Transformer, optimizer: torch.optim.Optimizer,
                                    device: torch.device | str) -> dict:
        """A checkpoint's weights and optimizer state into `model` and `optimizer`, refusing files
        that do not fit them. Returns the optimizer state as read."""
        checkpoint.load_weights(path, model)
        opt = checkpoint.load_torch(path, "optimizer.pt", device)
        try:
            optimizer.load_state_dict(opt)
            fits = all(st["exp_avg"].shape == p.shape for p, st in optimizer.state.items())
        except (ValueError, KeyError, TypeError, RuntimeError):
            fits = False
        if not fits:
            raise UserError(f"checkpoint file {path / 'optimizer.pt'} does not fit this model's optimizer "
                            "(another model shape)")
        return opt

    def save_final(self, summary: dict) -> None:
        """The final model: plain Llama weights + architecture + tokenizer. Nothing about TST.
        Data parallel: written by rank 0 (under FSDP from the gathered full weights)."""
        from safetensors.torch import save_model

        model = self.model
        if self.par.mode == "fsdp":  # a collective: every rank takes part, rank 0 gets the plain model
            model, _ = distributed.gather_full_state(self.model, None, self.cfg.model)
        if not self.par.is_main:
            return
        save_model(model, str(self.run_dir / "model.safetensors"))
        (self.run_dir / "model.json").write_text(json.dumps(self.cfg.model.to_dict(), indent=2) + "\n")
        shutil.copyfile(self.ds.tokenizer_path, self.run_dir / "tokenizer.json")
        (self.run_dir / "summary.json").write_text(json.dumps(summary, indent=2) + "\n")


class _StopSignals:
    """Within the block, SIGINT and SIGTERM only set `signum` (the loop saves and stops after the
    current step); a second one raises KeyboardInterrupt at once. The previous handlers come back
    on exit. Outside the main thread signals cannot be caught, and nothing is installed.

    abort_on_repeat=False (under torchrun) ignores repeats: a rank gets the scheduler's signal
    and torchrun's forwarded one, and must still save; torchrun's SIGKILL after its
    --shutdown-timeout is the hard stop there."""

    def __init__(self, abort_on_repeat: bool = True):
        self.abort_on_repeat = abort_on_repeat

    def __enter__(self) -> "_StopSignals":
        self.signum, self.previous = None, {}
        if threading.current_thread() is threading.main_thread():
            for sig in (signal.SIGINT, signal.SIGTERM):
                self.previous[sig] = signal.signal(sig, self._handle)
        return self

    def _handle(self, signum, frame) -> None:
        if self.signum is not None:
            if self.abort_on_repeat:
                raise KeyboardInterrupt
            return
        self.signum = signum  # no printing here: the handler may interrupt a print on the same stream

    def __exit__(self, *exc) -> None:
        for sig, handler in self.previous.items():
            signal.signal(sig, handler)


def run_training(cfg: Config, run_dir: Path, log: Callable[[str], None] = print, resume: bool = False,
                 init_from_hf: Path | None = None) -> dict:
    """Train (see `_run_training`), as one process or as one rank of a torchrun job.

    Under torchrun this joins the process group first; only rank 0 logs. Rank 0 of each machine
    resolves the data first (preparing the default corpus on first use) while the others wait,
    so no two processes build it at once. The group is left without teardown when this rank
    fails, so it exits at once and torchrun ends the other ranks.
    """
    par = distributed.setup(cfg.parallel.mode, resolve_device(cfg.train.device), cfg.parallel.timeout_s)
    if par.distributed:
        log = log if par.is_main else _quiet
        if par.local_rank != 0:
            par.barrier()
        resolve_data(cfg, log)
        if par.local_rank == 0:
            par.barrier()
    summary = _run_training(cfg, run_dir, log, resume, init_from_hf)
    distributed.shutdown(par)
    return summary


def _run_training(cfg: Config, run_dir: Path, log: Callable[[str], None] = print, resume: bool = False,
                  init_from_hf: Path | None = None) -> dict:
    """Resolve the data (preparing the default corpus on first use), then train.

    init_from_hf: a Hugging Face Llama folder whose weights start the run (cfg.model must be its
    architecture: see export_hf.config_from_hf).

    resume=True continues `run_dir` from its newest checkpoint. `cfg` must then agree with the
    checkpoint's config in every field outside RESUME_MAY_CHANGE (`resume_config` builds such a
    config from the checkpoint itself); metrics.jsonl is cut back to the checkpoint's step.
    """
    run_dir = Path(run_dir)
    if not resume:
        if (run_dir / "metrics.jsonl").exists():
            raise UserError(f"{run_dir} already holds a run; choose another --out, or continue it with --resume {run_dir}")
        return Trainer(cfg, run_dir, resolve_data(cfg, log), log, init_from_hf=init_from_hf).train()
    ckpt = checkpoint.newest(run_dir)
    if (run_dir / "summary.json").exists():
        raise UserError(f"{run_dir} is a finished run (it has summary.json); nothing to resume")
    meta = checkpoint.read_meta(ckpt)  # the files are verified by load_checkpoint below
    dataset = resolve_data(cfg, log)
    check_compatible(meta, ckpt / "meta.json", cfg, dataset)  # before Trainer(), which checks the vocabulary too
    try:  # a checkpoint copied in from another run disagrees with the run's own config.json
        own = Config.from_dict(json.loads((run_dir / "config.json").read_text()))
    except (OSError, ValueError, UserError):
        own = None
    if own is not None:
        check_compatible(meta, ckpt / "meta.json", own, dataset)
    trainer = Trainer(cfg, run_dir, dataset, log)
    trainer.load_checkpoint(ckpt)
    main = trainer.par.is_main  # only rank 0 touches the run directory
    gone = checkpoint.remove_leftovers(run_dir) if main else []
    dropped = _truncate_metrics(run_dir / "metrics.jsonl", trainer.step) if main else 0
    phase = lookup(trainer.phases, min(trainer.step, cfg.train.steps - 1))
    log(f"resuming {run_dir} from {ckpt.name}: step {trainer.step} of {cfg.train.steps}, phase {phase.index} "
        f"(s={phase.bag_size}), {trainer.tokens_seen:,} tokens seen; {dropped} metrics lines past it dropped"
        + (f"; removed leftovers of interrupted saves: {', '.join(gone)}" if gone else ""))
    return trainer.train()


def resolve_data(cfg: Config, log: Callable[[str], None] = print) -> Dataset:
    """The run's data directory, preparing the default corpus on first use when data.path is empty."""
    from ..data.prepare import ensure_default_corpus

    return open_dataset(Path(cfg.data.path) if cfg.data.path else ensure_default_corpus(cfg.data.vocab_size, log))
