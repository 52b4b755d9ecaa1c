"""The two-phase training loop: one run, one optimizer, one learning-rate schedule, one data stream.

    for step in 0..T-1:
        phase = schedule.phase(step)                 # phase 1: bags of s; phase 2: s = 1
        rows  = loader.next_rows(B, s * L)           # (B, s*L + 1) raw tokens, position carried on
        loss  = sum over micro-batches of superposed_loss(...) / global valid-target count
        clip, AdamW step with lr = schedule.lr(step) # the learning rate never looks at the phase
        log one JSON line; evaluate next-token loss on held-out tokens every eval_every steps
        every checkpoint.every steps, and on SIGINT/SIGTERM: save RUN_DIR/checkpoints/step-N/

A NaN or Inf in the loss or the gradients is caught before the optimizer step, so it never
reaches the weights: the run stops (train.on_nan=stop) or drops that batch (skip). With s = 1
every TST function reduces to the ordinary computation, so a baseline run (r = 0 or s = 1) and
phase 2 run exactly the code of plain next-token training.

A `Trainer` only steps: `build.build_trainer` makes one (process group, model, optimizer, data),
`checkpoint` persists it, and its whole state is `state_dict()`. Under torchrun every rank runs
this same loop on its rows of the global batch, with the collectives of `distributed.py`.
"""

from __future__ import annotations

import dataclasses
import json
import math
import signal
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from collections.abc import Callable

import torch
from torch import Tensor

from ..config import Config, save_config
from ..core.model import Transformer
from ..core.schedule import Phase, Schedule
from ..core.superposition import count_valid_targets, mi_bag_weights
from ..data import Dataset, Mixture, MixtureLoader, TrainLoader
from ..errors import Interrupted, UserError
from ..inference.evaluate import next_token_eval
from .. import files
from ..files import sha256_file
from . import checkpoint, checkpointer, distributed
from .tracking import Fanout, open_trackers
from .metrics import (MetricsLog, NoMetrics, ProgressBar, collapsed_layers, describe_run, router_metrics,
                      run_summary)
from .perf import compute_context
from .state import RunState, rng_state, set_rng_state
from .tst_step import phase_targets, superposed_loss, switch

__all__ = ["Trainer", "stop_or_skip", "superposed_loss"]  # superposed_loss: its home is tst_step


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
    loss_fn: Callable[..., Tensor]  # superposed_loss, or its torch.compile-d version (train.compile)
    loss_chunk_rows: int  # train.loss_chunk_rows with -1 (auto) decided
    fwd: torch.nn.Module | None  # data parallel: what a step calls (DDP, or FSDP2 over `model`); else None
    val: Tensor  # (N, L + 1) held-out windows, the same at every evaluation
    token_bytes: Tensor  # (V,) UTF-8 bytes per token id, for bits per byte
    mi_fit: dict | None = None  # tst.weights=mi: the corpus's mutual-information fit (data/mutual_info.py)
    state: RunState = field(default_factory=RunState)
    extra_evals: frozenset = field(default=frozenset(), init=False)  # 0-based steps evaluated beyond eval_every
    _t0: float | None = field(default=None, init=False, repr=False)  # perf_counter at the run's start, set by begin
    _collapse_warned: set = field(default_factory=set, init=False, repr=False)  # phases with an expert-collapse warning
    _mi_weights: dict = field(default_factory=dict, init=False, repr=False)  # bag size -> (s,) tst.weights=mi

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
        """tst.weights for this phase's target bag: a scheme's name, or the corpus-fitted tensor (mi)."""
        if self.cfg.tst.weights != "mi" or phase.target_bag == 1:
            return self.cfg.tst.weights if phase.target_bag > 1 else "uniform"
        if phase.target_bag not in self._mi_weights:  # made once per bag size, not every step
            self._mi_weights[phase.target_bag] = mi_bag_weights(self.mi_fit["fit"], phase.target_bag).to(self.device)
        return self._mi_weights[phase.target_bag]

    def train_step(self, phase: Phase) -> dict:
        cfg = self.cfg
        B, L, s, accum = cfg.train.batch_size, cfg.data.seq_len, phase.bag_size, cfg.train.grad_accum
        T = phase.row_tokens(L)  # raw input tokens per row: s*L when the input is bagged, else L
        weights, mode, kind = self.bag_weights(phase), phase.mode, cfg.tst.loss
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
        targets = phase_targets(rows, s, mode)  # (B, L, s) or (B, L, 1): the normaliser's and the loss's
        denom = self.par.sum(count_valid_targets(targets, weights, loss=kind))
        loss_total = torch.zeros((), device=self.device)
        router_log = []  # an MoE model's (aux * targets, expert counts (M, E)) per micro-batch; empty if dense
        micros, micro_targets = rows.chunk(accum), targets.chunk(accum)
        for i, (micro, tgt) in enumerate(zip(micros, micro_targets)):
            # Gradients are summed over ranks on the last micro-batch only (DDP no_sync / FSDP).
            with distributed.grad_sync(self.fwd, self.par, last=i == len(micros) - 1):
                with self.context():
                    args = (micro, s, weights, self.loss_chunk_rows)
                    kw = {"router_log": router_log, "mode": mode, "loss": kind, "targets": tgt}
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
        bad_grads = []
        if finite:
            clip = cfg.optim.grad_clip if cfg.optim.grad_clip > 0 else math.inf
            torch.nn.utils.clip_grads_with_norm_(params, clip, grad_norm)
            self.optimizer.step()
        else:
            bad_grads = [n for n, p in self.model.named_parameters()  # this rank's shards under FSDP
                         if p.grad is not None and not bool(torch.isfinite(distributed.local(p.grad)).all())]
        self.optimizer.zero_grad(set_to_none=True)
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
        """Create the run directory, write the config and the tokenizer, open the metrics log, say
        what will run. The caller holds the run's lock (`files.lock_dir`), so temporaries found in
        the directory are a killed process's and are removed."""
        self.par.barrier()  # every rank has checked the run directory before rank 0 writes into it
        if self.par.is_main:  # only rank 0 writes files
            self.run_dir.mkdir(parents=True, exist_ok=True)
            gone = files.remove_stale(self.run_dir)
            if gone:
                self.log(f"removed leftovers of an interrupted write in {self.run_dir}: {', '.join(gone)}")
            fix = "free some space and run the command again"
            save_config(self.cfg, self.run_dir / "config.json", fix=fix)
            # The tokenizer goes in at the start, not only with the final model, so that every
            # checkpoint of the run can be used (generate, eval, export) on its own.
            tok = self.run_dir / "tokenizer.json"
            if not (tok.is_file() and sha256_file(tok) == sha256_file(self.dataset.tokenizer_path)):
                files.copy_file(self.dataset.tokenizer_path, tok, fix=fix)
            # The token conventions the data trained with (end-of-text, a BOS template's prefix), for
            # generate, eval and export of this run wherever its data directory goes.
            special = {"eot_id": self.dataset.eot_id, "prefix_ids": self.dataset.prefix_ids}
            files.write_text(self.run_dir / "special_tokens.json", json.dumps(special) + "\n", fix=fix)
            if self.mi_fit is not None:  # the run's own copy of its bag weights' source (build.mi_fit)
                files.write_text(self.run_dir / "mi.json", json.dumps(self.mi_fit, indent=2) + "\n", fix=fix)
            trackers = Fanout(open_trackers(self.cfg, self.run_dir, self.state.step), self.log)
            self.metrics = MetricsLog(self.run_dir / "metrics.jsonl", self._newest_checkpoint, trackers)
        else:
            self.metrics = NoMetrics()
        mixture = self.dataset if isinstance(self.dataset, Mixture) else None
        for line in describe_run(self.cfg, self.model, self.par, self.schedule, self.loader.tokens_per_epoch, mixture):
            self.log(line)
        self.bar = ProgressBar(self.cfg.train.steps, enabled=progress and self.par.is_main, initial=self.state.step)
        self._t0 = time.perf_counter() - self.state.elapsed_s

    def _newest_checkpoint(self) -> str:
        found = checkpoint.checkpoints(self.run_dir)
        return f"the newest checkpoint {found[-1][1].name} is intact" if found else ""

    def step_once(self) -> dict:
        """One optimizer step, its metrics line, and an evaluation when one is due."""
        cfg, tr, st = self.cfg, self.cfg.train, self.state
        phase = self.schedule.phase(st.step)
        if st.step > 0 and self.schedule.phase(st.step - 1) is not phase:
            reset = self.at_switch() if st.step == self.schedule.switch_step else []
            kept = "parameters, optimizer state" if not reset else f"{', '.join(reset)}; otherwise parameters"
            what = phase.name if "s=" in phase.name else f"{phase.name}, s={phase.bag_size}"
            self.log(f"step {st.step}: switching to phase {phase.index} ({what}); {kept}, "
                     "LR schedule and data position carry over")
            # Every phase boundary is an event in metrics.jsonl (and so in the trackers and plots);
            # the one into next-token training also says what the switch-time ablations did.
            event = {"type": "switch", "step": st.step, "phase": phase.index, "bag_size": phase.bag_size,
                     "next_token": st.step == self.schedule.switch_step}
            if event["next_token"]:
                event.update(reinit=cfg.tst.reinit, reset_optimizer=cfg.tst.reset_optimizer)
            self.metrics.write(event)
        t0 = time.perf_counter()
        out = self.train_step(phase)
        if not out["finite"]:
            stop_or_skip(self, phase, out)
        step_time = time.perf_counter() - t0
        st.train_time_s += step_time
        where = {"step": st.step, "phase": phase.index, "bag_size": phase.bag_size}
        # JSON has no NaN: a skipped step logs loss and grad_norm as null and "skipped": true.
        rec = {"type": "train", **where, "loss": out["loss"] if out["finite"] else None, "lr": out["lr"],
               "grad_norm": out["grad_norm"] if out["finite"] else None, "tokens_seen": st.tokens_seen,
               "epoch": self.loader.epoch_progress, "elapsed_s": self.elapsed_s(), "train_time_s": st.train_time_s,
               "step_time_s": step_time, "data_time_s": out["data_time_s"],
               "tokens_per_s": tr.batch_size * phase.row_tokens(cfg.data.seq_len) / step_time,
               "skipped_steps": st.skipped_steps, **({} if out["finite"] else {"skipped": True})}
        if isinstance(self.loader, MixtureLoader):  # "epoch" is the most-read source's; here each one's
            rec["source_epochs"] = self.loader.source_epochs
        last = st.step == tr.steps - 1
        evaluating = (last or bool(tr.eval_every and (st.step + 1) % tr.eval_every == 0)
                      or st.step in self.extra_evals)
        if "router" in out:  # a mixture of experts
            self.record_routing(rec, out["router"], phase, full=evaluating)
        self.metrics.write(rec)
        if evaluating:
            st.last_eval = self.evaluate()
            self.metrics.write({"type": "eval", **where, "tokens_seen": st.tokens_seen,
                                "elapsed_s": self.elapsed_s(), "train_time_s": st.train_time_s, **st.last_eval})
        self.bar.update(rec, st.last_eval, self.log, force=last or (st.step + 1) % tr.log_every == 0)
        st.step += 1
        return rec

    def at_switch(self) -> list[str]:
        """tst.reinit and tst.reset_optimizer (`tst_step.switch`), just before the first next-token
        step: re-drawn weights come from `Transformer.fresh_weights`; returns what was done."""
        names = {"input": "embed_tokens.weight", "output": "lm_head.weight"}
        params = dict(self.model.named_parameters())

        def redraw(parts: tuple[str, ...], gen: torch.Generator) -> dict:
            fresh = self.model.fresh_weights([names[p] for p in parts], gen)  # {name: full tensor on the CPU}
            for name, value in fresh.items():
                distributed.copy_full_(params[name], value)
            return {name: params[name] for name in fresh}

        t = self.cfg.tst
        return switch(self.optimizer, redraw, t.reinit, t.reset_optimizer, self.cfg.train.seed, self.state.step)

    def record_routing(self, rec: dict, router: dict, phase: Phase, full: bool) -> None:
        """An MoE step's aux loss and expert-load summary into its metrics line (the whole
        (layers x experts) load matrix when `full`: evaluation steps and the last), and one
        warning per phase when a layer collapses onto one expert (`metrics.collapsed_layers`)."""
        rec.update({k: v for k, v in router.items() if k != "expert_load" or full})
        collapsed = collapsed_layers(router["expert_load"], self.cfg.model.n_experts, self.cfg.model.top_k)
        if collapsed and phase.index not in self._collapse_warned:
            self._collapse_warned.add(phase.index)
            layer, expert, share = collapsed[0]
            self.log(f"warning: expert-load collapse at step {self.state.step} (phase {phase.index}, "
                     f"s={phase.bag_size}): MoE layer {layer} sends {share:.0%} of positions to expert {expert} "
                     f"(balanced: {self.cfg.model.top_k / self.cfg.model.n_experts:.0%}), {len(collapsed)} layer(s) "
                     "so; raise --model.router_aux_coef or lower the LR (said once per phase)")

    def finish(self) -> dict:
        """Close the log, save the final model and summary."""
        self.bar.close()
        self.metrics.close()
        summary = run_summary(self)
        checkpointer.save_final(self, summary)
        self.log(f"done: val_loss {summary['val_loss']:.4f}, val_bpb {summary['val_bpb']:.4f}, "
                 f"{summary['wall_s']:.0f}s; model in {self.run_dir}")
        self.par.barrier()  # no rank leaves before rank 0 has written the model
        return summary

    def train(self, progress: bool = True) -> dict:
        """begin, step_once until the end, finish; checkpoints every `checkpoint.every` steps.

        SIGINT/SIGTERM let the current step finish, save a checkpoint and raise `Interrupted`; a
        second signal stops at once, without saving (the last checkpoint stays as it was).
        """
        steps, every = self.cfg.train.steps, self.cfg.checkpoint.every
        minutes = self.cfg.checkpoint.every_minutes
        self.begin(progress)
        last_save = _clock()
        with _StopSignals(abort_on_repeat=not self.par.distributed, on_repeat=self._stopped_at_once) as stop:
            try:
                while self.state.step < steps:
                    self.step_once()
                    # Wall time as well as steps: a run whose steps are slow (or whose every=0)
                    # never loses more than `every_minutes` of work. Ranks agree on the decision.
                    late = minutes > 0 and _clock() - last_save >= 60 * minutes
                    if self.par.distributed and minutes > 0:
                        late = bool(self.par.max_int(int(late)))
                    if every and self.state.step % every == 0:
                        self.save_checkpoint()
                        last_save = _clock()
                    elif late and self.state.step < steps:  # at the end the final model follows at once
                        self.save_checkpoint(reason="every_minutes")
                        last_save = _clock()
                    # Ranks may see a signal at different steps; they agree to stop after the same one.
                    signum = self.par.max_int(stop.signum or 0)
                    if signum and self.state.step < steps:
                        name = signal.Signals(signum).name
                        path = self.save_checkpoint(reason=name)
                        again = "torchrun --nproc_per_node N -m superpose" if self.par.distributed else "superpose"
                        raise Interrupted(signum, f"stopped by {name} after step {self.state.step - 1}; saved "
                                          f"{path}; continue with: {again} train --resume {self.run_dir}")
            except BaseException:
                self.bar.close()
                self.metrics.close()
                raise
            return self.finish()

    def _stopped_at_once(self, signum: int) -> str:
        """What a second SIGINT/SIGTERM (which stops without saving) leaves, and how to go on."""
        name = signal.Signals(signum).name
        saved = checkpoint.checkpoints(self.run_dir)
        if saved:
            return (f"stopped at once by a second {name} during step {self.state.step}, without saving; the newest "
                    f"checkpoint {saved[-1][1].name} is intact; continue with: superpose train --resume {self.run_dir}")
        return (f"stopped at once by a second {name} during step {self.state.step}, before any checkpoint was saved; "
                f"start it again in place with the command that started it (superpose train ... --out {self.run_dir})")

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


def stop_or_skip(t: Trainer, phase: Phase, out: dict) -> None:
    """What a NaN or Inf in a step's loss or gradients does (the update was not applied): log the
    step, phase, LR and the tensors with bad gradients, then stop with a UserError
    (train.on_nan=stop) or count the dropped batch (skip)."""
    bad, step = out["bad_grads"], t.state.step
    weights_ok = t.par.all_true(distributed.weights_finite(t.model))
    where = f"step {step} (phase {phase.index}, s={phase.bag_size}, lr {out['lr']:.3g})"
    grads = (f"non-finite gradients in {len(bad)} tensors: {', '.join(bad[:4])}{', ...' if len(bad) > 4 else ''}"
             if bad else "all gradients finite")
    t.log(f"non-finite at {where}: loss {out['loss']}, grad_norm {out['grad_norm']}; {grads}; weights "
          f"{'all finite' if weights_ok else 'NOT finite'}; the update was not applied")
    t.metrics.write({"type": "non_finite", "step": step, "phase": phase.index, "bag_size": phase.bag_size,
                     "loss": str(out["loss"]), "grad_norm": str(out["grad_norm"]), "lr": out["lr"],
                     "bad_grads": bad, "action": t.cfg.train.on_nan})
    if t.cfg.train.on_nan == "skip":
        t.state.skipped_steps += 1
        t.log(f"step {step}: batch skipped (train.on_nan=skip), {t.state.skipped_steps} skipped so far")
        return
    found = checkpoint.checkpoints(t.run_dir)
    kept = (f"the last checkpoint {found[-1][1].name} is untouched; lower --optim.lr or raise "
            "--optim.warmup_steps in a new run, or resume with --train.on_nan=skip to drop such batches"
            if found else "no checkpoint was written; lower --optim.lr or raise --optim.warmup_steps, or "
            "set --train.on_nan=skip to drop such batches")
    raise UserError(f"loss is {out['loss']} and grad_norm {out['grad_norm']} at {where}; stopped before the "
                    f"update, {kept}")


_clock = time.monotonic  # the wall clock of checkpoint.every_minutes (a test replaces it)


class _StopSignals:
    """Within the block, SIGINT and SIGTERM only set `signum` (the loop saves and stops after the
    current step); a second one raises `Interrupted` at once (`on_repeat` words its message). The previous handlers come back
    on exit. Outside the main thread signals cannot be caught, and nothing is installed.

    abort_on_repeat=False (under torchrun) ignores repeats: a rank gets the scheduler's signal
    and torchrun's forwarded one, and must still save; torchrun's SIGKILL after its
    --shutdown-timeout is the hard stop there."""

    def __init__(self, abort_on_repeat: bool = True, on_repeat: Callable[[int], str] | None = None):
        self.abort_on_repeat, self.on_repeat = abort_on_repeat, on_repeat

    def __enter__(self) -> _StopSignals:
        self.signum, self.previous = None, {}
        if threading.current_thread() is threading.main_thread():
            for sig in (signal.SIGINT, signal.SIGTERM):
                self.previous[sig] = signal.signal(sig, self._handle)
        return self

    def _handle(self, signum, frame) -> None:
        if self.signum is not None:
            if self.abort_on_repeat:  # exit 128 + this signal's number, as the first one would give
                raise Interrupted(signum, self.on_repeat(signum) if self.on_repeat else
                                  f"stopped at once by a second {signal.Signals(signum).name}, without saving")
            return
        self.signum = signum  # no printing here: the handler may interrupt a print on the same stream

    def __exit__(self, *exc) -> None:
        for sig, handler in self.previous.items():
            signal.signal(sig, handler)
