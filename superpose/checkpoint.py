"""The run-directory format, as its readers see it: one self-describing, versioned `step-N`
directory per checkpoint, and the final model that summary.json vouches for. Training writes
them (training/save.py: save, prune); training and inference both read them through here.

    RUN_DIR/checkpoints/
        step-000120/            the state after 120 optimizer steps; a resumed run starts at step 120
            model.safetensors   weights (fp32 masters; a tied embedding is stored once)
            optimizer.pt        AdamW state (torch.save; read back with weights_only=True)
            rng.pt              torch generator states (CPU, and CUDA when used)
            meta.json           format_version, step, phase, bag_size, schedule, tokens_seen, skipped_steps,
                                train_time_s, elapsed_s, last_eval, loader position, data
                                fingerprint, the resolved config, and bytes + sha256 of each file
        latest                  "step-000120": the newest complete checkpoint, for people and scripts
    RUN_DIR/model.safetensors, model.json, tokenizer.json   the final model (FINAL_FILES), recorded
                                with config.json in summary.json, written last

Integrity. meta.json records each file's size and sha256 and its own checksum (`meta_checksum`),
and every reader verifies them: resume (`verify`), and eval, generate, export and load_model
through `inference.load.locate`. Weights holding NaN or Inf are refused on load. A `step-N`
directory that fails verification (unreadable meta.json, another format version, a file missing,
shorter than recorded or failing its checksum) was damaged after it was written; it is refused
with one line naming the file, never silently skipped. Resume takes the highest-numbered `step-N`
(it does not trust `latest`, which a kill can leave one save behind).

A reader holds a checkpoint (`hold`: a shared flock on its meta.json) while it uses it, and the
run's writer does not prune a held checkpoint.
"""

from __future__ import annotations

import json
import os
import pickle
import re
from pathlib import Path

import torch

from .errors import UserError, command, notice
from .files import content_checksum, sha256_file

FORMAT_VERSION = 2
# Version 1 was written before every meta.json carried its own checksum, so one without it is
# still opened (saying that it is unchecked); from version 2 on a missing checksum is damage and
# fails closed, like a wrong one: a check must never skip because its record was deleted.
READ_VERSIONS = (1, FORMAT_VERSION)
DIRNAME = "checkpoints"
FILES = ("model.safetensors", "optimizer.pt", "rng.pt")
FINAL_FILES = ("model.safetensors", "model.json", "tokenizer.json")  # a finished run's, recorded in summary.json
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
    if not found and (Path(run_dir) / "metrics.jsonl").is_file() and not (Path(run_dir) / "summary.json").exists():
        # A run that failed before its first save: say how to go on, not only what is missing.
        raise UserError(f"cannot resume: {run_dir} stopped before its first checkpoint, so there is nothing to "
                        "resume; start it again in place with the command that started it ("
                        f"{command('superpose', 'train', '--preset', '...', '--out', run_dir)}: its old log is "
                        "kept), after fixing what stopped it")
    if not found:
        what = ("is a file, not a run directory" if Path(run_dir).is_file() else "does not exist"
                if not Path(run_dir).is_dir() else f"has no checkpoints (no {DIRNAME}/step-N)")
        raise UserError(f"cannot resume: {run_dir} {what}; give a run directory written with "
                        "--checkpoint.every N, or one stopped by SIGINT/SIGTERM")
    return found[-1][1]


def checkpoint_advice(run_dir: Path) -> str:
    """How a stopped run goes on: a resume when it has a checkpoint; without one there is nothing
    to resume (a resume would refuse), so the command that started it, which restarts it in place."""
    if checkpoints(run_dir):
        return f"resume with: {command('superpose', 'train', '--resume', run_dir)}"
    return (f"start it again with the command that started it "
            f"({command('superpose', 'train', '...', '--out', run_dir)}): it saved no checkpoint yet, so it "
            "restarts from step 0 in place")


def verify_final(run_dir: Path) -> dict:
    """A finished run's final model, checked against the file records of its summary.json, which
    are returned. It fails closed: a summary without records (null, missing, damaged) verifies
    nothing, so it is refused like a checkpoint's damaged meta.json; a final model that is
    missing is refused too, naming the checkpoint to use instead, never silently replaced."""
    path = Path(run_dir) / "summary.json"
    try:
        summary = json.loads(path.read_text())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
        raise UserError(f"run summary {path} is not readable JSON ({e}): damaged; {_fix(run_dir)}") from None
    records = summary.get("files") if isinstance(summary, dict) else None
    if not isinstance(records, dict) or not all(isinstance(records.get(n), dict) for n in FINAL_FILES):
        raise UserError(f"run summary {path} records no checksums of the final model (its files entry is "
                        f"{json.dumps(records)[:30]}), so the model cannot be verified: the summary is damaged; "
                        f"{_fix(run_dir)}")
    missing = [n for n in ("model.safetensors", "model.json") if not (Path(run_dir) / n).is_file()]
    if missing:
        raise UserError(f"run {run_dir} finished, but its final {' and '.join(missing)} is missing; {_fix(run_dir)}")
    verify_files(Path(run_dir), records, ("model.safetensors", "model.json"), "model file", "summary.json")
    return records


def _fix(path: Path) -> str:
    """What to tell a user whose checkpoint (or final model, `path` = the run directory) is unusable:
    the newest older checkpoint that verifies, else how to get going again."""
    path = Path(path)
    m = _STEP_DIR.match(path.name)
    run_dir = path.parent.parent if m else path
    older = [p for s, p in checkpoints(run_dir) if not m or s < int(m.group(1))]
    for p in reversed(older):  # the newest that verifies: advice naming a damaged one sends the user in circles
        if not intact(p):
            continue
        if m:
            return f"delete {path} to resume from {p.name}, the previous checkpoint"
        return (f"its checkpoint {p} is intact: use it (superpose eval/generate/export {command(p)}), or write "
                f"the final model again from it with {command('superpose', 'train', '--resume', run_dir)}")
    if m:
        return ("no older checkpoint is intact (each was verified), so the run must be trained again (superpose "
                "train --out NEW_DIR)")
    return ("no checkpoint of the run is intact (each was verified), so it must be trained again (superpose train "
            "--out a new directory)")


def intact(path: Path) -> bool:
    """Whether a checkpoint verifies (meta.json's checksum, each file's size and sha256), without
    raising: what advice and fallbacks check before they name a checkpoint."""
    try:
        meta = json.loads((path / "meta.json").read_text())
        if meta.get("format_version") not in READ_VERSIONS or checksum_state(meta) in ("missing", "wrong") or \
                not all(isinstance(meta.get(k), t) for k, t in _META_TYPES.items()):
            return False
        records = meta["files"]
        return all(isinstance(records.get(n), dict) and (path / n).stat().st_size == records[n].get("bytes")
                   and sha256_file(path / n) == records[n].get("sha256") for n in FILES)
    except (OSError, ValueError, KeyError, TypeError, AttributeError):
        return False


class ReadHold:
    """A shared flock on a checkpoint's meta.json, held while a reader (eval, generate, export)
    uses the checkpoint: the run's writer does not prune a held checkpoint (`prune` skips it and
    takes it at a later save). Released when the hold is closed or garbage-collected."""

    def __init__(self, fd: int):
        self._fd: int | None = fd

    def close(self) -> None:
        if self._fd is not None:
            os.close(self._fd)  # closing drops the flock
            self._fd = None

    def __del__(self) -> None:
        self.close()


def hold(path: Path) -> ReadHold | None:
    """Hold checkpoint `path` for reading; None when it is gone (pruned by a live run's writer).
    The lock is taken on the open meta.json, then the directory is checked to still be there: a
    prune that renamed it away just before leaves a held file that is no longer the checkpoint."""
    import fcntl

    meta = Path(path) / "meta.json"
    try:
        fd = os.open(meta, os.O_RDONLY)
    except OSError:
        return None
    try:
        fcntl.flock(fd, fcntl.LOCK_SH)  # a prune holds its exclusive lock only for a rename
        if os.fstat(fd).st_ino == os.stat(meta).st_ino:
            return ReadHold(fd)
    except OSError:
        pass
    os.close(fd)
    return None


def meta_checksum(meta: dict) -> str:
    """The sha256 of meta.json's content without its own `checksum` field (canonical JSON), so an
    edited step, schedule or loader position is caught like a damaged weight file."""
    return content_checksum(meta)


def checksum_state(meta: dict) -> str:
    """meta.json's own checksum: "ok", "wrong", "missing" (damage in the current format) or
    "unchecked" (a version-1 meta.json, written before checksums came in)."""
    if "checksum" in meta:
        return "ok" if meta["checksum"] == meta_checksum(meta) else "wrong"
    return "unchecked" if meta.get("format_version") == 1 else "missing"


# meta.json's fields a reader relies on, and their JSON types: valid JSON with a wrong type (files:
# null, step: "abc") is as damaged as a truncated file.
_META_TYPES = {"step": int, "files": dict, "config": dict, "loader": dict, "data": dict}


def read_meta(path: Path) -> dict:
    """meta.json of a checkpoint directory: parsed, with a format version this superpose reads,
    its checksum right and its fields of the right types."""
    path = Path(path)
    meta_path = path / "meta.json"
    if not path.is_dir():
        raise UserError(f"checkpoint {path} does not exist (any more); another process may be writing this run: "
                        f"see {command('superpose', 'train', '--resume', path.parent.parent)} for its newest "
                        "checkpoint")
    try:
        meta = json.loads(meta_path.read_text())
    except FileNotFoundError:
        raise UserError(f"checkpoint {meta_path} is missing; the checkpoint is damaged: {_fix(path)}") from None
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
        raise UserError(f"checkpoint {meta_path} is not readable JSON ({e}), truncated or corrupt: "
                        f"{_fix(path)}") from None
    if not isinstance(meta, dict) or "format_version" not in meta:
        raise UserError(f"checkpoint {meta_path} has no format_version: not a superpose checkpoint; {_fix(path)}")
    if meta["format_version"] not in READ_VERSIONS or isinstance(meta["format_version"], bool):
        raise UserError(f"checkpoint {meta_path} has format version {meta['format_version']!r}, this superpose reads "
                        f"version {' or '.join(map(str, READ_VERSIONS))}: resume it with the superpose that wrote it, "
                        f"or {_fix(path)}")
    for key, typ in _META_TYPES.items():
        if key not in meta:
            raise UserError(f"checkpoint {meta_path} lacks {key!r}: corrupt; {_fix(path)}")
        if not isinstance(meta[key], typ) or isinstance(meta[key], bool):
            raise UserError(f"checkpoint {meta_path} has {key}={json.dumps(meta[key])[:40]}, not a JSON "
                            f"{'integer' if typ is int else 'object'}: corrupt; {_fix(path)}")
    state = checksum_state(meta)
    if state == "wrong":
        raise UserError(f"checkpoint {meta_path} was changed after it was written (its checksum differs): "
                        f"{_fix(path)}")
    if state == "missing":
        raise UserError(f"checkpoint {meta_path} has no checksum, which every format-{FORMAT_VERSION} meta.json "
                        f"carries: it was changed after it was written; {_fix(path)}")
    if state == "unchecked":
        notice(f"checkpoint {path} was written by an older superpose (format version 1, before meta.json carried "
               "a checksum): its files are verified, its meta.json cannot be")
    bad = [n for n, f in meta["files"].items() if not (isinstance(f, dict) and isinstance(f.get("bytes"), int)
                                                         and isinstance(f.get("sha256"), str))]
    if meta["step"] < 0 or bad:
        what = f"step {meta['step']}" if meta["step"] < 0 else f"no size and sha256 for {bad[0]}"
        raise UserError(f"checkpoint {meta_path} records {what}: corrupt; {_fix(path)}")
    return meta


def verify(path: Path) -> dict:
    """read_meta, then every file present with its recorded size and sha256."""
    path = Path(path)
    meta = read_meta(path)
    verify_files(path, meta["files"], FILES, "checkpoint file", "meta.json")
    return meta


def verify_files(path: Path, records: dict, names: tuple[str, ...], what: str, manifest: str,
                 fix: str | None = None) -> None:
    """Each of `names` in `path` present, with the size and sha256 its manifest records: the
    check every read path makes (resume, eval, generate, export, load_model). `fix` replaces the
    default advice (the newest intact checkpoint)."""
    for name in names:
        f = path / name
        want = records.get(name)
        if not isinstance(want, dict) or not f.is_file():
            raise UserError(f"{what} {f} is missing; it is damaged: {fix or _fix(path)}")
        size = f.stat().st_size
        if size != want.get("bytes"):
            raise UserError(f"{what} {f} is truncated or corrupt ({size} bytes, {manifest} records "
                            f"{want.get('bytes')}): {fix or _fix(path)}")
        if sha256_file(f) != want.get("sha256"):
            raise UserError(f"{what} {f} is corrupt (sha256 differs from {manifest}): {fix or _fix(path)}")


def load_weights(path: Path, model: torch.nn.Module) -> None:
    """Weights into `model`, refusing a file whose tensors do not fit it (another model shape) or
    hold NaN or Inf (a training run never saves such weights, so they are damage)."""
    from safetensors import safe_open
    from safetensors.torch import load_model

    path = Path(path)
    f = path / "model.safetensors"
    what = "checkpoint file" if _STEP_DIR.match(path.name) else "model file"
    want = {k: tuple(v.shape) for k, v in model.state_dict().items()}
    try:
        with safe_open(str(f), framework="pt") as st:
            for name in st.keys():
                shape = tuple(st.get_slice(name).get_shape())
                if name not in want:
                    raise UserError(f"{what} {f} holds tensor {name!r}, which this model does not have "
                                    "(another model shape)")
                if shape != want[name]:
                    raise UserError(f"{what} {f} holds {name} with shape {list(shape)}, this model needs "
                                    f"{list(want[name])} (another model shape)")
        load_model(model, str(f), strict=True, device=str(next(model.parameters()).device))
    except UserError:
        raise
    except Exception as e:  # safetensors' own errors: a header that is not one, missing tensors
        first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise UserError(f"{what} {f} does not load into this model ({first}); {_fix(path)}") from None
    bad = [n for n, t in model.state_dict().items() if not bool(torch.isfinite(t).all())]
    if bad:
        raise UserError(f"{what} {f} holds NaN or Inf in {bad[0]}" + (f" and {len(bad) - 1} more tensors"
                        if len(bad) > 1 else "") + f": damaged; {_fix(path)}")


def load_torch(path: Path, name: str, device: torch.device | str = "cpu"):
    f = Path(path) / name
    try:
        return torch.load(f, map_location=device, weights_only=True)
    except pickle.UnpicklingError:  # torch's message advises weights_only=False: never for a file that may run code
        raise UserError(f"checkpoint file {f} holds Python objects besides tensors, which superpose never loads "
                        f"(unpickling them could run code); it was not written by superpose: {_fix(Path(path))}") from None
    except Exception as e:  # torch raises many kinds for a damaged zip
        raise UserError(f"checkpoint file {f} does not load ({type(e).__name__}: "
                        f"{str(e).strip().splitlines()[0] if str(e).strip() else ''}); {_fix(Path(path))}") from None
