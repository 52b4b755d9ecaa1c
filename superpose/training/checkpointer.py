"""A trainer's checkpoints: what `Trainer.save_checkpoint`, `--resume` and the end of a run write
and read, on top of the checkpoint directory format (superpose/checkpoint.py: step-N directories,
checksums, reading) and its writer (training/checkpoint.py: atomic saves, pruning). In the spirit
of torchtitan's checkpointer: the trainer's state is its weights, its optimizer, and
`Trainer.progress()` (the RunState, the loader position, the RNG).
"""

from __future__ import annotations

import json
import platform
import shutil
import time
from pathlib import Path
from typing import TYPE_CHECKING

import torch

from ..config import RESUME_MAY_CHANGE, Config, differences, nan_advice
from ..core.model import empty_model
from ..data import Dataset, Mixture
from ..data.mixture import absolute_mix
from ..errors import UserError, command
from ..files import WriteError, file_record, sha256_file, write_file
from . import distributed
from .optimizer import configure_optimizer
from .state import RunState

from ..checkpoint import (DIRNAME, FINAL_FILES, checkpoint_advice, checkpoints, load_torch, load_weights, read_meta,
                          step_name, verify)
from .checkpoint import save

if TYPE_CHECKING:
    from .trainer import Trainer


# ----------------------------------------------------------------------------- a trainer's checkpoints
# What goes in: the trainer's weights, optimizer state and `Trainer.progress()` (the RunState,
# the loader position, the RNG states), plus what makes the directory explain itself (phase,
# schedule, data fingerprint, config). What comes out: the same, through `Trainer.load_progress`.

def data_fingerprint(ds: Dataset | Mixture) -> dict:
    """What a resumed run checks its data against: the vocabulary and the train split; for a
    mixture every source's split and weight (in "sources"), the token counts summed over them."""
    if not isinstance(ds, Mixture):
        return {"vocab_size": ds.vocab_size, "tokenizer_sha256": sha256_file(ds.tokenizer_path),
                "train_tokens": ds.train.num_tokens, "val_tokens": ds.val.num_tokens}
    sources = [{"weight": float(w), "train_tokens": s.train.num_tokens, "val_tokens": s.val.num_tokens}
               for s, w in zip(ds.sources, ds.weights)]
    return {"vocab_size": ds.vocab_size, "tokenizer_sha256": sha256_file(ds.tokenizer_path),
            "train_tokens": sum(s["train_tokens"] for s in sources),
            "val_tokens": sum(s["val_tokens"] for s in sources), "sources": sources}


def check_compatible(meta: dict, meta_path: Path, cfg: Config, ds: Dataset | Mixture) -> None:
    """Refuse a checkpoint that does not belong to this run: another model shape, another
    vocabulary or data, or any config field outside RESUME_MAY_CHANGE changed."""
    try:
        saved = Config.from_dict(meta["config"])
    except UserError as e:
        raise UserError(f"checkpoint {meta_path} holds a config this superpose cannot read ({e})") from None
    fp, here = meta["data"], data_fingerprint(ds)
    where = f"the mixture {ds.spec}" if isinstance(ds, Mixture) else f"the data in {ds.path}"
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


def save_trainer(trainer: Trainer, reason: str = "every") -> Path:
    """`step-NNNNNN/` for the trainer's state after `trainer.state.step` steps.

    Data parallel: every rank calls it; rank 0 writes the single-process format (under FSDP the
    full model and optimizer state are first gathered to it), the others wait for it."""
    t, par = trainer, trainer.par
    if not par.all_true(distributed.weights_finite(t.model)):
        raise UserError(f"the weights hold NaN or Inf after step {t.state.step - 1}; not saving them over the last "
                        f"good checkpoint: {nan_advice(t.cfg.optim)}")
    progress, step = t.progress(), t.state.step
    meta = _trainer_meta(t, reason, progress)
    if par.mode == "fsdp":  # a collective: the full state, on rank 0 only
        model, optim_state = distributed.gather_full_state(t.model, t.optimizer, t.cfg.model)
    else:
        model, optim_state = t.model, t.optimizer.state_dict()
    path = t.run_dir / DIRNAME / step_name(step)
    if par.is_main:
        path = save(t.run_dir, step, model, optim_state, progress["rng"], meta, keep=t.cfg.checkpoint.keep)
    par.barrier()  # no rank goes on, or exits on a signal, before the checkpoint is complete
    return path


def _trainer_meta(t: Trainer, reason: str, progress: dict | None = None) -> dict:
    """meta.json's content for the trainer's state (save adds the files, the step and the checksum)."""
    progress, step, steps = progress or t.progress(), t.state.step, t.cfg.train.steps
    phase = t.schedule.phase(min(step, steps - 1))  # the phase the run continues in
    # The LR and the phase are functions of the step; recorded here so the directory explains itself.
    schedule = {"total_steps": steps, "phase_switch_step": t.schedule.switch_step,
                "next_lr": t.schedule.lr(min(step, steps - 1))}
    return {**progress["run"].to_dict(), "phase": phase.index, "bag_size": phase.bag_size, "schedule": schedule,
            "loader": progress["loader"], "data": data_fingerprint(t.dataset), "reason": reason,
            "saved_at": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
            "versions": {"torch": torch.__version__, "python": platform.python_version()},
            "parallel": {"mode": t.par.mode, "world_size": t.par.world_size}, "config": t.cfg.to_dict()}


def restore_trainer(trainer: Trainer, path: Path) -> dict:
    """Verify a checkpoint directory, check it fits the trainer's run (model shape, vocabulary,
    data and every config field a resume may not change), then restore it. Returns its meta."""
    t, par = trainer, trainer.par
    meta = verify(path) if par.is_main else read_meta(path)  # rank 0 checks the files
    check_compatible(meta, path / "meta.json", t.cfg, t.dataset)
    if par.mode == "fsdp":
        # Rank 0 reads the full state into a plain CPU model and optimizer, then broadcasts it
        # into every rank's shards: any world size resumes any checkpoint.
        plain = optim_state = None
        if par.is_main:
            plain = empty_model(t.cfg.model, "cpu")
            optim_state = read_weights_and_optimizer(path, plain, configure_optimizer(plain, t.cfg), "cpu")
        distributed.load_full_state(t.model, t.optimizer, plain, optim_state)
    else:
        read_weights_and_optimizer(path, t.model, t.optimizer, t.device)
    t.load_progress({"run": RunState.from_dict(meta), "loader": meta["loader"], "rng": load_torch(path, "rng.pt")})
    return meta


def read_weights_and_optimizer(path: Path, model: torch.nn.Module, optimizer: torch.optim.Optimizer,
                               device: torch.device | str) -> dict:
    """A checkpoint's weights and optimizer state into `model` and `optimizer`, refusing files
    that do not fit them. Returns the optimizer state as read."""
    load_weights(path, model)
    opt = load_torch(path, "optimizer.pt", device)
    try:
        optimizer.load_state_dict(opt)
        fits = all(st["exp_avg"].shape == p.shape for p, st in optimizer.state.items())
    except (ValueError, KeyError, TypeError, RuntimeError):
        fits = False
    if not fits:
        raise UserError(f"checkpoint file {path / 'optimizer.pt'} does not fit this model's optimizer "
                        "(another model shape)")
    return opt


def save_final(trainer: Trainer, summary: dict) -> None:
    """The final model in the run directory: plain Llama weights, architecture and tokenizer,
    nothing about TST; then summary.json, which records each file's size and sha256 (every
    reader verifies them) and marks the run finished. Each file is written atomically. Data
    parallel: written by rank 0 (under FSDP from the gathered full weights).

    A full disk here must not lose the run: the weights are still in memory, so the final state
    is saved as a checkpoint (which --resume turns into the final model without redoing a step)
    when there is room for it; the one-line error says what is on disk and what to do."""
    from safetensors.torch import save_model

    t, model = trainer, trainer.model
    if t.par.mode == "fsdp":  # a collective: every rank takes part, rank 0 gets the plain model
        model, _ = distributed.gather_full_state(t.model, None, t.cfg.model)
    if not t.par.is_main:
        return
    run = t.run_dir
    def fix() -> str:
        return f"free some space and {checkpoint_advice(run)}"

    try:
        # summary.json goes last: a run without it is unfinished, and a resume completes it.
        architecture = json.dumps(t.cfg.model.to_dict(), indent=2) + "\n"
        for name, produce in (("model.safetensors", lambda p: save_model(model, str(p))),
                              ("model.json", lambda p: p.write_text(architecture)),
                              ("tokenizer.json", lambda p: shutil.copyfile(t.dataset.tokenizer_path, p))):
            write_file(run / name, produce, intact="the final model is not written yet", fix=fix)
        # config.json too: it decides what eval measures (context, data, evaluation tokens).
        summary["files"] = {name: file_record(run / name) for name in (*FINAL_FILES, "config.json")}
        text = json.dumps(summary, indent=2) + "\n"
        write_file(run / "summary.json", lambda p: p.write_text(text), intact="the final model is written", fix=fix)
    except WriteError as e:
        if not e.disk_full:
            raise
        for name in FINAL_FILES:  # a partial final model would be read as the run's result
            (run / name).unlink(missing_ok=True)
        raise WriteError(f"{e}; {_final_fallback(t)}", e.path, True, e.what) from None


def _final_fallback(t: Trainer) -> str:
    """After the final model failed to write for lack of space: the final state as a checkpoint,
    if it fits, else the newest checkpoint there is. Returns what to tell the user."""
    run, steps = t.run_dir, t.cfg.train.steps
    found = checkpoints(run)
    if not (found and found[-1][0] == steps) and t.par.mode != "fsdp":  # FSDP would need every rank here
        try:
            save(run, steps, t.model, t.optimizer.state_dict(), t.progress()["rng"], _trainer_meta(t, "final"),
                 keep=t.cfg.checkpoint.keep)
        except UserError:
            pass
        found = checkpoints(run)
    if found and found[-1][0] == steps:
        return (f"the trained weights are saved in checkpoint {found[-1][1]} (usable with superpose eval/generate/"
                f"export); free space and resume with: {command('superpose', 'train', '--resume', run)} to write "
                "the final model "
                "without redoing a step")
    if found:
        return (f"the newest checkpoint {found[-1][1].name} is intact: free space and resume with "
                f"{command('superpose', 'train', '--resume', run)} (it redoes steps {found[-1][0]}-{steps - 1}, "
                "bit for bit)")
    return ("no checkpoint fits either, so the trained weights could not be kept: free space and train again "
            "(checkpoint.every_minutes keeps a resumable state of long runs)")
