"""Experiment trackers: TensorBoard and Weights & Biases, fed from the metrics stream.

Every record the trainer writes to metrics.jsonl (the source of truth) also goes to each tracker
the config turns on (`log.tensorboard`, `log.wandb`):

    train / eval records   every number in them, as scalars `train/<field>` and `eval/<field>`
                           at their step (nested dicts flatten to `train/router/aux_loss`, ...)
    switch / other records an event: TensorBoard text under `events/<type>`; in W&B
                           `events/<type>` = 1 with the record's numbers, and the step of
                           the switch into next-token training in the run summary

Both libraries are optional (`superpose[track]`): `check` names the missing one before anything
is trained. A tracker that fails while a run goes (a full disk, a lost connection) is dropped
with one warning; training and metrics.jsonl go on.
"""

from __future__ import annotations

import importlib.util
import json
import secrets
from pathlib import Path
from collections.abc import Callable

from ..errors import UserError
from ..files import write_text

EXTRA = "pip install 'superpose[track]'"


def check(log) -> None:
    """Refuse, in one line, a tracker whose library is not installed (before a run starts)."""
    for on, module, key in ((log.tensorboard, "tensorboard", "--log.tensorboard"),
                            (bool(log.wandb), "wandb", f"--log.wandb={log.wandb}")):
        if on and importlib.util.find_spec(module) is None:
            raise UserError(f"{key} needs the {module} package, which is not installed: {EXTRA} "
                            f"(or pip install {module}), or drop {key.split('=')[0]}")


def scalars(record: dict, prefix: str = "") -> dict[str, float]:
    """The record's numbers as flat `a/b` keys; strings, lists and nulls (a skipped step's loss)
    have no scalar form and are left out."""
    out: dict[str, float] = {}
    for key, value in record.items():
        if key in ("type", "step") and not prefix:
            continue
        if isinstance(value, dict):
            out.update(scalars(value, f"{prefix}{key}/"))
        elif isinstance(value, (int, float)):  # bool is an int: "skipped": true logs as 1
            out[f"{prefix}{key}"] = float(value)
    return out


class TensorBoard:
    """Event files in RUN_DIR/tensorboard through `torch.utils.tensorboard.SummaryWriter`. A
    resumed run purges the events at and after its resume step, as metrics.jsonl drops them, so
    the curves show each step once."""

    name = "TensorBoard"

    def __init__(self, run_dir: Path, config: dict, resume_step: int):
        from torch.utils.tensorboard import SummaryWriter

        self.writer = SummaryWriter(log_dir=str(run_dir / "tensorboard"), purge_step=resume_step or None)
        if not resume_step:
            self.writer.add_text("config", "```\n" + json.dumps(config, indent=2) + "\n```", 0)

    def write(self, record: dict) -> None:
        kind, step = record["type"], record.get("step", 0)
        if kind in ("train", "eval"):
            for key, value in scalars(record).items():
                self.writer.add_scalar(f"{kind}/{key}", value, step)
        else:
            self.writer.add_text(f"events/{kind}", json.dumps(record), step)

    def close(self) -> None:
        self.writer.close()


class WandB:
    """A W&B run in project `log.wandb`, its files in RUN_DIR/wandb. The run's id is kept in
    RUN_DIR/wandb_id, so a resumed run continues the same W&B run (W&B ignores steps below the
    last it has, so steps a resume repeats are logged once)."""

    name = "W&B"

    def __init__(self, run_dir: Path, config: dict, resume_step: int, project: str, name: str):
        import wandb

        id_file = run_dir / "wandb_id"
        run_id = id_file.read_text().strip() if id_file.is_file() else ""
        if not run_id:
            run_id = secrets.token_hex(4)
            write_text(id_file, run_id + "\n", fix="free some space and run the command again")
        try:
            self.run = wandb.init(project=project, name=name or "/".join(run_dir.resolve().parts[-2:]), id=run_id,
                                  resume="allow", dir=str(run_dir), config=config,
                                  settings=wandb.Settings(console="off", silent=True))
        except Exception as e:  # wandb raises its own errors for login, network and settings problems
            raise UserError(f"W&B could not start a run in project {project!r} ({str(e).splitlines()[0]}); log in "
                            "with `wandb login`, or set WANDB_MODE=offline to log into the run directory and "
                            "`wandb sync` later") from None
        self._step, self._row = None, {}

    def write(self, record: dict) -> None:
        # One W&B row per step: a step's train line, its evaluation and a switch event arrive one
        # after another, and W&B takes a step number once (a later log at that step is dropped),
        # so the row goes out when the next step's first record arrives, or at close.
        kind, step = record["type"], record.get("step", 0)
        if step != self._step:
            self._flush()
            self._step = step
        if kind in ("train", "eval"):
            self._row.update({f"{kind}/{k}": v for k, v in scalars(record).items()})
        else:
            self._row.update({f"events/{kind}": 1, **{f"events/{kind}/{k}": v for k, v in scalars(record).items()}})
            if kind == "switch" and record.get("next_token"):
                self.run.summary["switch_step"] = step

    def _flush(self) -> None:
        if self._row:
            self.run.log(self._row, step=self._step)
            self._row = {}

    def close(self) -> None:
        self._flush()
        self.run.finish()


def open_trackers(cfg, run_dir: Path, resume_step: int) -> list:
    """The trackers `cfg.log` turns on, for rank 0 of a run (the config goes along for the record)."""
    check(cfg.log)
    config = cfg.to_dict()
    out: list = []
    if cfg.log.tensorboard:
        out.append(TensorBoard(run_dir, config, resume_step))
    if cfg.log.wandb:
        out.append(WandB(run_dir, config, resume_step, cfg.log.wandb, cfg.log.wandb_name))
    return out


class Fanout:
    """Sends each record to every tracker; one that raises is dropped with one warning (through
    `warn`), so a tracker can never stop training or metrics.jsonl."""

    def __init__(self, trackers: list, warn: Callable[[str], None]):
        self.trackers, self.warn = list(trackers), warn

    def _each(self, action: Callable) -> None:
        for tracker in list(self.trackers):
            try:
                action(tracker)
            except Exception as e:  # whatever the library raises; metrics.jsonl keeps everything
                self.trackers.remove(tracker)
                self.warn(f"warning: {tracker.name} tracking stopped ({type(e).__name__}: {e}); "
                          "metrics.jsonl goes on, and `superpose plot` draws it")

    def write(self, record: dict) -> None:
        self._each(lambda t: t.write(record))

    def close(self) -> None:
        self._each(lambda t: t.close())
        self.trackers = []


__all__ = ["check", "scalars", "TensorBoard", "WandB", "open_trackers", "Fanout", "EXTRA"]
