"""Files on disk, for every package: the one write path, the run-directory lock, checksums.

    write_file(path, produce, intact=..., fix=...)   every file superpose writes (checkpoints, the
                                                     final model, prepare's output, reports) goes
                                                     through here: written beside its place,
                                                     fsynced, renamed in; a full disk or an I/O
                                                     error becomes one UserError line naming the
                                                     file, what is intact and a fix that works
    AppendLog(path, intact=..., fix=...)             metrics.jsonl: a failed append is cut back, so
                                                     the lines already logged stay whole
    lock_dir(dir, what)                              an OS lock (flock) on a run or data directory:
                                                     a second writer is refused naming the holder's
                                                     pid; the kernel drops it when the process dies,
                                                     so a kill -9 never leaves a stale lock
    remove_stale(dir)                                temporaries a killed writer left behind

Why the error translation is needed: the three writers report a full disk three ways. Python
raises OSError(ENOSPC); safetensors a SafetensorError("... (os error 28)"); torch.save's zip
writer, given a path or a short write, a RuntimeError("... unexpected pos N vs M").
"""

from __future__ import annotations

import errno
import fcntl
import hashlib
import json
import os
import re
import shutil
from pathlib import Path
from collections.abc import Callable

from .errors import UserError

LOCK_NAME = ".superpose.lock"


def sha256_file(path: Path | str) -> str:
    """The hex sha256 of a file's bytes, read in blocks (checkpoint files can be gigabytes)."""
    with open(path, "rb") as f:
        return hashlib.file_digest(f, "sha256").hexdigest()


def content_checksum(record: dict, field: str = "checksum") -> str:
    """The sha256 of a JSON record without its own `field` (canonical JSON): what a record superpose
    writes (a checkpoint's meta.json, a run's or experiment's mark) carries, so an edited record,
    or one made by hand, does not pass for superpose's own."""
    body = {k: v for k, v in record.items() if k != field}
    return hashlib.sha256(json.dumps(body, sort_keys=True).encode()).hexdigest()


def file_record(path: Path) -> dict:
    """What a manifest records of a file, to verify it on every read: size and sha256."""
    return {"bytes": path.stat().st_size, "sha256": sha256_file(path)}


# ----------------------------------------------------------------------------- errors

def disk_error(e: BaseException) -> OSError | None:
    """The OSError behind a failed write, or None when `e` is not an I/O failure.

    torch's zip writer says only "unexpected pos": it wrote fewer bytes than asked, which on a
    local disk means the disk filled (the tests reproduce it on a full tmpfs), so it reads as
    ENOSPC."""
    if isinstance(e, OSError):
        return e
    text = str(e)
    m = re.search(r"os error (\d+)", text)
    if m:
        return OSError(int(m.group(1)), os.strerror(int(m.group(1))))
    if isinstance(e, RuntimeError) and ("unexpected pos" in text or "file write failed" in text):
        return OSError(errno.ENOSPC, "No space left on device (torch's zip writer: short write)")
    return None


def is_disk_full(e: OSError) -> bool:
    return e.errno in (errno.ENOSPC, errno.EDQUOT, errno.EFBIG)


def free_bytes(path: Path) -> int | None:
    """Free space on the filesystem holding `path` (its nearest existing parent), or None."""
    p = Path(path).absolute()
    while not p.exists() and p != p.parent:
        p = p.parent
    try:
        return shutil.disk_usage(p).free
    except OSError:
        return None


def mb(n: int | None) -> str:
    return "?" if n is None else f"{n / 1e6:.1f} MB"


def _text(x: str | Callable[[], str]) -> str:
    return x() if callable(x) else x


class WriteError(UserError):
    """A file could not be written (full disk, I/O error). The message is the one line a user
    sees; `disk_full` says whether space ran out (the trainer's final save falls back on it)."""

    def __init__(self, message: str, path: Path, disk_full: bool, what: str = ""):
        super().__init__(message)
        # `what` failed, without the advice: a caller that knows better advice (compare, sweep) rewords it.
        self.path, self.disk_full, self.what = path, disk_full, what or message


def write_error(path: Path, e: OSError, intact: str | Callable[[], str], fix: str | Callable[[], str],
                needed: int | None = None, label: str | None = None) -> WriteError:
    """The one-line error for a failed write of `path` (named `label` in the message): what
    failed, what is intact, the fix."""
    full = is_disk_full(e)
    label = label or str(path)
    if full:
        space = f"{mb(free_bytes(path))} free" + (f", about {mb(needed)} needed" if needed else "")
        what = f"no space left on device while writing {label} ({space})"
    else:
        what = f"cannot write {label} ({e.strerror or e})"
        if e.errno in PLACE_ERRORS:  # freeing space cannot help a read-only or mistyped place
            fix = f"give a path where files can be written (here: {place_problem(Path(path), e)})"
    return WriteError(f"{what}; {_text(intact)}; {_text(fix)}", Path(path), full, what)


# Errors that say the place is wrong (read-only, not a folder, not allowed), not that it is full.
PLACE_ERRORS = (errno.EROFS, errno.EACCES, errno.EPERM, errno.EISDIR, errno.ENOTDIR, errno.ENOENT)


def place_problem(path: Path, e: OSError) -> str:
    """What is wrong with the place `path` was to be written, in a few words."""
    reasons = {errno.EROFS: "the file system is read-only", errno.EISDIR: f"{path} is a directory",
               errno.ENOTDIR: f"a parent of {path} is a file", errno.ENOENT: f"the folder of {path} does not exist"}
    return reasons.get(e.errno, f"no permission to write in {path.parent}")


def make_dir(path: Path, what: str) -> Path:
    """mkdir -p `path`, or one UserError naming it, why it cannot be made, and the fix."""
    try:
        Path(path).mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise UserError(f"cannot create the {what} {path} ({e.strerror or e}); give a path where folders can be "
                        "created") from None
    return Path(path)


# ----------------------------------------------------------------------------- the write path

def temp_name(path: Path) -> Path:
    """Where `path` is written before it is renamed into place: a hidden sibling with this
    process's pid, so a killed writer's leftover is recognisable (`remove_stale`)."""
    return path.with_name(f".{path.name}.tmp-{os.getpid()}")


def fsync_path(path: Path) -> None:
    """Flush a file's or a directory's entries to the disk."""
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def write_file(path: Path, produce: Callable[[Path], None], *, intact: str | Callable[[], str] = "nothing else was "
               "changed", fix: str | Callable[[], str] = "free some space and run the command again",
               atomic: bool = True, needed: int | None = None, label: str | None = None) -> Path:
    """Write `path` with `produce(target)` (which writes a whole file at `target`), fsync it, and
    (atomic=True) rename it into place, so `path` is either its old self or complete. Any I/O
    failure removes the partial file and raises a one-line `WriteError`.

    atomic=False writes `path` itself (a file inside a temporary directory that is renamed as a
    whole, as a checkpoint is)."""
    path = Path(path)
    target = temp_name(path) if atomic else path
    try:
        produce(target)
        fsync_path(target)
        if atomic:
            os.replace(target, path)
            fsync_path(path.parent)
    except BaseException as e:
        try:
            target.unlink(missing_ok=True)
        except OSError:  # a read-only place: nothing was written there to remove
            pass
        os_error = disk_error(e) if isinstance(e, Exception) else None
        if os_error is None:
            raise
        raise write_error(path, os_error, intact, fix, needed, label) from None
    return path


def write_text(path: Path, text: str, **kwargs) -> Path:
    return write_file(path, lambda p: p.write_text(text), **kwargs)


def write_bytes(path: Path, data: bytes, **kwargs) -> Path:
    return write_file(path, lambda p: p.write_bytes(data), **kwargs)


def copy_file(src: Path, path: Path, **kwargs) -> Path:
    return write_file(path, lambda p: shutil.copyfile(src, p), **kwargs)


class AppendLog:
    """A line-per-record file opened for appending (metrics.jsonl). Each line is flushed as it is
    written, so a crash loses nothing logged; a line that fails half-way (a full disk) is cut off
    again, so the file keeps only whole lines, and the failure is a one-line `WriteError`."""

    def __init__(self, path: Path, *, intact: str | Callable[[], str], fix: str | Callable[[], str]):
        self.path, self.intact, self.fix = Path(path), intact, fix
        try:
            self._f = open(self.path, "ab")
        except OSError as e:
            raise write_error(self.path, e, intact, fix) from None

    def write_line(self, line: str) -> None:
        data = (line + "\n").encode()
        end = self._f.tell()
        try:
            self._f.write(data)
            self._f.flush()
        except OSError as e:
            try:  # drop the torn tail; a failed truncate leaves it for truncate_metrics on resume
                self._f = _reopen_cut(self.path, self._f, end)
            except OSError:
                pass
            raise write_error(self.path, e, self.intact, self.fix) from None

    def close(self) -> None:
        try:
            self._f.close()
        except OSError:  # its buffer was already flushed line by line, or cut back
            pass


def _reopen_cut(path: Path, f, size: int):
    """Discard `f`'s unwritten buffer, cut the file to `size` bytes, reopen it for appending."""
    try:
        os.ftruncate(f.fileno(), size)
    finally:
        try:
            f.close()
        except OSError:
            pass  # the buffered tail that could not be written: dropped, as intended
    os.truncate(path, size)
    return open(path, "ab")


# ----------------------------------------------------------------------------- locks and leftovers

class DirLock:
    """An exclusive flock on a lock file (`DIR/.superpose.lock` for a run), held while a process
    writes DIR. The file holds the holder's pid, for the message a second writer gets. flock is
    released by the kernel when the process dies, however it dies, so there is never a stale
    lock to clean up."""

    def __init__(self, lock_path: Path, fd: int):
        self.lock_path, self._fd = lock_path, fd
        self.count = 1

    def release(self) -> None:
        self.count -= 1
        if self.count == 0:
            _HELD.pop(_key(self.lock_path), None)
            os.close(self._fd)  # closing the descriptor drops the flock

    def __enter__(self) -> DirLock:
        return self

    def __exit__(self, *exc) -> None:
        self.release()


_HELD: dict[str, DirLock] = {}  # flock is per open file: a second open in this process would block itself


def _key(path: Path) -> str:
    return os.path.realpath(path)


def lock_dir(directory: Path, what: str, blocking: bool = False, lock_path: Path | None = None) -> DirLock:
    """Lock `directory` (created if needed) for writing, through `lock_path` (default
    DIR/.superpose.lock). Re-entrant within one process. A directory another live process holds
    is refused in one line naming its pid (blocking=True waits for it instead)."""
    directory = Path(directory)
    if directory.exists() and not directory.is_dir():
        raise UserError(f"{directory} is a file, not a directory; choose another path for the {what}")
    lock_path = Path(lock_path) if lock_path is not None else directory / LOCK_NAME
    try:
        lock_path.parent.mkdir(parents=True, exist_ok=True)
        held = _HELD.get(_key(lock_path))
        if held is not None:
            held.count += 1
            return held
        fd = os.open(lock_path, os.O_RDWR | os.O_CREAT, 0o644)
    except OSError as e:
        raise UserError(f"cannot create {lock_path} ({e.strerror or e}); choose a writable place for the "
                        f"{what}") from None
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | (0 if blocking else fcntl.LOCK_NB))
    except BlockingIOError:
        pid = os.pread(fd, 32, 0).decode(errors="replace").strip() or "?"
        os.close(fd)
        raise UserError(f"{directory} is in use: another superpose process (pid {pid}) is writing this {what}; "
                        f"wait for it to finish or stop it (kill {pid}), then run the command again") from None
    except OSError as e:  # a filesystem without locks: say so rather than write unguarded
        os.close(fd)
        raise UserError(f"cannot lock {lock_path} ({e.strerror or e}); this filesystem does not support file "
                        f"locks: put the {what} on one that does") from None
    try:
        os.ftruncate(fd, 0)
        os.pwrite(fd, f"{os.getpid()}\n".encode(), 0)
    except OSError:
        pass  # the pid is only for the message: a full disk must not stop the lock
    lock = DirLock(lock_path, fd)
    _HELD[_key(lock_path)] = lock
    return lock


_TEMP = re.compile(r"^\..+\.tmp-\d+$")


def is_temp(name: str) -> bool:
    """Whether a file name is one `temp_name` makes (`.NAME.tmp-PID`)."""
    return bool(_TEMP.match(name))


def remove_stale(directory: Path, keep: Callable[[str], bool] = lambda name: not is_temp(name)) -> list[str]:
    """Remove the entries of `directory` that `keep` rejects (by default: `.NAME.tmp-PID`
    temporaries of a killed writer). Call it only while holding the directory's lock, so none of
    them is in use."""
    gone = []
    if Path(directory).is_dir():
        for p in sorted(Path(directory).iterdir()):
            if not keep(p.name) and p.name != LOCK_NAME:
                shutil.rmtree(p, ignore_errors=True) if p.is_dir() else p.unlink(missing_ok=True)
                gone.append(p.name)
    return gone
