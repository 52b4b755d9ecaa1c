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

`build.build_trainer` makes a `Trainer` (process group, model, optimizer, data); the Trainer owns
its loop (`train`: begin, step_once to the end with checkpoints, signals and NaN handling,
finish) and its checkpoints (`save_checkpoint`, `load_checkpoint`, through the plain functions
of `save.py` and `resume.py`), and its whole state is `state_dict()`. The phase's loss and the
switch are `tst_step`'s, shared with the Hugging Face TSTTrainer. Under torchrun every rank runs
this same loop on its rows of the global batch, with the collectives of `distributed.py`.
"""

from __future__ import annotations

import dataclasses
import platform
import signal
import time
from dataclasses import dataclass, field
from pathlib import Path
from collections.abc import Callable

import torch
from torch import Tensor

from .. import checkpoint
from ..config import Config, nan_advice
from ..core.llama import Transformer
from ..core.schedule import Phase, Schedule
from ..core.superposition import count_valid_targets
from ..data import DataSource, Loader
from ..errors import UserError
from ..files import WriteError
from ..inference.evaluate import next_token_eval
from . import distributed
from .metrics import (MetricsLog, NoMetrics, ProgressBar, collapse_warning, describe_run, router_metrics,
                      run_summary, switch_record, train_record, truncate_metrics)
from .optimizer import apply_update
from .resume import check_compatible, restore_weights_and_optimizer
from .run_start import write_run_files
from .save import final_fallback_advice, remove_leftovers, save, save_final
from .stops import (StopSignals, interrupted, newest_checkpoint_note, non_finite_error, non_finite_lines,
                    stopped_at_once)
from .tracking import Fanout, open_trackers
from .perf import compute_context
from .state import RunState
from ..core.tst_step import fresh_redraw, phase_targets, phase_weights, switch

__all__ = ["Trainer"]


@dataclass(eq=False)
class Trainer:
    """A built run (see `build.build_trainer`) and the loop that steps it."""

    cfg: Config  # the run's config, its vocabulary resolved from the data
    run_dir: Path
    dataset: DataSource
    log: Callable[[str], None]
    par: distributed.Parallel
    model: Transformer
    optimizer: torch.optim.Optimizer
    schedule: Schedule
    loader: Loader
    loss_fn: Callable[..., Tensor]  # tst_step.model_loss, or its torch.compile-d version (train.compile)
    loss_chunk_rows: int  # train.loss_chunk_rows with -1 (auto) decided
    fwd: torch.nn.Module | None  # data parallel: what a step calls (DDP, or FSDP2 over `model`); else None
    val: Tensor  # (N, L + 1) held-out windows, the same at every evaluation
    token_bytes: Tensor  # (V,) UTF-8 bytes per token id, for bits per byte
    rng: dict = field(default_factory=dict)  # the run's generator states (`state.rng_state`), kept in rng.pt
    mi_fit: dict | None = None  # tst.weights=mi: the corpus's mutual-information fit (data/mutual_info.py)
    state: RunState = field(default_factory=RunState)
    extra_evals: frozenset = field(default=frozenset(), init=False)  # 0-based steps evaluated beyond eval_every
    metrics: MetricsLog | NoMetrics = field(default_factory=NoMetrics, init=False)  # metrics.jsonl, opened by begin
    bar: ProgressBar = field(default_factory=lambda: ProgressBar(0, enabled=False), init=False)  # made by begin
    clock: Callable[[], float] = field(default=time.monotonic, init=False, repr=False)  # checkpoint.every_minutes'
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
        bad_grads = apply_update(self.model, self.optimizer, params, grad_norm, finite, cfg.optim.grad_clip)
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

    def train(self, progress: bool = True) -> dict:
        """begin, step_once until the end, finish; returns the run summary. Checkpoints every
        checkpoint.every steps and checkpoint.every_minutes of wall time.

        SIGINT/SIGTERM let the current step finish, save a checkpoint and raise `Interrupted`; a
        second signal stops at once, without saving (the last checkpoint stays as it was).
        """
        steps, every, minutes = self.cfg.train.steps, self.cfg.checkpoint.every, self.cfg.checkpoint.every_minutes
        self.begin(progress)
        last_save = self.clock()

        def on_repeat(signum: int) -> str:  # the step a second signal interrupts
            return stopped_at_once(self.run_dir, self.state.step, signum)

        with StopSignals(abort_on_repeat=not self.par.distributed, on_repeat=on_repeat) as stop:
            try:
                while self.state.step < steps:
                    self.step_once()
                    # Wall time as well as steps: a run whose steps are slow (or whose every=0)
                    # never loses more than `every_minutes` of work. Ranks agree on the decision.
                    late = minutes > 0 and self.clock() - last_save >= 60 * minutes
                    if self.par.distributed and minutes > 0:
                        late = bool(self.par.max_int(int(late)))
                    if every and self.state.step % every == 0:
                        self.save_checkpoint()
                        last_save = self.clock()
                    elif late and self.state.step < steps:  # at the end the final model follows at once
                        self.save_checkpoint(reason="every_minutes")
                        last_save = self.clock()
                    # Ranks may see a signal at different steps; they agree to stop after the same one.
                    signum = self.par.max_int(stop.signum or 0)
                    if signum and self.state.step < steps:
                        path = self.save_checkpoint(reason=signal.Signals(signum).name)
                        raise interrupted(signum, self.state.step, path, self.run_dir, self.par.distributed)
            except BaseException:
                self.bar.close()
                self.metrics.close()
                raise
            return self.finish()

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
        step_tokens = self.cfg.train.batch_size * self.cfg.data.seq_len
        for line in describe_run(self.cfg, self.model, self.par, self.schedule, self.loader.tokens_per_epoch,
                                 self.dataset.sources_line(), self.loader.long_document_share(step_tokens)):
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
            self.skip_or_stop(phase, out)
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

    def skip_or_stop(self, phase: Phase, out: dict) -> None:
        """What a NaN or Inf in a step's loss or gradients does (the update was not applied): log
        it, then count the dropped batch (train.on_nan=skip) or stop with a UserError (stop)."""
        step = self.state.step
        weights_ok = self.par.all_true(distributed.weights_finite(self.model))
        line, where = non_finite_lines(out, phase, step, weights_ok)
        self.log(line)
        self.metrics.write({"type": "non_finite", "step": step, "phase": phase.index, "bag_size": phase.bag_size,
                            "loss": str(out["loss"]), "grad_norm": str(out["grad_norm"]), "lr": out["lr"],
                            "bad_grads": out["bad_grads"], "action": self.cfg.train.on_nan})
        if self.cfg.train.on_nan != "skip":
            raise non_finite_error(out, where, self.run_dir, self.cfg.optim)
        self.state.skipped_steps += 1
        self.log(f"step {step}: batch skipped (train.on_nan=skip), {self.state.skipped_steps} skipped so far")

    def finish(self) -> dict:
        """Close the log, save the final model and summary.json; returns the summary."""
        self.bar.close()
        self.metrics.close()
        summary = run_summary(self)
        self.save_final(summary)
        self.log(f"done: val_loss {summary['val_loss']:.4f}, val_bpb {summary['val_bpb']:.4f}, "
                 f"{summary['wall_s']:.0f}s; model in {self.run_dir}")
        self.par.barrier()  # no rank leaves before rank 0 has written the model
        return summary

    # ------------------------------------------------------------------ state

    def state_dict(self) -> dict:
        """Everything that fixes the rest of the run: weights, optimizer state and `progress()`
        (live tensors: `copy.deepcopy` it to keep a snapshot)."""
        return {"model": self.model.state_dict(), "optimizer": self.optimizer.state_dict(), **self.progress()}

    def progress(self) -> dict:
        """The run state, the data position and the RNG states: what a checkpoint keeps beside the
        weights and the optimizer (in meta.json and rng.pt)."""
        run = dataclasses.replace(self.state, elapsed_s=self.elapsed_s(), last_eval=dict(self.state.last_eval))
        return {"run": run, "loader": self.loader.state_dict(), "rng": self.rng}

    def load_state_dict(self, state: dict) -> None:
        self.model.load_state_dict(state["model"])
        self.optimizer.load_state_dict(state["optimizer"])
        self.load_progress(state)

    def load_progress(self, state: dict) -> None:
        self.state = dataclasses.replace(state["run"], last_eval=dict(state["run"].last_eval))
        self.loader.load_state_dict(state["loader"])
        self.rng = state["rng"]

    # ------------------------------------------------------------------ checkpoints

    def save_checkpoint(self, reason: str = "every") -> Path:
        """RUN_DIR/checkpoints/step-NNNNNN/ for the state after `state.step` steps.

        Data parallel: every rank calls it; rank 0 writes the single-process format (under FSDP the
        full model and optimizer state are first gathered to it), the others wait for it."""
        if not self.par.all_true(distributed.weights_finite(self.model)):
            raise UserError(f"the weights hold NaN or Inf after step {self.state.step - 1}; not saving them over the "
                            f"last good checkpoint: {nan_advice(self.cfg.optim)}")
        progress, step = self.progress(), self.state.step
        meta = self.checkpoint_meta(reason, progress)
        model, optim_state = distributed.full_state(self.model, self.optimizer, self.cfg.model, self.par)  # FSDP: a collective
        path = self.run_dir / checkpoint.DIRNAME / checkpoint.step_name(step)
        if self.par.is_main:
            path = save(self.run_dir, step, model, optim_state, progress["rng"], meta, keep=self.cfg.checkpoint.keep)
        self.par.barrier()  # no rank goes on, or exits on a signal, before the checkpoint is complete
        return path

    def checkpoint_meta(self, reason: str, progress: dict) -> dict:
        """meta.json's content for `progress()` (save adds the files, the step and the checksum):
        the run state and loader position, and what makes the directory explain itself."""
        step, steps = self.state.step, self.cfg.train.steps
        phase = self.schedule.phase(min(step, steps - 1))  # the phase the run continues in
        # The LR and the phase are functions of the step; recorded so the directory explains itself.
        schedule = {"total_steps": steps, "phase_switch_step": self.schedule.switch_step,
                    "next_lr": self.schedule.lr(min(step, steps - 1))}
        return {**progress["run"].to_dict(), "phase": phase.index, "bag_size": phase.bag_size, "schedule": schedule,
                "loader": progress["loader"], "data": self.dataset.fingerprint(), "reason": reason,
                "saved_at": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
                "versions": {"torch": torch.__version__, "python": platform.python_version()},
                "parallel": {"mode": self.par.mode, "world_size": self.par.world_size}, "config": self.cfg.to_dict()}

    def load_checkpoint(self, path: Path) -> dict:
        """Verify a checkpoint directory, check it fits this run (model shape, vocabulary, data
        and every config field a resume may not change), then restore it. Returns its meta."""
        path = Path(path)
        meta = checkpoint.verify(path) if self.par.is_main else checkpoint.read_meta(path)  # rank 0 checks the files
        check_compatible(meta, path / "meta.json", self.cfg, self.dataset)
        restore_weights_and_optimizer(path, self.model, self.optimizer, self.cfg, self.par)
        self.load_progress({"run": RunState.from_dict(meta), "loader": meta["loader"],
                            "rng": checkpoint.load_torch(path, "rng.pt")})
        return meta

    def resume_from(self, ckpt: Path) -> None:
        """Restore `ckpt`, remove what interrupted saves left behind, and cut metrics.jsonl back to
        the checkpoint's step, so each step appears once."""
        self.load_checkpoint(ckpt)
        main, st = self.par.is_main, self.state  # only rank 0 touches the run directory
        gone = remove_leftovers(self.run_dir) if main else []
        dropped = truncate_metrics(self.run_dir / "metrics.jsonl", st.step) if main else 0
        steps = self.cfg.train.steps
        phase = self.schedule.phase(min(st.step, steps - 1))
        self.log(f"resuming {self.run_dir} from {ckpt.name}: step {st.step} of {steps}, phase {phase.index} "
                 f"(s={phase.bag_size}), {st.tokens_seen:,} tokens seen; {dropped} metrics lines past it dropped"
                 + (f"; removed leftovers of interrupted saves: {', '.join(gone)}" if gone else ""))

    def save_final(self, summary: dict) -> None:
        """The final model and summary.json (`save.save_final`), by rank 0 (under FSDP from the
        gathered full weights). A full disk here must not lose the run: the weights are still in
        memory, so the final state is saved as a checkpoint (which --resume turns into the final
        model without redoing a step) when there is room for it; the one-line error says what is
        on disk and what to do."""
        model, _ = distributed.full_state(self.model, None, self.cfg.model, self.par)  # FSDP: a collective
        if not self.par.is_main:
            return
        try:
            save_final(self.run_dir, model, self.cfg.model.to_dict(), self.dataset.tokenizer_path, summary)
        except WriteError as e:
            if not e.disk_full:
                raise
            steps, found = self.cfg.train.steps, checkpoint.checkpoints(self.run_dir)
            if not (found and found[-1][0] == steps) and self.par.mode != "fsdp":  # FSDP would need every rank
                try:
                    progress = self.progress()
                    save(self.run_dir, steps, self.model, self.optimizer.state_dict(), progress["rng"],
                         self.checkpoint_meta("final", progress), keep=self.cfg.checkpoint.keep)
                except UserError:
                    pass
            raise WriteError(f"{e}; {final_fallback_advice(self.run_dir, steps)}", e.path, True, e.what) from None

