"""Continuing a stopped run: which checkpoint, with which config, and what a resume may change.

A resume continues the run bit for bit, so only fields that cannot change the arithmetic
(RESUME_MAY_CHANGE: paths, device, logging, checkpoint cadence, ...) may be overridden, and a
checkpoint from another model shape, vocabulary or data is refused in one line
(`check_compatible`). `Trainer.load_checkpoint` restores one through `restore_weights_and_optimizer`
(any parallel mode) and `read_weights_and_optimizer`.
"""

from __future__ import annotations

import copy
import json
from pathlib import Path

import torch

from ..config import RESUME_MAY_CHANGE, Config, differences
from ..core.model import empty_model
from ..data import DataSource
from ..data.mixture import absolute_mix
from ..errors import UserError
from ..overrides import parse_overrides, set_field, set_fields
from .. import checkpoint
from . import distributed
from .optimizer import configure_optimizer


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
    return set_fields(cfg, pairs).validate()


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


def check_resumable(ckpt: Path, run_dir: Path, cfg: Config, dataset: DataSource) -> None:
    """Refuse a checkpoint that does not fit `cfg` and `dataset`, or the run's own config.json
    (a checkpoint copied in from another run disagrees with it). Its files are verified later,
    when the trainer restores it."""
    meta = checkpoint.read_meta(ckpt)
    check_compatible(meta, ckpt / "meta.json", cfg, dataset)
    try:
        own = Config.from_dict(json.loads((run_dir / "config.json").read_text()))
    except (OSError, ValueError, UserError):
        own = None
    if own is not None:
        check_compatible(meta, ckpt / "meta.json", own, dataset)


def check_compatible(meta: dict, meta_path: Path, cfg: Config, ds: DataSource) -> None:
    """Refuse a checkpoint that does not belong to this run: another model shape, another
    vocabulary or data, or any config field outside RESUME_MAY_CHANGE changed."""
    try:
        saved = Config.from_dict(meta["config"])
    except UserError as e:
        raise UserError(f"checkpoint {meta_path} holds a config this superpose cannot read ({e})") from None
    fp, here = meta["data"], ds.fingerprint()
    where = ds.described
    if fp.get("vocab_size") != here["vocab_size"] or fp.get("tokenizer_sha256") != here["tokenizer_sha256"]:
        raise UserError(f"checkpoint {meta_path} was trained with another vocabulary ({fp.get('vocab_size')} tokens, "
                        f"tokenizer sha256 {str(fp.get('tokenizer_sha256'))[:12]}) than {where} "
                        f"({ds.vocab_size} tokens, {here['tokenizer_sha256'][:12]}); resume on the run's own data")
    if fp.get("sources") != here.get("sources"):  # a mixture's sources (weights, splits); None for one directory
        def say(sources):
            return "one data directory" if sources is None else "sources of " + ", ".join(
                f"{s['train_tokens']:,} train tokens (weight {s['weight']:.4g})" for s in sources)
        raise UserError(f"checkpoint {meta_path} was trained on {say(fp.get('sources'))}, {where} has "
                        f"{say(here.get('sources'))}; resume on the run's own data")
    if fp.get("train_tokens") != here["train_tokens"]:
        raise UserError(f"checkpoint {meta_path} was trained on a train split of {fp.get('train_tokens')} tokens, the "
                        f"data in {ds.path} has {here['train_tokens']}; resume on the run's own data")
    changed = [(k, a, b) for k, a, b in differences(saved, cfg) if k not in RESUME_MAY_CHANGE
               and not (k == "model.vocab_size" and b == 0)  # 0 = from the data, checked just above
               and not (k == "data.mix" and a and b and absolute_mix(a) == absolute_mix(b))]  # relative paths
    shape = [(k, a, b) for k, a, b in changed if k.startswith("model.")]
    if shape:
        what = "vocabulary" if [k for k, _, _ in shape] == ["model.vocab_size"] else "model shape"
        raise UserError(f"checkpoint {meta_path} holds another {what}: " + ", ".join(
            f"{k}={a} there, {b} here" for k, a, b in shape))
    if changed:
        raise UserError(f"checkpoint {meta_path} was written with other settings: " + ", ".join(
            f"{k}={a!r} there, {b!r} here" for k, a, b in changed) +
            f"; a resumed run may change only {', '.join(RESUME_MAY_CHANGE)}")


def read_weights_and_optimizer(path: Path, model: torch.nn.Module, optimizer: torch.optim.Optimizer,
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


def restore_weights_and_optimizer(path: Path, model: torch.nn.Module, optimizer: torch.optim.Optimizer, cfg: Config,
                                  par: distributed.Parallel) -> None:
    """A checkpoint's weights and optimizer state into a run's model and optimizer, in any
    parallel mode. Under FSDP rank 0 reads the full state into a plain CPU model and optimizer,
    then broadcasts it into every rank's shards: any world size resumes any checkpoint."""
    if par.mode != "fsdp":
        read_weights_and_optimizer(path, model, optimizer, par.device)
        return
    plain = optim_state = None
    if par.is_main:
        plain = empty_model(cfg.model, "cpu")
        optim_state = read_weights_and_optimizer(path, plain, configure_optimizer(plain, cfg), "cpu")
    distributed.load_full_state(model, optimizer, plain, optim_state)
