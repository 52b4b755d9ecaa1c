"""Which folders `superpose train` may write: its own run directories, empty or new folders, and
nothing else.

    check_train_dir(run_dir, resume)   refuse, before anything is created or locked, a folder
                                       that is not a run's (an exported model, a data directory,
                                       the user's own files) and any folder inside a compare or
                                       sweep directory (an arm belongs to its experiment)
    mark_experiment(out, kind, command)  what compare and sweep leave at their top: the mark that
                                       makes their whole tree theirs, with the command that
                                       resumes it

Why a mark and not only the experiment's lock: the lock exists only while the experiment runs,
but an arm trained over by hand is lost either way (its result.json then contradicts its
files), so the tree is refused to `train` whether the experiment is running or not.
"""

from __future__ import annotations

import contextlib
import json
from pathlib import Path
from collections.abc import Iterator

from ..errors import UserError
from ..files import LOCK_NAME, WriteError, is_temp, write_text

EXPERIMENT_MARK = ".superpose-experiment.json"
# What only a superpose run directory holds: the lock `train` takes first, then its metrics log.
_RUN_MARKS = (LOCK_NAME, "metrics.jsonl")


def mark_experiment(out: Path, kind: str, command: str) -> None:
    """Mark `out` as a compare's or sweep's directory (call it holding the experiment's lock)."""
    text = json.dumps({"kind": kind, "command": command}) + "\n"
    mark = Path(out) / EXPERIMENT_MARK
    if not (mark.is_file() and mark.read_text() == text):
        write_text(mark, text)


def owning_experiment(path: Path) -> tuple[Path, dict] | None:
    """The compare or sweep directory `path` is in (or is), with its mark; None outside any."""
    path = Path(path).absolute()
    for folder in (path, *path.parents):
        mark = folder / EXPERIMENT_MARK
        if mark.is_file():
            try:
                info = json.loads(mark.read_text())
            except (OSError, ValueError):
                info = {}
            return folder, info if isinstance(info, dict) else {}
    return None


def check_train_dir(run_dir: Path, resume: bool = False) -> None:
    """Refuse `run_dir` for `train --out` (resume=False) or `train --resume`, touching nothing."""
    run_dir = Path(run_dir)
    owner = owning_experiment(run_dir)
    if owner is not None:
        top, info = owner
        kind = info.get("kind") or "experiment"
        rerun = info.get("command") or f"the superpose {kind} command that made it"
        where = "is" if top == run_dir.absolute() else "is inside"
        raise UserError(f"{run_dir} {where} the {kind} directory {top}: its runs are written and resumed only by "
                        f"that {kind}; rerun it to continue ({rerun}: finished seeds and cells are kept), or "
                        "choose an --out outside it")
    if resume or not run_dir.is_dir():
        return
    names = {p.name for p in run_dir.iterdir()}
    # A killed writer's `.NAME.tmp-PID` is superpose's too (the run removes it when it starts).
    if names and not (names & set(_RUN_MARKS) or any(is_temp(n) for n in names)):
        shown = ", ".join(sorted(names)[:3]) + (", ..." if len(names) > 3 else "")
        raise UserError(f"{run_dir} is not empty and not a superpose run directory (it holds {shown}); train "
                        "writes config.json, tokenizer.json and model.safetensors there, so choose a new or empty "
                        "--out")


@contextlib.contextmanager
def experiment_advice(kind: str, out: Path, command: str) -> Iterator[None]:
    """Reword a failed write inside a compare or sweep (a full disk): its arms are continued by
    the experiment, never by `train --resume` on an arm, which the arm's own message advises."""
    try:
        yield
    except WriteError as e:
        rerun = command or f"the same superpose {kind} command"
        raise WriteError(f"{e.what}; what the {kind} finished before is kept in {out}; free some space and run "
                         f"{rerun} again: it reuses the finished {'seeds' if kind == 'compare' else 'cells'} and "
                         "restarts the interrupted one", e.path, e.disk_full, e.what) from None
