"""Which folders superpose may write: its own run and experiment directories, empty or new
folders, and nothing else. Ownership is decided from a mark superpose writes, never from file
names a hand-made folder or an exported model can also have.

    check_train_dir(run_dir, resume)   refuse, before anything is created or locked, a folder
                                       that is not a run's (an exported model, a data directory,
                                       the user's own files) and any folder among a compare's or
                                       sweep's arms (an arm belongs to its experiment)
    check_experiment_dir(out, kind)    the same rule for compare's and sweep's --out: new, empty,
                                       or this kind of experiment's own directory
    mark_run(run_dir)                  the mark that makes a folder a run's (.superpose-run.json)
    begin_experiment / mark_experiment the mark at a compare's or sweep's top: its arms are
                                       the experiment's, with the command that resumes them
    claim(directory, what, mine)       lock a directory to write it; a command that fails leaves
                                       no lock, mark or folder of its own behind in it

A mark is a small JSON record sealed with the sha256 of its fields (`files.content_checksum`):
not a secret, but a file superpose did not write, or one edited, does not pass for one.

Why an experiment mark and not only its lock: the lock exists only while the experiment runs,
but an arm trained over by hand is lost either way (its result.json then contradicts its
files), so the arms are refused to `train` whether the experiment is running or not. The mark
covers only the arms (ARMS), so the user's own runs beside an experiment stay theirs.
"""

from __future__ import annotations

import contextlib
import fnmatch
import json
from pathlib import Path
from collections.abc import Iterator

from .. import checkpoint
from ..errors import Interrupted, UserError, notice
from ..files import LOCK_NAME, DirLock, WriteError, content_checksum, is_temp, lock_dir, write_text

RUN_MARK = ".superpose-run.json"
EXPERIMENT_MARK = ".superpose-experiment.json"
MARK_VERSION = 1
_MARK_TEMPS = (f".{RUN_MARK}.tmp-", f".{EXPERIMENT_MARK}.tmp-")  # `files.temp_name` of a mark being written
# The entries at an experiment's top that hold its arms (what its mark covers), by kind.
ARMS = {"compare": "seed-*", "sweep": "cells"}


# ----------------------------------------------------------------------------- marks

def mark_text(kind: str, command: str = "") -> str:
    """A sealed mark's text: its kind ("run", "compare", "sweep"), the command that continues it."""
    record = {"kind": kind, "command": command, "mark_version": MARK_VERSION}
    return json.dumps({**record, "checksum": content_checksum(record)}) + "\n"


def read_mark(path: Path) -> dict | None:
    """A mark file's record when superpose wrote it (its seal verifies), else None. An experiment
    mark of an older superpose (kind and command, unsealed) is read as well, with legacy=True."""
    try:
        record = json.loads(Path(path).read_text())
    except (OSError, UnicodeDecodeError, ValueError):
        return None
    if not isinstance(record, dict):
        return None
    if "checksum" in record:
        return record if record["checksum"] == content_checksum(record) else None
    if set(record) == {"kind", "command"} and record["kind"] in ARMS:  # before marks were sealed
        return {**record, "legacy": True}
    return None


def _write_mark(path: Path, text: str) -> None:
    if not (path.is_file() and path.read_text() == text):
        write_text(path, text)


def is_run(run_dir: Path) -> bool:
    mark = read_mark(Path(run_dir) / RUN_MARK)
    return mark is not None and mark.get("kind") == "run"


def mark_run(run_dir: Path) -> None:
    """Mark `run_dir` as a run's (holding its lock, before its other files are written)."""
    _write_mark(Path(run_dir) / RUN_MARK, mark_text("run"))


def mark_experiment(out: Path, kind: str, command: str) -> None:
    """Mark `out` as a compare's or sweep's directory (call it holding the experiment's lock): when
    it is new, and again once a run of it has finished, so the command it quotes is one that works
    (a Python call, which has no command line, keeps the one recorded)."""
    path = Path(out) / EXPERIMENT_MARK
    _write_mark(path, mark_text(kind, command or (read_mark(path) or {}).get("command", "")))


def begin_experiment(out: Path, kind: str, command: str) -> None:
    """Mark a new experiment directory with the command that made it; a rerun leaves the mark as
    it is until it finishes (`mark_experiment`), so a rerun that is refused never rewrites it."""
    if read_mark(Path(out) / EXPERIMENT_MARK) is None:
        mark_experiment(out, kind, command)


def owning_experiment(path: Path) -> tuple[Path, dict] | None:
    """The compare or sweep directory whose top `path` is, or whose arms `path` is among, with its
    mark; None otherwise (a folder beside the arms is not the experiment's)."""
    path = Path(path).absolute()
    for folder in (path, *path.parents):
        info = read_mark(folder / EXPERIMENT_MARK)
        if info is None or info.get("kind") not in ARMS:
            continue
        inside = path.relative_to(folder).parts
        if not inside or fnmatch.fnmatch(inside[0], ARMS[info["kind"]]):
            return folder, info
    return None


def _contents(folder: Path) -> list[str]:
    """What a folder holds besides a lock file and a mark's half-written temporary (what a command
    killed right after it took the folder leaves: the folder is still as good as empty)."""
    names = (p.name for p in folder.iterdir())
    return sorted(n for n in names if n != LOCK_NAME and not (is_temp(n) and n.startswith(_MARK_TEMPS)))


def _shown(names: list[str]) -> str:
    return ", ".join(names[:3]) + (", ..." if len(names) > 3 else "")


# ----------------------------------------------------------------------------- the rules

def check_train_dir(run_dir: Path, resume: bool = False) -> None:
    """Refuse `run_dir` for `train --out` (resume=False) or `train --resume`, touching nothing.
    A run of an older superpose (no mark) is resumed, saying so: its checkpoints are checksummed
    records superpose wrote; `--out` on it is refused, since nothing proves the rest is a run's."""
    run_dir = Path(run_dir)
    owner = owning_experiment(run_dir)
    if owner is not None:
        top, info = owner
        kind = info["kind"]
        rerun = info.get("command") or f"the superpose {kind} command that made it"
        where = "is" if top == run_dir.absolute() else "is inside"
        raise UserError(f"{run_dir} {where} the {kind} directory {top}: its runs are written and resumed only by "
                        f"that {kind}; rerun it to continue ({rerun}: finished seeds and cells are kept), or "
                        "choose an --out outside it")
    if not run_dir.is_dir():
        if resume:
            checkpoint.newest(run_dir)  # raises: it does not exist, or is a file
        return
    if is_run(run_dir):
        return
    older = bool(checkpoint.checkpoints(run_dir))
    if resume and older:
        notice(f"{run_dir} is a run of an older superpose (no {RUN_MARK}); resuming it from its checkpoints, "
               "which are verified as usual")
        return
    if resume:
        raise UserError(f"cannot resume: {run_dir} is not a superpose run directory (no {RUN_MARK} and no "
                        f"checkpoints); give the --out of a superpose train run that saved a checkpoint")
    names = _contents(run_dir)
    if names:
        hint = f"; it holds an older run: continue it with --resume {run_dir}" if older else ""
        raise UserError(f"{run_dir} is not empty and not a superpose run directory (it holds {_shown(names)}; no "
                        f"{RUN_MARK}){hint}; train writes config.json, tokenizer.json and model.safetensors there, "
                        "so choose a new or empty --out")


def check_experiment_dir(out: Path, kind: str) -> None:
    """Refuse `out` for a compare's or sweep's --out unless it is new, empty, or a `kind`
    directory (a rerun continues it), touching nothing: an exported model, a data directory, a
    run, another experiment or its arms, or a folder of the user's own runs is never written."""
    out = Path(out)
    owner = owning_experiment(out)
    if owner is not None and owner[0] != out.absolute():
        top, info = owner
        raise UserError(f"{out} is inside the {info['kind']} directory {top}, among its runs; choose an --out "
                        f"outside it")
    if not out.is_dir() or not _contents(out):
        return
    mark = read_mark(out / EXPERIMENT_MARK)
    if mark is None or mark.get("kind") not in ARMS:
        raise UserError(f"{out} is not empty and not a superpose {kind} directory (it holds {_shown(_contents(out))}; "
                        f"no {EXPERIMENT_MARK}); {kind} writes its runs and reports there, so choose a new or empty "
                        "--out")
    if mark["kind"] != kind:
        raise UserError(f"{out} is a superpose {mark['kind']} directory, not a {kind}'s; choose a new or empty --out "
                        f"for the {kind}")


# ----------------------------------------------------------------------------- writing

@contextlib.contextmanager
def claim(directory: Path, what: str, mine: tuple[str, ...] = ()) -> Iterator[DirLock]:
    """Hold `directory`'s lock (`files.lock_dir`) while a command writes it. If the command fails
    having written nothing but its lock and the files named in `mine` (its mark), they are removed
    again, and the folders the lock created with them: a refused command leaves no trace."""
    directory = Path(directory)
    made = [p for p in (directory, *directory.parents) if not p.exists()]  # innermost first
    before = set(p.name for p in directory.iterdir()) if directory.is_dir() else set()
    lock = lock_dir(directory, what)
    try:
        yield lock
    except BaseException:
        if lock.count == 1:  # not inside a caller's hold of the same lock, which decides for itself
            _undo(directory, before, mine, made)
        raise
    finally:
        lock.release()


def _undo(directory: Path, before: set[str], mine: tuple[str, ...], made: list[Path]) -> None:
    """Remove what a failed command added to `directory`, if that is only its lock and `mine`."""
    try:
        added = {p.name for p in directory.iterdir()} - before
        if not added <= {*mine, LOCK_NAME}:
            return
        for name in added:
            (directory / name).unlink()
        for folder in made:  # innermost first; one that is not empty (someone else's) stops it
            folder.rmdir()
    except OSError:
        pass


@contextlib.contextmanager
def experiment_advice(kind: str, out: Path, command: str) -> Iterator[None]:
    """Reword a failed write inside a compare or sweep (a full disk), and a stop by SIGINT/SIGTERM:
    its arms are continued by the experiment, never by `train --resume` on an arm, which the arm's
    own message advises."""
    rerun = command or f"the same superpose {kind} command"
    what = "seeds" if kind == "compare" else "cells"
    try:
        yield
    except Interrupted as e:
        raise Interrupted(e.signum, f"{kind} {e}; continue with: {rerun} (it reuses the finished {what} and continues "
                          "the interrupted one from its newest checkpoints)") from None
    except WriteError as e:
        raise WriteError(f"{e.what}; what the {kind} finished before is kept in {out}; free some space and run "
                         f"{rerun} again: it reuses the finished {what} and "
                         "restarts the interrupted one", e.path, e.disk_full, e.what) from None
