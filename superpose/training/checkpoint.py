"""On-disk checkpoints: one self-describing, versioned directory per step, written atomically.

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
import hashlib
import json
import os
import re
import shutil
import signal
from pathlib import Path

import torch

from ..errors import UserError

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
        if _sha256(f) != want["sha256"]:
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
            files[name] = {"bytes": f.stat().st_size, "sha256": _sha256(f)}
            _test_kill(step, name)
        current = "meta.json"
        meta = {"format_version": FORMAT_VERSION, **meta, "step": step, "files": files}
        with open(tmp / "meta.json", "w") as out:
            out.write(json.dumps(meta, indent=2) + "\n")
            out.flush()
            os.fsync(out.fileno())
        _test_kill(step, "meta.json")
        _fsync(tmp)
        current = "the rename to " + final.name
        os.rename(tmp, final)
        _fsync(root)
        _test_kill(step, "renamed")
        current = "latest"
        pointer = root / f".latest-{os.getpid()}"
        pointer.write_text(final.name + "\n")
        _fsync(pointer)
        os.replace(pointer, root / "latest")
        _fsync(root)
        _test_kill(step, "latest")
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
            _test_kill(step, "prune")
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


def _sha256(path: Path) -> str:
    with open(path, "rb") as f:
        return hashlib.file_digest(f, "sha256").hexdigest()


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


# ----------------------------------------------------------------------------- test hooks
# Tests choose the moment a real process dies or is signalled; unset, these cost one dict lookup.

def _test_kill(step: int, point: str) -> None:
    """SUPERPOSE_TEST_KILL_DURING_SAVE=STEP:POINT sends SIGKILL to this process at POINT of the save
    of checkpoint STEP: after a file (model.safetensors, optimizer.pt, rng.pt, meta.json), after the
    rename ("renamed"), after the `latest` pointer ("latest"), or mid-prune of step STEP ("prune")."""
    if os.environ.get("SUPERPOSE_TEST_KILL_DURING_SAVE") == f"{step}:{point}":
        os.kill(os.getpid(), signal.SIGKILL)


def signal_hook(step: int) -> None:
    """SUPERPOSE_TEST_SIGNAL_AT_STEP=STEP:SIGNAME (e.g. 5:SIGTERM) sends that signal to this process
    just before optimizer step STEP (0-based) starts."""
    want = os.environ.get("SUPERPOSE_TEST_SIGNAL_AT_STEP")
    if want and want.split(":")[0] == str(step):
        os.kill(os.getpid(), getattr(signal, want.split(":")[1]))
