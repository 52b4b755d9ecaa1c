"""What a resumed run may and may not change: the checkpoint's config against the one given.

A resume continues the run bit for bit, so only fields that cannot change the arithmetic
(RESUME_MAY_CHANGE: paths, device, logging, checkpoint cadence, ...) may be overridden, and a
checkpoint from another model shape, vocabulary or data is refused in one line.
"""

from __future__ import annotations

import hashlib
from pathlib import Path

from . import checkpoint
from ..config import RESUME_MAY_CHANGE, Config, differences, parse_overrides, set_field
from ..data import Dataset
from ..errors import UserError


def check_compatible(meta: dict, meta_path: Path, cfg: Config, ds: Dataset) -> None:
    """Refuse a checkpoint that does not belong to this run: another model shape, another
    vocabulary or data, or any config field outside RESUME_MAY_CHANGE changed."""
    try:
        saved = Config.from_dict(meta["config"])
    except UserError as e:
        raise UserError(f"checkpoint {meta_path} holds a config this superpose cannot read ({e})") from None
    fp, tok = meta["data"], _sha256_file(ds.tokenizer_path)
    if fp.get("vocab_size") != ds.vocab_size or fp.get("tokenizer_sha256") != tok:
        raise UserError(f"checkpoint {meta_path} was trained with another vocabulary ({fp.get('vocab_size')} tokens, "
                        f"tokenizer sha256 {str(fp.get('tokenizer_sha256'))[:12]}) than the data in {ds.path} "
                        f"({ds.vocab_size} tokens, {tok[:12]}); resume on the run's own data")
    if fp.get("train_tokens") != ds.train.num_tokens:
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


def _sha256_file(path: Path) -> str:
    return hashlib.sha256(Path(path).read_bytes()).hexdigest()


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
    refused = [k for k, _ in pairs if k not in RESUME_MAY_CHANGE]
    if refused:
        raise UserError(f"--resume continues the run exactly as it was configured, so {', '.join('--' + k for k in refused)} "
                        f"cannot change; a resumed run may change only {', '.join(RESUME_MAY_CHANGE)}")
    for key, value in pairs:
        set_field(cfg, key, value)
    return cfg.validate()
