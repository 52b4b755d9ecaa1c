"""Baseline variants of `superpose compare` (--baselines): more baselines to beat than the
compare's own config, and which of them is the best at a length.

A user replaces the baseline they would have run, tuned; a TST gain against a baseline handicapped
by TST's own preferred settings is not a gain. Each variant is the compare's config with a few
overrides (never TST, the data, the length, the seed or the FLOPs of a step), trained as one more
baseline trunk per seed in the same lock-step (compare.run_seed).
"""

from __future__ import annotations

import copy
import itertools
from collections.abc import Callable
from dataclasses import dataclass

from ..config import Config
from ..errors import UserError
from ..overrides import set_fields
from .stats import stats

OWN = "own"
"""The name of the baseline with the compare's own config (the TST arm's, without TST)."""

# Fields a baseline variant may not change: they fix what the arms are compared on (the data and
# its evaluation, the run length and seed, the FLOPs of a step) or they are TST's own.
FIXED_FIELDS = ("train.steps", "train.seed", "train.batch_size", "train.grad_accum", "model.dim", "model.n_layers",
                "model.n_heads", "model.n_kv_heads", "model.ffn_dim", "model.vocab_size", "model.max_seq_len",
                "model.arch", "model.n_experts", "model.top_k", "model.moe_ffn_dim")


@dataclass(frozen=True)
class Variant:
    """One more baseline of a compare: the compare's config with `overrides` on top (never TST)."""

    name: str  # "model.init=normal", "optim.lr=6e-3,model.init=normal": its overrides as given
    overrides: tuple[tuple[str, str], ...]
    source: str = "--baselines"  # the flag it came from, for messages: --baselines, --baseline-grid, --tst-grid

    @property
    def slug(self) -> str:
        """Its part of a run directory's name: baseline-<slug>-<steps>."""
        return self.name.replace("/", "_").replace(",", "+")


def parse_baselines(text: str | None) -> list[Variant]:
    """--baselines "model.init=normal;model.init=titan;optim.lr=6e-3,model.init=normal": variants
    separated by ';', the fields of one variant by ','. Each field is checked like a --a.b override
    later (`apply_variant`); here only the form and the fields a baseline may not change."""
    if not text:
        return []
    out: list[Variant] = []
    for i, part in enumerate((p.strip() for p in text.split(";")), 1):
        if not part:
            continue
        pairs = []
        for item in (x.strip() for x in part.split(",")):
            key, eq, value = item.partition("=")
            key = key.strip().removeprefix("--")
            if not eq or not key or "." not in key or not value.strip():
                raise UserError(f"--baselines variant {i} ({part!r}): each field is section.field=value, e.g. "
                                "--baselines \"model.init=normal;optim.lr=6e-3\"")
            if key.startswith(("tst.", "data.")) or key in FIXED_FIELDS:
                raise UserError(f"--baselines variant {i}: {key} is fixed for every arm (it sets TST, the data and "
                                "its evaluation, the run length, the seed or the FLOPs of a step); vary options "
                                "such as model.init or optim.lr")
            if key in dict(pairs):  # the last one would win without a word
                raise UserError(f"--baselines variant {i} ({part!r}) sets {key} twice; give each field once per "
                                "variant, and separate variants with ';' (model.init=normal;model.init=titan)")
            pairs.append((key, value.strip()))
        name = ",".join(f"{k}={v}" for k, v in pairs)
        if name in {v.name for v in out}:
            raise UserError(f"--baselines names {name} twice; give each variant once")
        out.append(Variant(name, tuple(pairs)))
    return out


def parse_grid(text: str | None, flag: str, tst: bool = False) -> list[Variant]:
    """--baseline-grid / --tst-grid "optim.lr=1e-3,2e-3;model.init=torch,normal": fields separated
    by ';', the values of one field by ','; every combination is one cell (a `Variant`), in the
    order the values were given. A TST cell may also set tst.* (s, r, loss, ...); a baseline cell
    may not. Values are checked like --a.b overrides later (`apply_variant`)."""
    if not text or not text.strip():
        return []
    axes: dict[str, list[str]] = {}
    for part in (p.strip() for p in text.split(";")):
        key, eq, values = part.partition("=")
        key = key.strip().removeprefix("--")
        vals = [v.strip() for v in values.split(",")]
        if not eq or "." not in key or not all(vals):
            raise UserError(f"{flag} {part!r}: each field is section.field=value[,value...], fields separated by ';', "
                            "e.g. " + flag + " \"optim.lr=1e-3,2e-3;model.init=torch,normal\"")
        if key in axes:
            raise UserError(f"{flag} names {key} twice; give all its values in one field, e.g. {key}=a,b")
        if len(set(vals)) != len(vals):
            raise UserError(f"{flag} {key}: a value is given twice ({values.strip()}); give each once")
        if key.startswith("data.") or key in FIXED_FIELDS or (key.startswith("tst.") and not tst):
            what = "TST's own settings go in --tst-grid, " if key.startswith("tst.") else ""
            raise UserError(f"{flag}: {key} is fixed for every cell (it sets the data and its evaluation, the run "
                            f"length, the seed or the FLOPs of a step); {what}vary options such as optim.lr or "
                            "model.init")
        axes[key] = vals
    return [Variant(",".join(f"{k}={v}" for k, v in zip(axes, combo)), tuple(zip(axes, combo)), flag)
            for combo in itertools.product(*axes.values())]


def grid_edges(cells: dict[str, float], variants: list[Variant]) -> list[str]:
    """Where the best of a grid's cells (lowest value in `cells`, cell name -> mean loss) sits on
    the edge of a numeric axis: such an optimum may lie outside the grid, so the grid should be
    widened that way (with two values every cell is on an edge, and the grid cannot tell).
    -> one phrase per such axis, e.g. "optim.lr=1e-3 is the lowest of 4 values tried"."""
    ran = [v for v in variants if v.name in cells]
    if not ran:
        return []
    best = min(ran, key=lambda v: cells[v.name])
    out = []
    for i, (key, value) in enumerate(best.overrides):
        try:
            values = sorted({float(v.overrides[i][1]) for v in ran if v.overrides[i:i + 1] and v.overrides[i][0] == key})
            x = float(value)
        except (ValueError, IndexError):
            continue  # a categorical axis (model.init) has no edge to widen
        if len(values) >= 2 and x in (values[0], values[-1]):
            out.append(f"{key}={value} is the {'lowest' if x == values[0] else 'highest'} of {len(values)} values "
                       "tried")
    return out


def apply_variant(cfg: Config, variant: Variant | None, check: Callable[[Config], None] | None = None) -> Config:
    """`cfg` with the variant's overrides (a copy; None: `cfg` itself). A bad value is one UserError
    that names the flag the variant came from.

    The variant's config goes through the same checks as the compare's own: `Config.validate`,
    then `check` (compare's run-length rules), so a value refused for one arm is refused for all."""
    if variant is None:
        return cfg
    c = copy.deepcopy(cfg)
    try:
        set_fields(c, list(variant.overrides)).validate()
        if check is not None:
            check(c)
        return c
    except UserError as e:
        raise UserError(f"{variant.source} {variant.name}: {e}") from None


def baseline_name(variant: Variant | None, steps: int) -> str:
    """The run directory (and run name) of a baseline of `steps` steps: baseline-T for the
    compare's own config, baseline-<variant>-T for a variant."""
    return f"baseline-{steps}" if variant is None else f"baseline-{variant.slug}-{steps}"


def best_baseline(per_seed: dict) -> dict:
    """Of the compare's own baseline and its variants at a length, the one with the lowest mean
    final loss over the seeds, and TST's gain against it, paired by seed.
    per_seed: {seed: the seed's result at that length}."""
    res = [per_seed[k] for k in sorted(per_seed)]
    T = res[0]["tst"]["steps"]
    losses = {OWN: [next(b for b in r["baseline"] if b["steps"] == T)["val_loss"] for r in res]}
    for name in res[0].get("variants", {}):
        losses[name] = [r["variants"][name]["val_loss"] for r in res]
    best = min(losses, key=lambda k: sum(losses[k]))
    out = {"best_baseline": best,
           "best_baseline_gain": stats([b - r["tst"]["val_loss"] for b, r in zip(losses[best], res)]),
           "baselines_val_loss": {k: stats(v) for k, v in losses.items()}}
    # TST's iso-loss speedup against that baseline (seeds written before variants had one: none).
    iso = [r if best == OWN else r["variants"][best] for r in res]
    if all("iso_loss_kind" in e for e in iso):
        out["best_baseline_iso_loss_speedup"] = stats([e["iso_loss_speedup"] for e in iso])
        out["best_baseline_iso_loss_step_ratio"] = stats([e["iso_loss_step_ratio"] for e in iso])
        out["best_baseline_iso_loss_kinds"] = [e["iso_loss_kind"] for e in iso]
    return out
