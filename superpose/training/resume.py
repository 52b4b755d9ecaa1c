"""Continuing a stopped run: which checkpoint, with which config, and what a resume may change.

A resume continues the run bit for bit, so only fields that cannot change the arithmetic
(RESUME_MAY_CHANGE: paths, device, logging, checkpoint cadence, ...) may be overridden, and a
checkpoint from another model shape, vocabulary or data is refused in one line
(`checkpointer.check_compatible`).
"""

from __future__ import annotations

import copy
import json
from pathlib import Path

from ..config import RESUME_MAY_CHANGE, Config, parse_overrides, set_field
from ..data import Dataset, Mixture
from ..data.mixture import absolute_mix
from ..errors import UserError
from .. import checkpoint
from . import checkpointer
from .checkpoint import remove_leftovers
from .metrics import truncate_metrics


def resume_config(run_dir: Path, overrides: list[str] = ()) -> Config:
    """The config stored in a run's newest checkpoint, with overrides of the fields a resume may
    change (RESUME_MAY_CHANGE); any other override is refused, since it would break exactness."""
    path = checkpoint.newest(run_dir)
    meta = checkpoint.read_meta(path)
    try:
        cfg = Config.from_dict(meta["config"])
    except UserError as e:
        raise UserError(f"checkpoint {path / 'meta.json'} holds a config this superpose cannot read ({e})") from None
    pairs = parse_overrides(list(overrides))
    # An override equal to the stored value changes nothing, so it is accepted (a job script that
    # repeats its settings on every requeue must not be refused).
    refused = [k for k, v in pairs if k not in RESUME_MAY_CHANGE and not _same(cfg, k, v)]
    if refused:
        raise UserError(f"--resume continues the run exactly as it was configured, so {', '.join('--' + k for k in refused)} "
                        f"cannot change; a resumed run may change only {', '.join(RESUME_MAY_CHANGE)}")
    for key, value in pairs:
        set_field(cfg, key, value)
    return cfg.validate()


def _same(cfg: Config, key: str, value: str) -> bool:
    probe = copy.deepcopy(cfg)
    try:
        set_field(probe, key, value)
    except UserError:
        return False
    if key == "data.mix" and probe.data.mix and cfg.data.mix:  # stored with absolute paths (resolve_from_data)
        try:
            return absolute_mix(probe.data.mix) == absolute_mix(cfg.data.mix)
        except ValueError:
            return False
    section, name = key.split(".", 1)
    return getattr(getattr(probe, section), name) == getattr(getattr(cfg, section), name)


def newest_unfinished(run_dir: Path) -> Path:
    """The checkpoint a resume continues from: the run's newest. A finished run is refused, unless
    its final model is missing or damaged: the resume then writes it again from the newest
    checkpoint (redoing the steps after it, bit for bit)."""
    if (run_dir / "summary.json").exists():
        try:
            checkpoint.verify_final(run_dir)
        except UserError as e:
            if not checkpoint.checkpoints(run_dir):
                raise UserError(f"{str(e).split(';')[0]}; the run saved no checkpoint to write it again from, so it "
                                "must be trained again (superpose train --out a new directory)") from None
        else:
            raise UserError(f"{run_dir} is a finished run (it has summary.json and its final model); nothing to "
                            "resume")
    return checkpoint.newest(run_dir)


def check_resumable(ckpt: Path, run_dir: Path, cfg: Config, dataset: Dataset | Mixture) -> None:
    """Refuse a checkpoint that does not fit `cfg` and `dataset`, or the run's own config.json
    (a checkpoint copied in from another run disagrees with it). Its files are verified later,
    when the trainer restores it."""
    meta = checkpoint.read_meta(ckpt)
    checkpointer.check_compatible(meta, ckpt / "meta.json", cfg, dataset)
    try:
        own = Config.from_dict(json.loads((run_dir / "config.json").read_text()))
    except (OSError, ValueError, UserError):
        own = None
    if own is not None:
        checkpointer.check_compatible(meta, ckpt / "meta.json", own, dataset)


def continue_from(trainer, ckpt: Path) -> None:
    """Restore `ckpt` into a freshly built trainer, remove what interrupted saves left behind, and
    cut metrics.jsonl back to the checkpoint's step, so each step appears once."""
    trainer.load_checkpoint(ckpt)
    main, run_dir, st = trainer.par.is_main, trainer.run_dir, trainer.state  # only rank 0 touches the run directory
    gone = remove_leftovers(run_dir) if main else []
    dropped = truncate_metrics(run_dir / "metrics.jsonl", st.step) if main else 0
    steps = trainer.cfg.train.steps
    phase = trainer.schedule.phase(min(st.step, steps - 1))
    trainer.log(f"resuming {run_dir} from {ckpt.name}: step {st.step} of {steps}, phase {phase.index} "
                f"(s={phase.bag_size}), {st.tokens_seen:,} tokens seen; {dropped} metrics lines past it dropped"
                + (f"; removed leftovers of interrupted saves: {', '.join(gone)}" if gone else ""))
