"""Writing a run's files (the format and its readers: superpose/checkpoint.py): `save` one
`step-N` checkpoint directory atomically, `prune` to the newest K, `remove_leftovers` of killed
saves, and `save_final`, the finished run's model. Plain functions over a module, state dicts and
a meta dict: what goes in them is the `Trainer`'s (`Trainer.save_checkpoint`).

Crash safety. A save writes everything into `.tmp-step-000120-<pid>/`, fsyncs every file and the
directory, renames it to `step-000120/` (atomic on POSIX) and fsyncs `checkpoints/`. So a
directory named `step-N` is always complete, and a process killed mid-save leaves only a `.tmp-*`
directory that resume never picks and removes. Pruning runs after the new checkpoint is in place
(and before it, down to keep - 1, only when the disk has too little room for it), never touches
the newest or a checkpoint a reader holds, and first renames a victim to `.del-*`, so a kill
mid-delete never leaves a half `step-N` behind. Every file goes through `files.write_file`, so a
full disk, however the writer reports it, is one line naming the file, what is intact and what
to do.
"""

from __future__ import annotations

import json
import os
import shutil
from functools import partial
from pathlib import Path

import torch

from .. import files
from ..checkpoint import (DIRNAME, FINAL_FILES, FORMAT_VERSION, checkpoint_advice, checkpoints, meta_checksum,
                          step_name)
from ..errors import command
from ..files import WriteError, file_record, fsync_path, write_error, write_file

def save(run_dir: Path, step: int, model: torch.nn.Module, optimizer_state: dict, rng_state: dict, meta: dict,
         keep: int = 0) -> Path:
    """Write `RUN_DIR/checkpoints/step-NNNNNN/` atomically, point `latest` at it, then prune to `keep`.

    A checkpoint already saved for this step is kept as it is (the state of a step is unique).
    Space first: leftovers of killed saves are removed, and when the disk has less room than the
    checkpoint needs, `keep` is honoured before the save (pruned to keep - 1, never below the
    newest), so following the disk-full advice works. Any I/O failure (a full disk above all)
    removes the temporary directory and becomes a one-line UserError that says what is intact.
    """
    from safetensors.torch import save_model

    root = Path(run_dir) / DIRNAME
    final = root / step_name(step)
    if final.is_dir():
        return final
    root.mkdir(parents=True, exist_ok=True)
    remove_leftovers(run_dir)  # the caller holds the run's lock: every .tmp-* is a dead process's
    needed = _bytes_needed(run_dir, model)
    free = files.free_bytes(root)
    if keep > 0 and free is not None and free < needed:
        prune(run_dir, max(keep - 1, 1))
    tmp = root / f".tmp-{step_name(step)}-{os.getpid()}"
    intact, fix = partial(_what_is_intact, run_dir, step), partial(_disk_full_fix, run_dir, tmp, needed)

    def write(name: str, produce) -> dict:
        f = tmp / name
        write_file(f, produce, atomic=False, intact=intact, fix=fix, needed=needed,
                   label=f"{name} of checkpoint {final}")
        return file_record(f)

    try:
        tmp.mkdir()
        recorded = {"model.safetensors": write("model.safetensors", lambda p: save_model(model, str(p))),
                    "optimizer.pt": write("optimizer.pt", partial(_torch_save, optimizer_state)),
                    "rng.pt": write("rng.pt", partial(_torch_save, rng_state))}
        meta = {"format_version": FORMAT_VERSION, **meta, "step": step, "files": recorded}
        meta["checksum"] = meta_checksum(meta)
        text = json.dumps(meta, indent=2) + "\n"
        write_file(tmp / "meta.json", lambda p: p.write_text(text), atomic=False, intact=intact, fix=fix,
                   needed=needed, label=f"meta.json of checkpoint {final}")
        fsync_path(tmp)
        os.rename(tmp, final)
        fsync_path(root)
        write_file(root / "latest", lambda p: p.write_text(final.name + "\n"), intact=intact, fix=fix)
    except OSError as e:  # mkdir or rename: the same one line as a failed write
        shutil.rmtree(tmp, ignore_errors=True)
        raise write_error(final, e, intact, fix, needed, label=f"checkpoint {final}") from None
    except BaseException:  # a full disk (WriteError), a second Ctrl-C mid-save: leave no temporary behind
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    if keep > 0:
        prune(run_dir, keep)
    return final


def save_final(run_dir: Path, model: torch.nn.Module, model_config: dict, tokenizer_path: Path, summary: dict) -> None:
    """The final model in the run directory: plain Llama weights, architecture and tokenizer,
    nothing about TST; then summary.json, which records each file's size and sha256 (every
    reader verifies them) and marks the run finished. Each file is written atomically. A full
    disk removes the partial final model (it would be read as the run's result) and raises the
    WriteError, for the caller to keep the run (`Trainer.finish`)."""
    from safetensors.torch import save_model

    def fix() -> str:
        return f"free some space and {checkpoint_advice(run_dir)}"

    try:
        # summary.json goes last: a run without it is unfinished, and a resume completes it.
        architecture = json.dumps(model_config, indent=2) + "\n"
        for name, produce in (("model.safetensors", lambda p: save_model(model, str(p))),
                              ("model.json", lambda p: p.write_text(architecture)),
                              ("tokenizer.json", lambda p: shutil.copyfile(tokenizer_path, p))):
            write_file(run_dir / name, produce, intact="the final model is not written yet", fix=fix)
        # config.json too: it decides what eval measures (context, data, evaluation tokens).
        summary["files"] = {name: file_record(run_dir / name) for name in (*FINAL_FILES, "config.json")}
        text = json.dumps(summary, indent=2) + "\n"
        write_file(run_dir / "summary.json", lambda p: p.write_text(text), intact="the final model is written",
                   fix=fix)
    except WriteError as e:
        if e.disk_full:
            for name in FINAL_FILES:
                (run_dir / name).unlink(missing_ok=True)
        raise


def final_fallback_advice(run_dir: Path, steps: int) -> str:
    """After the final model failed to write for lack of space (and the final state was saved as
    a checkpoint where it fit): what is on disk and how to go on."""
    found = checkpoints(run_dir)
    if found and found[-1][0] == steps:
        return (f"the trained weights are saved in checkpoint {found[-1][1]} (usable with superpose eval/generate/"
                f"export); free space and resume with: {command('superpose', 'train', '--resume', run_dir)} to "
                "write the final model without redoing a step")
    if found:
        return (f"the newest checkpoint {found[-1][1].name} is intact: free space and resume with "
                f"{command('superpose', 'train', '--resume', run_dir)} (it redoes steps {found[-1][0]}-{steps - 1}, "
                "bit for bit)")
    return ("no checkpoint fits either, so the trained weights could not be kept: free space and train again "
            "(checkpoint.every_minutes keeps a resumable state of long runs)")


def _torch_save(obj, path: Path) -> None:
    with open(path, "wb") as out:
        torch.save(obj, out)

def _what_is_intact(run_dir: Path, step: int) -> str:
    """What a failed save of checkpoint `step` leaves intact, for its one-line error."""
    final = Path(run_dir) / DIRNAME / step_name(step)
    older = [p for s, p in checkpoints(run_dir) if s < step]
    if final.is_dir():  # only the `latest` pointer failed
        return f"{final.name} itself was written completely"
    return f"the previous checkpoint {older[-1].name} is intact" if older else "no earlier checkpoint exists"


def _disk_full_fix(run_dir: Path, tmp: Path, needed: int) -> str:
    """Advice that works after a save ran out of space: --checkpoint.keep=1 only when deleting the
    older checkpoints would make room (keep is then honoured before the save); otherwise the
    space that must be freed."""
    def size(d: Path) -> int:
        return sum(f.stat().st_size for f in d.iterdir() if f.is_file()) if d.is_dir() else 0

    root = Path(run_dir) / DIRNAME
    older = checkpoints(run_dir)[:-1]
    freed = sum(size(p) for _, p in older)
    # What this save's files already written take is freed when its temporary is removed.
    short = needed - (files.free_bytes(root) or 0) - size(tmp)
    go_on = checkpoint_advice(run_dir)
    if short <= 0:  # bytes are free, yet the disk said full: it ran out of inodes (files), or a quota
        return (f"the disk has {files.mb(files.free_bytes(root))} free but no room for more files (out of inodes "
                f"or over a quota: see df -i): delete some files on it, then {go_on}")
    if older and freed >= short:
        return (f"resume with {command('superpose', 'train', '--resume', run_dir, '--checkpoint.keep=1')} (it "
                f"deletes the {len(older)} "
                f"older checkpoint(s), {files.mb(freed)}, before each save), or free {files.mb(short)} and "
                "resume without it")
    also = f" (or {files.mb(short - freed)} with --checkpoint.keep=1)" if older else ""
    return f"free at least {files.mb(short)}{also} and {go_on}"


def _bytes_needed(run_dir: Path, model: torch.nn.Module) -> int:
    """About how many bytes the next checkpoint takes: the newest one's size, else the weights
    (4 bytes per parameter in fp32) three times over (weights + AdamW's two moments)."""
    found = checkpoints(run_dir)
    if found:
        try:
            meta = json.loads((found[-1][1] / "meta.json").read_text())
            return sum(int(f["bytes"]) for f in meta["files"].values()) + 65536
        except (OSError, ValueError, KeyError, TypeError, AttributeError):
            pass
    return 3 * sum(t.numel() * t.element_size() for t in model.state_dict().values()) + 65536


def _take_for_prune(path: Path) -> int | None:
    """An exclusive flock on a prune victim's meta.json (-1 when it has none: damaged, nobody can
    read it), or None when a reader holds it."""
    import fcntl

    try:
        fd = os.open(path / "meta.json", os.O_RDONLY)
    except OSError:
        return -1
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError:
        os.close(fd)
        return None
    return fd


def prune(run_dir: Path, keep: int) -> list[Path]:
    """Delete all but the newest `keep` (>= 1) checkpoints, except those a reader holds (`hold`).
    Each victim is renamed to `.del-*` first, so an interrupted delete leaves no half `step-N`.
    Returns the checkpoints deleted."""
    assert keep >= 1
    victims, gone = checkpoints(run_dir)[:-keep], []
    for step, p in victims:
        fd = _take_for_prune(p)
        if fd is None:  # eval/generate/export is reading it: pruned at a later save instead
            continue
        doomed = p.with_name(f".del-{p.name}")
        try:
            os.rename(p, doomed)
            gone.append(p)
            shutil.rmtree(doomed)
        except OSError:  # what is left is removed on resume; never fail a run over a delete
            continue
        finally:
            if fd >= 0:
                os.close(fd)
    return gone


def remove_leftovers(run_dir: Path) -> list[str]:
    """Remove what killed saves and deletes left behind in checkpoints/ (`.tmp-*`, `.del-*`, and
    the temporaries of the `latest` pointer). Only with the run's lock held."""
    return files.remove_stale(Path(run_dir) / DIRNAME, keep=lambda name: not name.startswith(
        (".tmp-", ".del-", ".latest")))
