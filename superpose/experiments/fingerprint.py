"""The config a finished compare seed or sweep cell was made with, checked before its results are
reused: a rerun into the same --out with other settings must not label old numbers with new ones.

The whole resolved config is compared, field by field. Only the fields a resume may change
(`RESUME_MAY_CHANGE`: device, logging, checkpoint cadence, speed options, the data's path) may
differ, since they cannot change what was measured, plus the `ignore`d fields the experiment
checks its own way (a compare's lengths, the seed its directory is named after).
"""

from __future__ import annotations

from pathlib import Path

from ..config import RESUME_MAY_CHANGE, Config, differences
from ..errors import UserError


def changed_fields(saved: dict, cfg: Config, ignore: tuple[str, ...] = ()) -> list[tuple[str, object, object]]:
    """(field, saved value, new value) of every field that differs and matters."""
    from ..data.mixture import absolute_mix

    old = Config.from_dict(saved)
    return [(k, a, b) for k, a, b in differences(old, cfg) if k not in RESUME_MAY_CHANGE and k not in ignore
            and not (k == "model.vocab_size" and b == 0)  # 0 = "from the data": resolved when the run started
            and not (k == "data.mix" and a and b and absolute_mix(a) == absolute_mix(b))]  # stored absolute


def check_same_config(saved: dict | None, cfg: Config, what: str, record: Path, rerun: str,
                      ignore: tuple[str, ...] = ()) -> None:
    """Refuse to reuse `what` (a finished seed or cell) unless `saved`, the config it recorded in
    `record`, matches `cfg` in every field that matters; one line naming the differing fields."""
    if not isinstance(saved, dict):
        raise UserError(f"{what} in {record.parent} has no readable config record ({record.name}), so it cannot be "
                        f"checked against this command's settings; {rerun}")
    try:
        changed = changed_fields(saved, cfg, ignore)
    except UserError as e:
        raise UserError(f"{what} in {record.parent} recorded a config this superpose cannot read ({e}); "
                        f"{rerun}") from None
    if changed:
        shown = ", ".join(f"{k}={a!r} there, {b!r} now" for k, a, b in changed[:6])
        more = f" and {len(changed) - 6} more" if len(changed) > 6 else ""
        raise UserError(f"{what} in {record.parent} was made with other settings ({shown}{more}); rerun with its "
                        f"settings to finish it, or {rerun}")
