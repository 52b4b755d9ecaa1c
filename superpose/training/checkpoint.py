"""Checkpoints: one self-describing, versioned directory per step, written atomically; and what a
trainer saves into it and restores from it (`save_trainer`, `restore_trainer`, `save_final`).

    RUN_DIR/checkpoints/
        step-000120/            the state after 120 optimizer steps; a resumed run starts at step 120
            model.safetensors   weights (fp32 masters; a tied embedding is stored once)
            optimizer.pt        AdamW state (torch.save; read back with weights_only=True)
            rng.pt              torch generator states (CPU, and CUDA when used)
            meta.json           format_version, step, phase, bag_size, schedule, tokens_seen, skipped_steps,
                                train_time_s, elapsed_s, last_eval, loader position, data
                                fingerprint, the resolved config, and bytes + sha256 of each file
        latest                  "step-000120": the newest complete checkpoint, for people and scripts

Crash safety. A save writes everything into `.tmp-step-000120-<pid>/`, fsyncs every file and the
directory, renames it to `step-000120/` (atomic on POSIX) and fsyncs `checkpoints/`. So a
directory named `step-N` is always complete, and a process killed mid-save leaves only a `.tmp-*`
directory that resume never picks and removes. Resume takes the highest-numbered `step-N` (it
does not trust `latest`, which a kill can leave one save behind). Pruning runs only after the new
checkpoint is in place, never touches the newest, and first renames a victim to `.del-*`, so a
kill mid-delete never leaves a half `step-N` behind.

A `step-N` directory that fails verification (unreadable meta.json, another format version, a
file missing, shorter than recorded or failing its checksum) was damaged after it was written;
it is refused with one line naming the file, never silently skipped.
"""

from __future__ import annotations

import errno
import json
import os
import platform
import re
import shutil
import time
from pathlib import Path
from typing import TYPE_CHECKING

import torch

from ..config import RESUME_MAY_CHANGE, Config, differences
from ..core.model import empty_model
from ..data import Dataset
from ..errors import UserError
from ..files import sha256_file
from . import distributed, faults
from .optimizer import configure_optimizer
from .state import RunState

if TYPE_CHECKING:
    from .trainer import Trainer

FORMAT_VERSION = 1
DIRNAME = "checkpoints"
FILES = ("model.safetensors", "optimizer.pt", "rng.pt")
_STEP_DIR = re.compile(r"^step-(\d+)$")


def step_name(step: int) -> str:
    return f"step-{step:06d}"


def checkpoints(run_dir: Path) -> list[tuple[int, Path]]:
    """The `step-N` directories of a run, oldest first (temporary and doomed ones left out)."""
    root = Path(run_dir) / DIRNAME
    if not root.is_dir():
        return []
    found = [(int(m.group(1)), p) for p in root.iterdir() if p.is_dir() and (m := _STEP_DIR.match(p.name))]
    return sorted(found)


def newest(run_dir: Path) -> Path:
    """The newest checkpoint of a run; a UserError when it has none."""
    found = checkpoints(run_dir)
    if not found and Path(run_dir).parent.name == DIRNAME and (Path(run_dir) / "meta.json").exists():
        raise UserError(f"{run_dir} is one checkpoint; give its run directory ({Path(run_dir).parent.parent}): "
                        "resume always continues from the newest checkpoint")
    if not found:
        what = "does not exist" if not Path(run_dir).is_dir() else f"has no checkpoints (no {DIRNAME}/step-N)"
        raise UserError(f"cannot resume: {run_dir} {what}; give a run directory written with "
                        "--checkpoint.every N, or one stopped by SIGINT/SIGTERM")
    return found[-1][1]


def _fix(path: Path) -> str:
    """What to tell a user whose newest checkpoint is unusable."""
    m = _STEP_DIR.match(path.name)
    older = [p for s, p in checkpoints(path.parent.parent) if m and s < int(m.group(1))]
    if older:
        return f"delete {path} to resume from {older[-1].name}, the previous checkpoint"
    return "start the run again (no older checkpoint)"


def read_meta(path: Path) -> dict:
    """meta.json of a checkpoint directory: parsed, with a format version this superpose reads."""
    meta_path = Path(path) / "meta.json"
    try:
        meta = json.loads(meta_path.read_text())
    except FileNotFoundError:
        raise UserError(f"checkpoint {meta_path} is missing; the checkpoint is damaged: {_fix(Path(path))}") from None
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
        raise UserError(f"checkpoint {meta_path} is not readable JSON ({e}), truncated or corrupt: "
                        f"{_fix(Path(path))}") from None
    if not isinstance(meta, dict) or "format_version" not in meta:
        raise UserError(f"checkpoint {meta_path} has no format_version: not a superpose checkpoint; {_fix(Path(path))}")
    if meta["format_version"] != FORMAT_VERSION:
        raise UserError(f"checkpoint {meta_path} has format version {meta['format_version']!r}, this superpose reads "
                        f"version {FORMAT_VERSION}: resume it with the superpose that wrote it, or {_fix(Path(path))}")
    for key in ("step", "files", "config", "loader", "data"):
        if key not in meta:
            raise UserError(f"checkpoint {meta_path} lacks {key!r}: corrupt; {_fix(Path(path))}")
    return meta


def verify(path: Path) -> dict:
    """read_meta, then every file present with its recorded size and sha256."""
    path = Path(path)
    meta = read_meta(path)
    for name in FILES:
        f = path / name
        want = meta["files"].get(name)
        if want is None or not f.is_file():
            raise UserError(f"checkpoint file {f} is missing; the checkpoint is damaged: {_fix(path)}")
        size = f.stat().st_size
        if size != want["bytes"]:
            raise UserError(f"checkpoint file {f} is truncated or corrupt ({size} bytes, meta.json records "
                            f"{want['bytes']}): {_fix(path)}")
        if sha256_file(f) != want["sha256"]:
            raise UserError(f"checkpoint file {f} is corrupt (sha256 differs from meta.json): {_fix(path)}")
    return meta


def load_weights(path: Path, model: torch.nn.Module) -> None:
    """Weights into `model`, refusing a file whose tensors do not fit it (another model shape)."""
    from safetensors import safe_open
    from safetensors.torch import load_model

    f = Path(path) / "model.safetensors"
    want = {k: tuple(v.shape) for k, v in model.state_dict().items()}
    try:
        with safe_open(str(f), framework="pt") as st:
            for name in st.keys():
                shape = tuple(st.get_slice(name).get_shape())
                if name not in want:
                    raise UserError(f"checkpoint file {f} holds tensor {name!r}, which this model does not have "
                                    "(another model shape)")
                if shape != want[name]:
                    raise UserError(f"checkpoint file {f} holds {name} with shape {list(shape)}, this model needs "
                                    f"{list(want[name])} (another model shape)")
        load_model(model, str(f), strict=True, device=str(next(model.parameters()).device))
    except UserError:
        raise
    except Exception as e:  # safetensors' own errors: a header that is not one, missing tensors
        first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise UserError(f"checkpoint file {f} does not load into this model ({first}); {_fix(Path(path))}") from None


def load_torch(path: Path, name: str, device: torch.device | str = "cpu"):
    f = Path(path) / name
    try:
        return torch.load(f, map_location=device, weights_only=True)
    except Exception as e:  # torch raises many kinds for a damaged zip
        raise UserError(f"checkpoint file {f} does not load ({type(e).__name__}: "
                        f"{str(e).strip().splitlines()[0] if str(e).strip() else ''}); {_fix(Path(path))}") from None


# ----------------------------------------------------------------------------- writing

def save(run_dir: Path, step: int, model: torch.nn.Module, optimizer_state: dict, rng_state: dict, meta: dict,
         keep: int = 0) -> Path:
    """Write `RUN_DIR/checkpoints/step-NNNNNN/` atomically, point `latest` at it, then prune to `keep`.

    A checkpoint already saved for this step is kept as it is (the state of a step is unique).
    Any OSError (a full disk above all) removes the temporary directory and becomes a UserError
    that says the previous checkpoint is intact.
    """
    from safetensors.torch import save_model

    root = Path(run_dir) / DIRNAME
    final = root / step_name(step)
    if final.is_dir():
        return final
    root.mkdir(parents=True, exist_ok=True)
    tmp = root / f".tmp-{step_name(step)}-{os.getpid()}"
    current = "the checkpoint directory"
    try:
        if tmp.exists():
            shutil.rmtree(tmp)
        tmp.mkdir()
        files = {}
        for name in FILES:
            current = name
            f = tmp / name
            if name == "model.safetensors":
                try:
                    save_model(model, str(f))
                except Exception as e:  # safetensors reports I/O errors as SafetensorError("... (os error N)")
                    os_error = _as_oserror(e)
                    if os_error is None:
                        raise
                    raise os_error from e
                _fsync(f)
            else:
                with open(f, "wb") as out:
                    torch.save(optimizer_state if name == "optimizer.pt" else rng_state, out)
                    out.flush()
                    os.fsync(out.fileno())
            files[name] = {"bytes": f.stat().st_size, "sha256": sha256_file(f)}
            faults.kill_point(step, name)
        current = "meta.json"
        meta = {"format_version": FORMAT_VERSION, **meta, "step": step, "files": files}
        with open(tmp / "meta.json", "w") as out:
            out.write(json.dumps(meta, indent=2) + "\n")
            out.flush()
            os.fsync(out.fileno())
        faults.kill_point(step, "meta.json")
        _fsync(tmp)
        current = "the rename to " + final.name
        os.rename(tmp, final)
        _fsync(root)
        faults.kill_point(step, "renamed")
        current = "latest"
        pointer = root / f".latest-{os.getpid()}"
        pointer.write_text(final.name + "\n")
        _fsync(pointer)
        os.replace(pointer, root / "latest")
        _fsync(root)
        faults.kill_point(step, "latest")
    except OSError as e:
        shutil.rmtree(tmp, ignore_errors=True)
        (root / f".latest-{os.getpid()}").unlink(missing_ok=True)
        older = [p for s, p in checkpoints(run_dir) if s < step]
        if final.is_dir():  # only the `latest` pointer failed
            intact = f"{final.name} itself was written completely"
        else:
            intact = f"the previous checkpoint {older[-1].name} is intact" if older else "no earlier checkpoint exists"
        if e.errno in (errno.ENOSPC, errno.EDQUOT):
            raise UserError(f"no space left on device while writing {current} of checkpoint {final}; {intact}; "
                            f"free some space (or lower --checkpoint.keep) and resume with: superpose train "
                            f"--resume {run_dir}") from None
        raise UserError(f"cannot write {current} of checkpoint {final} ({e.strerror or e}); {intact}") from None
    except BaseException:  # a second Ctrl-C mid-save: leave no temporary directory behind
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    if keep > 0:
        prune(run_dir, keep)
    return final


def prune(run_dir: Path, keep: int) -> list[Path]:
    """Delete all but the newest `keep` (>= 1) checkpoints. Each victim is renamed to `.del-*` first,
    so an interrupted delete leaves no half `step-N`."""
    assert keep >= 1
    victims = checkpoints(run_dir)[:-keep]
    for step, p in victims:
        doomed = p.with_name(f".del-{p.name}")
        try:
            os.rename(p, doomed)
            faults.kill_point(step, "prune")
            shutil.rmtree(doomed)
        except OSError:  # what is left is removed on resume; never fail a run over a delete
            continue
    return [p for _, p in victims]


def remove_leftovers(run_dir: Path) -> list[str]:
    """Remove what killed saves and deletes left behind (`.tmp-*`, `.del-*`, `.latest-*`)."""
    root = Path(run_dir) / DIRNAME
    gone = []
    if root.is_dir():
        for p in root.iterdir():
            if p.name.startswith((".tmp-", ".del-", ".latest-")):
                shutil.rmtree(p) if p.is_dir() else p.unlink()
                gone.append(p.name)
    return sorted(gone)


def _fsync(path: Path) -> None:
    """Flush a file's or a directory's entries to the disk."""
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _as_oserror(e: Exception) -> OSError | None:
    """The OSError behind an exception (safetensors wraps them as "... (os error 28) ..."), or None."""
    if isinstance(e, OSError):
        return e
    m = re.search(r"os error (\d+)", str(e))
    return OSError(int(m.group(1)), os.strerror(int(m.group(1)))) if m else None


# ----------------------------------------------------------------------------- a trainer's checkpoints
# What goes in: the trainer's weights, optimizer state and `Trainer.progress()` (the RunState,
# the loader position, the RNG states), plus what makes the directory explain itself (phase,
# schedule, data fingerprint, config). What comes out: the same, through `Trainer.load_progress`.

def data_fingerprint(ds: Dataset) -> dict:
    """What a resumed run checks its data against: the vocabulary and the train split."""
    return {"vocab_size": ds.vocab_size, "tokenizer_sha256": sha256_file(ds.tokenizer_path),
            "train_tokens": ds.train.num_tokens, "val_tokens": ds.val.num_tokens}


def check_compatible(meta: dict, meta_path: Path, cfg: Config, ds: Dataset) -> None:
    """Refuse a checkpoint that does not belong to this run: another model shape, another
    vocabulary or data, or any config field outside RESUME_MAY_CHANGE changed."""
    try:
        saved = Config.from_dict(meta["config"])
    except UserError as e:
        raise UserError(f"checkpoint {meta_path} holds a config this superpose cannot read ({e})") from None
    fp, here = meta["data"], data_fingerprint(ds)
    if fp.get("vocab_size") != here["vocab_size"] or fp.get("tokenizer_sha256") != here["tokenizer_sha256"]:
        raise UserError(f"checkpoint {meta_path} was trained with another vocabulary ({fp.get('vocab_size')} tokens, "
                        f"tokenizer sha256 {str(fp.get('tokenizer_sha256'))[:12]}) than the data in {ds.path} "
                        f"({ds.vocab_size} tokens, {here['tokenizer_sha256'][:12]}); resume on the run's own data")
    if fp.get("train_tokens") != here["train_tokens"]:
        raise UserError(f"checkpoint {meta_path} was trained on a train split of {fp.get('train_tokens')} tokens, the "
                        f"data in {ds.path} has {ds.train.num_tokens}; resume on the run's own data")
    changed = [(k, a, b) for k, a, b in differences(saved, cfg) if k not in RESUME_MAY_CHANGE
               and not (k == "model.vocab_size" and b == 0)]  # 0 = from the data, checked just above
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
                        "good checkpoint: lower --optim.lr or raise --optim.warmup_steps")
    progress, step, steps = t.progress(), t.state.step, t.cfg.train.steps
    phase = t.schedule.phase(min(step, steps - 1))  # the phase the run continues in
    # The LR and the phase are functions of the step; recorded here so the directory explains itself.
    schedule = {"total_steps": steps, "phase_switch_step": t.schedule.switch_step,
                "next_lr": t.schedule.lr(min(step, steps - 1))}
    meta = {**progress["run"].to_dict(), "phase": phase.index, "bag_size": phase.bag_size, "schedule": schedule,
            "loader": progress["loader"], "data": data_fingerprint(t.dataset), "reason": reason,
            "saved_at": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
            "versions": {"torch": torch.__version__, "python": platform.python_version()},
            "parallel": {"mode": par.mode, "world_size": par.world_size}, "config": t.cfg.to_dict()}
    if par.mode == "fsdp":  # a collective: the full state, on rank 0 only
        model, optim_state = distributed.gather_full_state(t.model, t.optimizer, t.cfg.model)
    else:
        model, optim_state = t.model, t.optimizer.state_dict()
    path = t.run_dir / DIRNAME / step_name(step)
    if par.is_main:
        path = save(t.run_dir, step, model, optim_state, progress["rng"], meta, keep=t.cfg.checkpoint.keep)
    par.barrier()  # no rank goes on, or exits on a signal, before the checkpoint is complete
    return path


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
    nothing about TST; and summary.json. Data parallel: written by rank 0 (under FSDP from the
    gathered full weights)."""
    from safetensors.torch import save_model

    t, model = trainer, trainer.model
    if t.par.mode == "fsdp":  # a collective: every rank takes part, rank 0 gets the plain model
        model, _ = distributed.gather_full_state(t.model, None, t.cfg.model)
    if not t.par.is_main:
        return
    save_model(model, str(t.run_dir / "model.safetensors"))
    (t.run_dir / "model.json").write_text(json.dumps(t.cfg.model.to_dict(), indent=2) + "\n")
    shutil.copyfile(t.dataset.tokenizer_path, t.run_dir / "tokenizer.json")
    (t.run_dir / "summary.json").write_text(json.dumps(summary, indent=2) + "\n")
