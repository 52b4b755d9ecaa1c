"""What the command line says about a failure that is not a `UserError`, in one line: output
paths the file system cannot hold (checked before anything is created), and the exceptions
`cli.main` turns into one line and an exit status (an allocation that failed, a path too long,
another rank of a torchrun job that failed first).
"""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

from .errors import UserError


def _out_of_memory(e: BaseException) -> bool:
    """Whether `e` is an allocation that failed: MemoryError (numpy's ArrayMemoryError too),
    torch's OutOfMemoryError (CUDA), or the RuntimeError torch's CPU allocator raises."""
    torch = sys.modules.get("torch")
    oom = getattr(torch, "OutOfMemoryError", ()) if torch is not None else ()
    return isinstance(e, (MemoryError, *([oom] if oom else []))) or (
        isinstance(e, RuntimeError) and "can't allocate memory" in str(e))


# Linux's limits (NAME_MAX, PATH_MAX), with room under an output folder for the files superpose
# writes inside it (checkpoints/step-000000/model.safetensors, .superpose-experiment.json, ...).
NAME_MAX, PATH_MAX, ROOM_INSIDE = 255, 4096, 64


def check_output_paths(args: argparse.Namespace) -> None:
    """Refuse an output path the file system cannot hold, before anything is created: the OSError
    would come from deep inside, after a lock or a folder was made."""
    for flag in ("out", "hf", "json", "resume"):
        value = getattr(args, flag, None)
        if not value:
            continue
        path = Path(value)
        long_name = next((part for part in path.parts if len(os.fsencode(part)) > NAME_MAX), None)
        if long_name is not None:
            raise UserError(f"--{flag}: the name {long_name[:40]}... is {len(os.fsencode(long_name))} bytes; a file "
                            f"or folder name may have at most {NAME_MAX}: choose a shorter one")
        if len(os.fsencode(os.path.abspath(path))) + ROOM_INSIDE > PATH_MAX:
            raise UserError(f"--{flag}: the path is {len(os.fsencode(os.path.abspath(path)))} bytes long; with the "
                            f"files written inside it, a path may have at most {PATH_MAX - ROOM_INSIDE}: choose a "
                            "shorter one")


def _name_too_long(e: BaseException) -> str | None:
    """The one line for a path the file system refused as too long (ENAMETOOLONG), else None."""
    import errno

    if not (isinstance(e, OSError) and e.errno == errno.ENAMETOOLONG):
        return None
    return (f"a path is too long for the file system ({str(e.filename)[:60]}...): names may have at most "
            f"{NAME_MAX} bytes and whole paths {PATH_MAX}; choose a shorter one")


def failure_line(e: BaseException) -> tuple[str, int] | None:
    """(the one line, the exit status) for an exception that is not a UserError but has a plain
    cause, or None for a bug (its traceback is the report)."""
    from .training.distributed import describe_lost_peer

    if _out_of_memory(e):  # a batch or context too large for this machine
        what = str(e).splitlines()[0] if str(e) else "an allocation failed"
        return (f"out of memory ({what[:200]}); lower --train.batch_size or --data.seq_len (checkpoints already "
                "written are untouched)", 2)
    too_long = _name_too_long(e)  # an input path (a data directory, a run) past the file system's limits
    if too_long is not None:
        return too_long, 2
    line = describe_lost_peer(e)  # another rank failed first: say so in one line, not a traceback
    return None if line is None else (line, 1)
