"""The two-phase training loop: one run, one optimizer, one learning-rate schedule, one data stream.

    for step in 0..T-1:
        phase = schedule.phase(step)                 # phase 1: bags of s; phase 2: s = 1
        rows  = loader.next_rows(B, s * L)           # (B, s*L + 1) raw tokens, position carried on
        loss  = sum over micro-batches of model_loss(...) / global valid-target count
        clip, AdamW step with lr = schedule.lr(step) # the learning rate never looks at the phase
        log one JSON line; evaluate next-token loss on held-out tokens every eval_every steps
        every checkpoint.every steps, and on SIGINT/SIGTERM: save RUN_DIR/checkpoints/step-N/

A NaN or Inf in the loss or the gradients is caught before the optimizer step, so it never
reaches the weights: the run stops (train.on_nan=stop) or drops that batch (skip). With s = 1
every TST function reduces to the ordinary computation, so a baseline run (r = 0 or s = 1) and
phase 2 run exactly the code of plain next-token training.

A `Trainer` only steps: `build.build_trainer` makes one (process group, model, optimizer, data),
`loop.run` steps it to the end (checkpoints, signals, NaN handling), `checkpointer` persists it,
and its whole state is `state_dict()`. The phase's loss and the switch are `tst_step`'s, shared
with the Hugging Face TSTTrainer. Under torchrun every rank runs this same loop on its rows of the
global batch, with the collectives of `distributed.py`.
"""

from __future__ import annotations

import dataclasses
import math
import time
from dataclasses import dataclass, field
from pathlib import Path
from collections.abc import Callable

import torch
from torch import Tensor

from ..config import Config
from ..core.model import Transformer
from ..core.schedule import Phase, Schedule
from ..core.superposition import count_valid_targets
from ..data import Dataset, Mixture, MixtureLoader, TrainLoader
from ..inference.evaluate import next_token_eval
from . import checkpointer, distributed, loop
from .loop import newest_checkpoint_note
from .metrics import (MetricsLog, NoMetrics, ProgressBar, collapse_warning, describe_run, router_metrics,
                      switch_record, train_record)
from .run_start import write_run_files
from .tracking import Fanout, open_trackers
from .perf import compute_context
from .state import RunState, rng_state, set_rng_state
from ..core.tst_step import fresh_redraw, phase_targets, phase_weights, switch

__all__ = ["Trainer"]


@dataclass(eq=False)
class Trainer:
    """A built run (see `build.build_trainer`) and the loop that steps it."""

    cfg: Config  # the run's config, its vocabulary resolved from the data
    run_dir: Path
    dataset: Dataset | Mixture
    log: Callable[[str], None]
    par: distributed.Parallel
    model: Transformer
    optimizer: torch.optim.Optimizer
    schedule: Schedule
    loader: TrainLoader | MixtureLoader
    loss_fn: Callable[..., Tensor]  # tst_step.model_loss, or its torch.compile-d version (train.compile)
    loss_chunk_rows: int  # train.loss_chunk_rows with -1 (auto) decided
    fwd: torch.nn.Module | None  # data parallel: what a step calls (DDP, or FSDP2 over `model`); else None
    val: Tensor  # (N, L + 1) held-out windows, the same at every evaluation
    token_bytes: Tensor  # (V,) UTF-8 bytes per token id, for bits per byte
    mi_fit: dict | None = None  # tst.weights=mi: the corpus's mutual-information fit (data/mutual_info.py)
    state: RunState = field(default_factory=RunState)
    extra_evals: frozenset = field(default=frozenset(), init=False)  # 0-based steps evaluated beyond eval_every
    _t0: float | None = field(default=None, init=False, repr=False)  # perf_counter at the run's start, set by begin
    _collapse_warned: set = field(default_factory=set, init=False, repr=False)  # phases with an expert-collapse warning
    _weights: dict = field(default_factory=dict, init=False, repr=False)  # target bag size -> its slot weights

    @property
    def device(self) -> torch.device:
        return self.par.device

    def context(self):
        """What every forward runs under: bf16 autocast (train.dtype) and the attention kernel."""
        return compute_context(self.cfg.train.dtype, self.cfg.train.attention, self.device)

    def elapsed_s(self) -> float:
        """Wall clock since the run started, counting sessions before a resume."""
        return time.perf_counter() - self._t0 if self._t0 is not None else self.state.elapsed_s

    # ------------------------------------------------------------------ one step

    def bag_weights(self, phase: Phase) -> str | Tensor:
        """tst.weights for this phase's target bag (`tst_step.phase_weights`), made once per bag size."""
        if phase.target_bag not in self._weights:
            w = phase_weights(self.cfg.tst.weights, phase.target_bag, self.mi_fit)
            self._weights[phase.target_bag] = w.to(self.device) if isinstance(w, Tensor) else w
        return self._weights[phase.target_bag]

    def train_step(self, phase: Phase) -> dict:
        cfg = self.cfg
        B, L, accum = cfg.train.batch_size, cfg.data.seq_len, cfg.train.grad_accum
        T = phase.row_tokens(L)  # raw input tokens per row: s*L when the input is bagged, else L
        weights, kind = self.bag_weights(phase), cfg.tst.phase_loss(phase)
        lr = self.schedule.lr(self.state.step)
        for group in self.optimizer.param_groups:
            group["lr"] = lr
        t0 = time.perf_counter()
        # Data parallel: this rank reads only its rows of the global batch, (B/W, T + 1).
        keep = self.par.rows(B) if self.par.distributed else None
        rows = torch.from_numpy(self.loader.next_rows(B, T, keep)).to(self.device)  # (B, T + 1)
        data_time = time.perf_counter() - t0
        # The normaliser is fixed before any forward pass, over the whole global batch (summed over
        # ranks), so the sum of micro-batch and rank gradients equals the gradient of the
        # full-batch mean exactly.
        targets = phase_targets(rows, phase)  # (B, L, s) or (B, L, 1): the normaliser's and the loss's
        denom = self.par.sum(count_valid_targets(targets, weights, loss=kind))
        loss_total = torch.zeros((), device=self.device)
        router_log = []  # an MoE model's (aux * targets, expert counts (M, E)) per micro-batch; empty if dense
        micros, micro_targets = rows.chunk(accum), targets.chunk(accum)
        for i, (micro, tgt) in enumerate(zip(micros, micro_targets)):
            # Gradients are summed over ranks on the last micro-batch only (DDP no_sync / FSDP).
            with distributed.grad_sync(self.fwd, self.par, last=i == len(micros) - 1):
                with self.context():
                    args = (micro, phase, weights, kind, self.loss_chunk_rows)
                    kw = {"router_log": router_log, "targets": tgt}
                    loss = (self.loss_fn(self.model, *args, **kw) if self.fwd is None else self.fwd(*args, **kw)) / denom
                loss.backward()
            loss_total += loss.detach()
        # clip_grad_norm_ split in two, so a NaN or Inf is seen before anything touches the weights
        # (the same arithmetic: clip_grad_norm_ is these two calls). Under FSDP the gradients are
        # DTensor shards and the norm is the global one.
        params = [p for p in self.model.parameters() if p.grad is not None]
        grad_norm = torch.nn.utils.get_total_norm([p.grad for p in params])
        # The global loss, and one finiteness decision taken by every rank alike.
        loss, norm, finite = distributed.step_stats(self.par, loss_total, grad_norm)
        bad_grads = _update(self.model, self.optimizer, params, grad_norm, finite, cfg.optim.grad_clip)
        self.state.tokens_seen += B * T  # read either way: a skipped batch is not read again
        out = {"loss": loss, "lr": lr, "grad_norm": norm, "data_time_s": data_time, "finite": finite,
               "bad_grads": bad_grads}
        if router_log:  # a mixture of experts: the step's aux loss and expert load, summed over ranks
            aux = self.par.sum(sum(a for a, _ in router_log) / denom)
            counts = self.par.sum(sum(c for _, c in router_log))  # (M, E) positions per expert, all B*L
            out["router"] = router_metrics(aux.item(), counts, B * L, cfg.model.router_aux_coef, loss)
        return out

    def evaluate(self) -> dict:
        """Next-token loss and bits per byte on the fixed held-out windows (in every phase)."""
        self.model.eval()
        # Under FSDP through the root module, which gathers the sharded weights.
        forward = self.model if self.par.mode != "fsdp" else (lambda x: self.fwd(x, logits=True))
        out = next_token_eval(forward, self.val, self.cfg.train.batch_size, self.device, self.token_bytes,
                              self.context)
        self.model.train()
        distributed.reshard(self.fwd, self.par)
        return {"val_loss": out["val_loss"], "val_bpb": out["val_bpb"]}

    # ------------------------------------------------------------------ the run

    def begin(self, progress: bool = True) -> None:
        """Write the run's files (`run_start.write_run_files`), open the metrics log, say what will run."""
        self.par.barrier()  # every rank has checked the run directory before rank 0 writes into it
        if self.par.is_main:  # only rank 0 writes files
            write_run_files(self.run_dir, self.cfg, self.dataset, self.mi_fit, self.log)
            trackers = Fanout(open_trackers(self.cfg, self.run_dir, self.state.step), self.log)
            self.metrics = MetricsLog(self.run_dir / "metrics.jsonl", lambda: newest_checkpoint_note(self.run_dir),
                                      trackers)
        else:
            self.metrics = NoMetrics()
        mixture = self.dataset if isinstance(self.dataset, Mixture) else None
        for line in describe_run(self.cfg, self.model, self.par, self.schedule, self.loader.tokens_per_epoch, mixture):
            self.log(line)
        self.bar = ProgressBar(self.cfg.train.steps, enabled=progress and self.par.is_main, initial=self.state.step)
        self._t0 = time.perf_counter() - self.state.elapsed_s

    def step_once(self) -> dict:
        """One optimizer step, its metrics line, and an evaluation when one is due."""
        cfg, tr, st = self.cfg, self.cfg.train, self.state
        phase = self.schedule.phase(st.step)
        if st.step > 0 and self.schedule.phase(st.step - 1) is not phase:
            next_token = st.step == self.schedule.switch_step
            line, event = switch_record(phase, st.step, self.at_switch() if next_token else [], next_token, cfg.tst)
            self.log(line)
            self.metrics.write(event)
        t0 = time.perf_counter()
        out = self.train_step(phase)
        if not out["finite"]:
            loop.stop_or_skip(self, phase, out)
        step_time = time.perf_counter() - t0
        st.train_time_s += step_time
        where = {"step": st.step, "phase": phase.index, "bag_size": phase.bag_size}
        rec = train_record(where, out, st, self.loader, self.elapsed_s(), step_time,
                           tr.batch_size * phase.row_tokens(cfg.data.seq_len))
        last = st.step == tr.steps - 1
        evaluating = (last or bool(tr.eval_every and (st.step + 1) % tr.eval_every == 0)
                      or st.step in self.extra_evals)
        if "router" in out:  # a mixture of experts: the whole (layers x experts) load at evaluations
            rec.update({k: v for k, v in out["router"].items() if k != "expert_load" or evaluating})
            warning = collapse_warning(out["router"]["expert_load"], cfg.model, st.step, phase, self._collapse_warned)
            if warning:
                self.log(warning)
        self.metrics.write(rec)
        if evaluating:
            st.last_eval = self.evaluate()
            self.metrics.write({"type": "eval", **where, "tokens_seen": st.tokens_seen,
                                "elapsed_s": self.elapsed_s(), "train_time_s": st.train_time_s, **st.last_eval})
        self.bar.update(rec, st.last_eval, self.log, force=last or (st.step + 1) % tr.log_every == 0)
        st.step += 1
        return rec

    def at_switch(self) -> list[str]:
        """tst.reinit and tst.reset_optimizer (`tst_step.switch`), just before the first next-token step."""
        t = self.cfg.tst
        return switch(self.optimizer, fresh_redraw(self.model), t.reinit, t.reset_optimizer, self.cfg.train.seed,
                      self.state.step)

    def finish(self) -> dict:
        """Close the log, save the final model and summary (`loop.finish`)."""
        return loop.finish(self)

    def train(self, progress: bool = True) -> dict:
        """begin, step_once until the end, finish (`loop.run`: checkpoints, SIGINT/SIGTERM)."""
        return loop.run(self, progress)

    # ------------------------------------------------------------------ state

    def state_dict(self) -> dict:
        """Everything that fixes the rest of the run: weights, optimizer state and `progress()`
        (live tensors: `copy.deepcopy` it to keep a snapshot)."""
        return {"model": self.model.state_dict(), "optimizer": self.optimizer.state_dict(), **self.progress()}

    def progress(self) -> dict:
        """The run state, the data position and the RNG states: what a checkpoint keeps beside the
        weights and the optimizer (in meta.json and rng.pt)."""
        run = dataclasses.replace(self.state, elapsed_s=self.elapsed_s(), last_eval=dict(self.state.last_eval))
        return {"run": run, "loader": self.loader.state_dict(), "rng": rng_state(self.device)}

    def load_state_dict(self, state: dict) -> None:
        self.model.load_state_dict(state["model"])
        self.optimizer.load_state_dict(state["optimizer"])
        self.load_progress(state)

    def load_progress(self, state: dict) -> None:
        self.state = dataclasses.replace(state["run"], last_eval=dict(state["run"].last_eval))
        self.loader.load_state_dict(state["loader"])
        set_rng_state(state["rng"], self.device)

    def save_checkpoint(self, reason: str = "every") -> Path:
        """RUN_DIR/checkpoints/step-NNNNNN/ for the state after `state.step` steps (`checkpointer.save_trainer`)."""
        return checkpointer.save_trainer(self, reason)

    def load_checkpoint(self, path: Path) -> dict:
        """Verify a checkpoint, check that it fits this run, restore it; returns its meta."""
        return checkpointer.restore_trainer(self, Path(path))


def _update(model, optimizer, params: list, grad_norm: Tensor, finite: bool, grad_clip: float) -> list[str]:
    """Clip to the global norm and step when the step is finite; else apply nothing and return the
    names of the tensors with non-finite gradients (this rank's shards under FSDP). Gradients are
    cleared either way."""
    bad_grads = []
    if finite:
        clip = grad_clip if grad_clip > 0 else math.inf
        torch.nn.utils.clip_grads_with_norm_(params, clip, grad_norm)
        optimizer.step()
    else:
        bad_grads = [n for n, p in model.named_parameters()
                     if p.grad is not None and not bool(torch.isfinite(distributed.local(p.grad)).all())]
    optimizer.zero_grad(set_to_none=True)
    return bad_grads
