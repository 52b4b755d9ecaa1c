"""`superpose plot`: training runs drawn from their metrics.jsonl, once or while they train.

    records = read_metrics(run_dir)            # every whole JSON line (a torn last one is skipped)
    s = run_series(records, "step")            # x and y of each panel, the phase boundaries
    plot_runs([run_dir, ...], out, "tokens")   # the 2 x 2 figure: train loss, val loss, lr, grad norm
    watch([run_dir, ...], out, "step", 10, log)  # redraw while metrics.jsonl grows, until summary.json

metrics.jsonl is the source of truth: `train` lines carry loss, lr, grad_norm, phase, bag_size,
tokens_seen and elapsed_s; `eval` lines val_loss; a `switch` line marks each phase boundary
(older files have one only where the switch reset or re-drew something). A phase boundary is
where (phase, bag_size) changes from one step to the next, so every stage of a curriculum gets
its line, with or without a `switch` record.

Every x is "after the step": step k's line is drawn at k + 1 steps done, its tokens_seen and
elapsed_s are counted after the step, and a boundary before step S is drawn where step S - 1 ended.
"""

from __future__ import annotations

import json
import math
import time
from dataclasses import dataclass, field
from pathlib import Path
from collections.abc import Callable

from matplotlib.backend_bases import FigureCanvasBase
from matplotlib.lines import Line2D

from ..errors import UserError
from .report import plt, save_figure

AXES = {"step": (None, "optimizer steps"), "tokens": ("tokens_seen", "raw tokens read"),
        "time": ("elapsed_s", "wall clock since the start (s)")}
"""--x: the train/eval record field each axis reads (steps are `step` + 1) and its label."""

FIGSIZE, DPI = (11.0, 7.5), 120  # DPI is save_figure's: the PNG is 1320 x 900 pixels
FINISHED = "summary.json"  # the trainer writes it last: a run without it is not finished (training/save.py save_final)
FIX = "free some space and run the same command again"  # after intact="metrics.jsonl is only read"


@dataclass
class RunSeries:
    """One run's curves on one x axis. Skipped steps (train.on_nan=skip) have NaN loss and grad norm,
    so their lines break there."""

    x: list[float] = field(default_factory=list)
    loss: list[float] = field(default_factory=list)
    lr: list[float] = field(default_factory=list)
    grad_norm: list[float] = field(default_factory=list)
    superposed: list[bool] = field(default_factory=list)
    """True for a phase-1 step, whose loss is the multi-hot next-bag CE (>= log s, not a next-token loss)."""
    eval_x: list[float] = field(default_factory=list)
    val_loss: list[float] = field(default_factory=list)
    boundaries: list[tuple[int, float, str]] = field(default_factory=list)
    """(S, x, label) per phase boundary: step S is the first of the new phase or stage, x is where
    step S - 1 (the last step logged before S) ended, the label says "s=8→4"."""
    steps: list[int] = field(default_factory=list)
    """The 0-based step of each point of x."""

    @property
    def last_step(self) -> int:
        return self.steps[-1] if self.steps else -1


DAMAGED = ("the file is damaged (edited, or not written by superpose train); plot the other runs, or restore it "
           "from a copy")


def read_metrics(run: Path) -> list[dict]:
    """The records of RUN/metrics.jsonl. A last line without its newline is skipped: a trainer
    may be halfway through writing it. Any other line that is not a JSON object is one UserError
    naming the line: the file is damaged, and drawing around it would hide that."""
    path = Path(run) / "metrics.jsonl"
    data = path.read_bytes()
    lines = data.split(b"\n")
    out = []
    for number, line in enumerate(lines, start=1):
        if not line.strip():
            continue
        try:
            rec = json.loads(line.decode("utf-8"))
        except ValueError as e:  # UnicodeDecodeError is one
            if number == len(lines) and line.startswith(b"{"):  # the line being written
                continue
            raise UserError(f"{path} line {number} is not a JSON record ({str(e).splitlines()[0][:80]}); "
                            f"{DAMAGED}") from None
        if not isinstance(rec, dict):
            raise UserError(f"{path} line {number} is not a JSON object; {DAMAGED}")
        out.append(rec)
    return out


def _numbers(r: dict, name: str, keys: tuple[str, ...], nullable: tuple[str, ...] = ()) -> None:
    """Refuse a record whose fields are missing or not numbers (a mistyped metrics.jsonl)."""
    for key in keys:
        v = r.get(key)
        if v is None and key in nullable and key in r:
            continue
        if isinstance(v, bool) or not isinstance(v, (int, float)):
            got = "no " + key if key not in r else f"{key}={v!r}"
            raise UserError(f"{name}: a {r.get('type')} line of its metrics.jsonl has {got}, not a number; {DAMAGED}")


def check_run(run: Path, empty_ok: bool = False) -> None:
    """One line naming the problem and its fix when RUN cannot be plotted."""
    run = Path(run)
    if not run.exists():
        raise UserError(f"{run} does not exist; give the run directory that `superpose train --out` wrote")
    if not (run / "metrics.jsonl").is_file():
        raise UserError(f"{run} has no metrics.jsonl; give a run directory written by `superpose train` "
                        "(not a checkpoint or a data directory)")
    if not empty_ok and not any(r.get("type") == "train" for r in read_metrics(run)):
        raise UserError(f"{run / 'metrics.jsonl'} has no step yet; plot again after the run's first step, or use "
                        "--watch, which waits for it")


def run_series(records: list[dict], x: str, name: str = "run") -> RunSeries:
    """The curves of one run's records against x ("step", "tokens" or "time"). Raises a UserError
    naming the run when its records lack that x (elapsed_s came after the first metrics files)."""
    key, _ = AXES[x]
    s = RunSeries()
    prev = None  # the previous step's (phase, bag_size)
    for r in records:
        if r.get("type") not in ("train", "eval"):
            continue
        if r["type"] == "eval":
            _numbers(r, name, ("step", "val_loss"))
        else:
            _numbers(r, name, ("step", "lr", "phase", "bag_size", "loss", "grad_norm"), nullable=("loss", "grad_norm"))
        if key is not None and key not in r:
            raise UserError(f"{name}: its metrics.jsonl lines have no {key} (written by an older superpose), so "
                            f"--x {x} cannot be drawn; use --x step" + (" or --x tokens" if x == "time" else ""))
        if key is not None:
            _numbers(r, name, (key,))
        at = r["step"] + 1 if key is None else r[key]
        if r["type"] == "eval":
            s.eval_x.append(at)
            s.val_loss.append(r["val_loss"])
            continue
        phase = (r["phase"], r["bag_size"])
        if prev is not None and phase != prev:
            s.boundaries.append((r["step"], s.x[-1], f"s={prev[1]}→{phase[1]}"))
        prev = phase
        s.steps.append(r["step"])
        s.x.append(at)
        s.loss.append(_num(r["loss"]))
        s.lr.append(r["lr"])
        s.grad_norm.append(_num(r["grad_norm"]))
        s.superposed.append(r["phase"] == 1)
    # A switch record marks its step too. It comes with a phase change, so this only adds a line
    # where the train lines around the switch are missing.
    known = {b[0] for b in s.boundaries}
    for r in records:
        before = [x for k, x in zip(s.steps, s.x) if k < r.get("step", 0)]
        if r.get("type") == "switch" and r["step"] not in known and before:
            s.boundaries.append((r["step"], before[-1], "switch"))
    s.boundaries.sort()
    return s


def _num(v) -> float:
    return math.nan if v is None else float(v)


def run_names(runs: list[Path]) -> list[str]:
    """Each run's directory name; where two are equal, as many parent folders as tell them apart."""
    parts = [Path(r).resolve().parts for r in runs]
    names = []
    for i, p in enumerate(parts):
        k = 1
        while k < len(p) and any(q != p and q[-k:] == p[-k:] for q in parts):
            k += 1
        name = "/".join(p[-k:])
        names.append(name if name not in names else f"{name} ({i + 1})")  # the same directory twice
    return names


def default_out(runs: list[Path], out: str | None) -> Path:
    """RUN/plot.png for one run; several runs need --out (no folder of theirs is the obvious home)."""
    if out:
        return Path(out)
    if len(runs) > 1:
        raise UserError(f"{len(runs)} runs go in one image: name it with --out PNG (e.g. --out runs/plot.png)")
    return Path(runs[0]) / "plot.png"


def plot_runs(runs: list[Path], out: Path, x: str = "step", records: list[list[dict]] | None = None) -> Path:
    """Draw `runs` (their metrics.jsonl, or `records` already read) into `out`, atomically, 2 x 2:

        train loss (phase 1 dashed)   val loss
        learning rate                 grad norm (log y)

    one colour per run; each phase boundary a dotted vertical line of the run's colour on every
    panel, labelled with its bag-size change on the train-loss panel."""
    records = records if records is not None else [read_metrics(r) for r in runs]
    names = run_names(runs)
    series = [run_series(recs, x, name) for recs, name in zip(records, names)]
    fig, axes = plt.subplots(2, 2, figsize=FIGSIZE, sharex=True)
    (ax_loss, ax_val), (ax_lr, ax_gn) = axes
    for i, (s, name) in enumerate(zip(series, names)):
        c = f"C{i % 10}"
        # Phase 1's multi-hot loss and phase 2's next-token loss are different quantities: draw them
        # as two lines (dashed, solid) so the jump at the switch is not read as a loss spike.
        for keep, ls in ((True, "--"), (False, "-")):
            ax_loss.plot(s.x, [v if p == keep else math.nan for v, p in zip(s.loss, s.superposed)], color=c, ls=ls,
                         lw=1, label=name if keep == all(s.superposed) else None)  # one legend entry
        ax_val.plot(s.eval_x, s.val_loss, color=c, marker="o", ms=3, lw=1)
        ax_lr.plot(s.x, s.lr, color=c, lw=1)
        ax_gn.plot(s.x, s.grad_norm, color=c, lw=0.8)
        for _, bx, label in s.boundaries:
            for ax in axes.flat:
                ax.axvline(bx, color=c, ls=":", lw=1, alpha=0.8)
            ax_loss.annotate(label, (bx, 1), xycoords=("data", "axes fraction"), xytext=(2, -2),
                             textcoords="offset points", rotation=90, va="top", fontsize=6, color=c)
    ax_loss.set_title("train loss (dashed: phase 1, multi-hot next-bag CE, >= log s; solid: next-token CE)",
                      fontsize=8)
    ax_val.set_title("validation loss (next-token CE, nats)", fontsize=8)
    ax_lr.set_title("learning rate", fontsize=8)
    ax_gn.set_title("gradient norm (before clipping)", fontsize=8)
    if any(v > 0 for s in series for v in s.grad_norm):
        ax_gn.set_yscale("log")
    handles, _ = ax_loss.get_legend_handles_labels()
    handles += [Line2D([], [], color="gray", ls="--", lw=1, label="phase 1 (multi-hot loss)"),
                Line2D([], [], color="gray", ls=":", lw=1, label="phase boundary")]
    ax_loss.legend(handles=handles, fontsize=7, loc="upper right")
    for ax in axes.flat:
        ax.grid(alpha=0.3)
        ax.tick_params(which="both", labelsize=7)
    for ax in axes[1]:
        ax.set_xlabel(AXES[x][1], fontsize=8)
    fig.tight_layout()
    out.parent.mkdir(parents=True, exist_ok=True)
    try:
        save_figure(fig, out, intact="metrics.jsonl is only read", fix=FIX)
    finally:
        plt.close(fig)
    return out


def check_out(out: Path) -> None:
    """A suffix matplotlib can write (the figure's format comes from it)."""
    formats = FigureCanvasBase.get_supported_filetypes()
    if out.suffix.lstrip(".").lower() not in formats:
        raise UserError(f"--out {out}: give a file ending in .png (or {', '.join('.' + f for f in sorted(formats))})")


def watch(runs: list[Path], out: Path, x: str, every: float, log: Callable[[str], None],
          sleep: Callable[[float], None] = time.sleep) -> None:
    """Redraw `out` whenever a run's metrics.jsonl grows, one line per redraw, until every run has
    its summary.json; Ctrl-C stops quietly, the last image kept (each is renamed in whole)."""
    names, drawn = run_names(runs), None
    try:
        while True:
            # Finished is read before the sizes: summary.json is written after metrics.jsonl is
            # closed, so a run seen finished here is read whole below.
            finished = [(Path(r) / FINISHED).exists() for r in runs]
            sizes = [_size(Path(r) / "metrics.jsonl") for r in runs]
            if sizes != drawn:
                records = [read_metrics(r) if size >= 0 else [] for r, size in zip(runs, sizes)]
                if any(r.get("type") == "train" for recs in records for r in recs):
                    plot_runs(runs, out, x, records)
                    drawn = sizes
                    steps = [run_series(recs, "step").last_step + 1 for recs in records]
                    log(f"{time.strftime('%H:%M:%S')} {out}: " + ", ".join(
                        f"{n} step {k}{' (finished)' if f else ''}" for n, k, f in zip(names, steps, finished)))
            if all(finished) and drawn is not None:
                return
            sleep(every)
    except KeyboardInterrupt:
        return


def _size(path: Path) -> int:
    """-1 while a file is missing (a resume renames a failed run's metrics.jsonl before it starts anew)."""
    try:
        return path.stat().st_size
    except FileNotFoundError:
        return -1
