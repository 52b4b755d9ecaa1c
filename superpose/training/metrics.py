"""Where a run's numbers go: the metrics.jsonl sink, the progress display, what a run says when it
starts (`describe_run`, `data_plan`), the environment record.

Only rank 0 of a distributed job writes metrics and prints; the other ranks get `NoMetrics` and
`quiet`.
"""

from __future__ import annotations

import json
import os
import platform
import sys
from pathlib import Path
from collections.abc import Callable

import numpy as np
import torch

from ..checkpoint import checkpoint_advice
from ..core.losses import bag_loss
from ..core.superposition import Mode
from ..errors import command
from ..files import AppendLog, write_text


def _go_on(run_dir: Path) -> str:
    return checkpoint_advice(run_dir)


class MetricsLog:
    """Append-only JSONL sink, flushed every line so a crash loses nothing logged. A line that
    cannot be written (a full disk) is cut off again, so the file keeps every earlier line whole,
    and the run stops with one line saying so (`files.AppendLog`)."""

    def __init__(self, path: Path, newest_checkpoint: Callable[[], str] = lambda: "", trackers=None):
        run_dir = Path(path).parent
        self.trackers = trackers  # `tracking.Fanout`: TensorBoard, W&B; each record goes there after the file
        self._log = AppendLog(path, intact=lambda: f"{Path(path).name} keeps every line written before; "
                              f"{newest_checkpoint() or 'no checkpoint was written yet'}",
                              fix=lambda: f"free some space and {_go_on(run_dir)}")

    def write(self, record: dict) -> None:
        self._log.write_line(json.dumps(record))
        if self.trackers is not None:
            self.trackers.write(record)

    def close(self) -> None:
        self._log.close()
        if self.trackers is not None:
            self.trackers.close()


class NoMetrics:
    """The metrics sink of ranks other than 0: only rank 0 writes metrics.jsonl."""

    def write(self, record: dict) -> None:
        pass

    def close(self) -> None:
        pass


def quiet(msg: str) -> None:
    """The log of ranks other than 0."""


def environment() -> dict:
    return {"python": platform.python_version(), "torch": torch.__version__, "numpy": np.__version__,
            "platform": platform.platform(), "cpu_count": os.cpu_count(), "threads": torch.get_num_threads(),
            "cuda": torch.cuda.get_device_name() if torch.cuda.is_available() else None}


def data_plan(schedule, batch_size: int, seq_len: int, train_tokens: int) -> dict:
    """Raw tokens each phase will read, against the size of the train split (in summary.json)."""
    tokens = schedule.raw_tokens(batch_size, seq_len)
    return {"train_tokens": train_tokens, "phase1_tokens": tokens[1], "phase2_tokens": tokens[2],
            "total_tokens": tokens[1] + tokens[2]}


def run_summary(trainer) -> dict:
    """summary.json of a finished run: its counters, final evaluation, data plan and environment."""
    t, st = trainer, trainer.state
    plan = data_plan(t.schedule, t.cfg.train.batch_size, t.cfg.data.seq_len, t.loader.tokens_per_epoch)
    return {"steps": t.cfg.train.steps, "tokens_seen": st.tokens_seen, "skipped_steps": st.skipped_steps,
            "wall_s": t.elapsed_s(), "train_time_s": st.train_time_s, "parameters": t.model.num_params(),
            **st.last_eval, **t.dataset.summary(), **t.loader.epoch_record(),
            "parallel": {"mode": t.par.mode, "world_size": t.par.world_size}, "data": plan,
            "environment": environment()}


LONG_DOCUMENTS = 0.5  # warn when more than this share of the train tokens lies in documents longer than a step


def describe_run(cfg, model, par, schedule, train_tokens: int, sources_line: str | None = None,
                 long_documents: float = 0.0) -> list[str]:
    """The lines a run logs when it starts: processes, model, phases, and how much of the train
    split each phase reads, with a warning when the run repeats data or when its steps read one
    document each.

    sources_line: a mixture's line naming its sources (`DataSource.sources_line`); train_tokens is
    then the mixture's tokens per epoch of its most-read source (`MixtureLoader.tokens_per_epoch`).
    long_documents: the share of train tokens in documents longer than a phase-2 step
    (`TrainLoader.long_document_share`)."""
    tr, lines = cfg.train, []
    if par.distributed:
        share = tr.batch_size // par.world_size
        lines.append(f"parallel: {par.mode} over {par.world_size} processes on {par.device.type}; each reads {share} "
                     f"of the {tr.batch_size} rows of a step, in {tr.grad_accum} micro-batch(es) of "
                     f"{share // tr.grad_accum}")
    m = cfg.model
    moe = (f"; Qwen3-MoE, {m.n_experts} experts, top-{m.top_k}: {model.num_active_params():,} active per token"
           if model.num_active_params() != model.num_params() else "")
    lines.append(f"model: {model.num_params():,} parameters ({model.num_params(non_embedding=True):,} non-embedding"
                 f"{moe}) on {par.device}; {tr.steps} steps of {tr.batch_size} x {cfg.data.seq_len} positions")
    t = cfg.tst
    loss = bag_loss(t.loss).label
    weights = f", {t.weights} slot weights" if t.weights != "uniform" else ""
    for p in schedule.phases:
        what = Mode(p.mode).describe(p.bag_size) + (f" ({loss} loss{weights})" if p.target_bag > 1 else "")
        what = what if p.index == 1 else "next-token loss"
        lines.append(f"phase {p.index} ({p.name}): steps {p.start}-{p.end - 1}, {what}")
    switch = [w for w, on in (("optimizer state reset", t.reset_optimizer),
                              (f"{t.reinit} re-initialised", t.reinit != "none")) if on]
    if switch and schedule.switch_step:
        lines.append(f"at the switch (step {schedule.switch_step}): {' and '.join(switch)}")
    plan = data_plan(schedule, tr.batch_size, cfg.data.seq_len, train_tokens)
    n = plan["train_tokens"]
    split, has = "the train split", "the train split has"
    if sources_line is not None:
        lines.append(sources_line)
        split, has = "its most-read source", "one epoch of its most-read source is"
    lines.append(f"data: phase 1 reads {plan['phase1_tokens']:,} and phase 2 {plan['phase2_tokens']:,} raw tokens; "
                 f"{has} {n:,} ({plan['total_tokens'] / n:.2f} epochs in all)")
    if plan["phase1_tokens"] > n:
        lines.append(f"warning: phase 1 alone reads {plan['phase1_tokens'] / n:.2f} epochs of {split}, so it "
                     "repeats data. TST trades data for compute: with repeated data its gain can vanish (a "
                     "2M-parameter run lost it on a 3M-token corpus). Use more data, or a smaller tst.ratio or "
                     "tst.bag_size.")
    elif plan["total_tokens"] > n:
        lines.append(f"warning: the run reads {plan['total_tokens'] / n:.2f} epochs of {split}, so phase 2 "
                     "repeats data")
    if long_documents > LONG_DOCUMENTS:
        lines.append(f"warning: {long_documents:.0%} of the train tokens are in documents longer than a step "
                     f"({tr.batch_size * cfg.data.seq_len:,} tokens), so a step's rows come from one document and "
                     "the next steps read on in it: the loss swings with the document and from seed to seed. Raise "
                     "train.batch_size, or cut the documents shorter before prepare, and compare over more seeds.")
    return lines


# An MoE layer has collapsed when one expert receives at least this share of the step's positions
# (each position goes to top_k experts, so a balanced expert gets top_k / n_experts of them).
COLLAPSE_SHARE = 0.9


def router_metrics(aux: float, counts, positions: int, coef: float, loss: float) -> dict:
    """An MoE step's routing for metrics.jsonl.

    aux: the step's load-balancing loss (unscaled; the training loss holds coef * aux);
    counts: (M, E) positions each MoE layer sent to each expert, over the global batch of
    `positions`. expert_load[m][e] = counts / positions, the share of positions routed to expert e
    (a layer's shares sum to top_k); lm_loss = loss - coef * aux, the next-token (or next-bag) part.
    """
    load = (counts.double() / positions).cpu()
    return {"aux_loss": aux, "lm_loss": loss - coef * aux, "expert_load_max": float(load.max()),
            "expert_load_min": float(load.min()), "expert_load": [[round(v, 5) for v in row] for row in load.tolist()]}


def collapsed_layers(load: list[list[float]], n_experts: int, top_k: int) -> list[tuple[int, int, float]]:
    """(layer, expert, share) of every MoE layer whose busiest expert gets >= COLLAPSE_SHARE of the
    positions; none when every expert must get every position anyway (top_k = n_experts)."""
    if top_k >= n_experts:
        return []
    out = []
    for m, row in enumerate(load):
        e = max(range(len(row)), key=row.__getitem__)
        if row[e] >= COLLAPSE_SHARE:
            out.append((m, e, row[e]))
    return out


class ProgressBar:
    """A tqdm bar on a terminal; plain log lines every `log_every` steps elsewhere (CI, files)."""

    def __init__(self, total: int, enabled: bool = True, initial: int = 0):
        self.tty = sys.stderr.isatty()
        self.bar = None
        self.enabled = enabled
        if self.tty and enabled:
            from tqdm import tqdm

            self.bar = tqdm(total=total, initial=initial, unit="step", dynamic_ncols=True)
        self.total = total

    def update(self, rec: dict, ev: dict, log: Callable[[str], None], force: bool) -> None:
        val = f" val {ev['val_loss']:.3f}" if ev else ""
        loss = "skipped" if rec.get("skipped") else f"{rec['loss']:.4f}"
        if self.bar is not None:
            self.bar.set_postfix_str(f"phase {rec['phase']} s={rec['bag_size']} loss {loss}{val} "
                                     f"{rec['tokens_per_s'] / 1e3:.1f}k tok/s", refresh=False)
            self.bar.update(1)
        elif force and self.enabled:
            done = rec["step"] + 1
            eta = rec["elapsed_s"] / done * (self.total - done)  # elapsed_s counts the steps before a resume too
            gnorm = "-" if rec.get("skipped") else f"{rec['grad_norm']:.2f}"
            log(f"step {done}/{self.total} phase {rec['phase']} s={rec['bag_size']} loss {loss}{val} "
                f"lr {rec['lr']:.2e} gnorm {gnorm} {rec['tokens_per_s'] / 1e3:.1f}k tok/s "
                f"epoch {rec['epoch']:.3f} eta {eta:.0f}s")

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()


def truncate_metrics(path: Path, step: int) -> int:
    """Keep the metrics lines of steps before `step` (and drop a line torn by a kill), so the
    resumed run appends without duplicated or missing steps. Returns the number of lines dropped."""
    if not path.exists():
        return 0
    keep, dropped = [], 0
    for line in path.read_text().splitlines():
        try:
            ok = json.loads(line)["step"] < step
        except (ValueError, KeyError, TypeError):
            ok = False
        if ok:
            keep.append(line + "\n")
        else:
            dropped += 1
    write_text(path, "".join(keep), intact=f"{path} is unchanged",
               fix=f"free some space and resume again: {command('superpose', 'train', '--resume', path.parent)}")
    return dropped


def collapse_warning(load: list[list[float]], model, step: int, phase, warned: set) -> str | None:
    """The warning of an MoE step whose expert load collapsed (`collapsed_layers`), once per phase:
    None when none collapsed or this phase has been warned about (`warned`, its phase indices,
    gets this one). model: the run's ModelConfig; phase: the step's `Phase`."""
    collapsed = collapsed_layers(load, model.n_experts, model.top_k)
    if not collapsed or phase.index in warned:
        return None
    warned.add(phase.index)
    layer, expert, share = collapsed[0]
    return (f"warning: expert-load collapse at step {step} (phase {phase.index}, s={phase.bag_size}): MoE layer "
            f"{layer} sends {share:.0%} of positions to expert {expert} (balanced: {model.top_k / model.n_experts:.0%}), "
            f"{len(collapsed)} layer(s) so; raise --model.router_aux_coef or lower the LR (said once per phase)")


def switch_record(phase, step: int, done: list[str], next_token: bool, tst) -> tuple[str, dict]:
    """The log line and the metrics.jsonl event of a phase boundary at `step`. done: what the
    switch-time ablations did (`tst_step.switch`); next_token: the switch into next-token training,
    whose event also says what tst.reinit and tst.reset_optimizer were."""
    kept = "parameters, optimizer state" if not done else f"{', '.join(done)}; otherwise parameters"
    what = phase.name if "s=" in phase.name else f"{phase.name}, s={phase.bag_size}"
    line = (f"step {step}: switching to phase {phase.index} ({what}); {kept}, "
            "LR schedule and data position carry over")
    # Every phase boundary is an event in metrics.jsonl (and so in the trackers and plots).
    event = {"type": "switch", "step": step, "phase": phase.index, "bag_size": phase.bag_size, "next_token": next_token}
    if next_token:
        event.update(reinit=tst.reinit, reset_optimizer=tst.reset_optimizer)
    return line, event


def train_record(where: dict, out: dict, st, loader, elapsed_s: float, step_time: float, raw_tokens: int) -> dict:
    """A step's metrics.jsonl line. out: `Trainer.train_step`'s; st: the RunState after the step;
    raw_tokens: the raw tokens the step read (B * its row's input tokens)."""
    # JSON has no NaN: a skipped step logs loss and grad_norm as null and "skipped": true.
    rec = {"type": "train", **where, "loss": out["loss"] if out["finite"] else None, "lr": out["lr"],
           "grad_norm": out["grad_norm"] if out["finite"] else None, "tokens_seen": st.tokens_seen,
           "epoch": loader.epoch_progress, "elapsed_s": elapsed_s, "train_time_s": st.train_time_s,
           "step_time_s": step_time, "data_time_s": out["data_time_s"], "tokens_per_s": raw_tokens / step_time,
           "skipped_steps": st.skipped_steps, **({} if out["finite"] else {"skipped": True}),
           **loader.epoch_record()}  # a mixture's: each source's epochs ("epoch" is the most-read one's)
    return rec
