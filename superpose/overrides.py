"""`--section.field=value` overrides: command-line text (or JSON values) into the typed fields of
a `Config`'s sections, each converted to its field's type or refused in one line.

    parse_overrides(["--a.b=1", "--c.d", "2"])   -> [("a.b", "1"), ("c.d", "2")]
    set_field(cfg, "train.steps", "2000")         cfg.train.steps = 2000
    set_fields(cfg, pairs)                        each pair, model.arch first

`Config.model` is the config class of its architecture (core/model.py), so model.arch decides
which model fields exist: `set_field` swaps the class, and `set_fields` sets model.arch before
any other field, whatever the order given. config.py (`Config.from_dict`, what a resume may
change) and presets.py (`resolve`) build on it.
"""

from __future__ import annotations

import dataclasses
import typing

from .errors import UserError


# Fields a resumed run may change: none of them alters the arithmetic of training, so the resumed
# run stays bit-identical to an uninterrupted one (on the same device and thread count). Every
# other field is fixed by the checkpoint. parallel.mode and the number of processes (which is not
# in the config) change only the order of floating-point sums: same update to float tolerance.
# So do the execution choices train.compile, train.attention and optim.fused (kernels, not math);
# train.keep_freed_memory changes nothing but speed. data.path may move with its data; data.mix
# may not change at all: its weights decide which source every later row comes from. Trackers
# (log.*) never touch the arithmetic. Written as the --resume help prints it (cli_parser.py);
# config.RESUME_MAY_CHANGE is the same, one `section.field` key each. It lives here, beside the
# override text it governs, so the command line's help needs no torch import.
RESUMABLE = ("data.path", "train.device/threads/eval_every/log_every/on_nan/compile/attention/keep_freed_memory",
             "optim.fused", "checkpoint.*", "parallel.mode/timeout_s", "log.*")


def field_types(obj) -> dict[str, type]:
    return typing.get_type_hints(type(obj))


def set_field(cfg, dotted: str, value) -> None:
    """Set `section.field` of `cfg` (a `Config`: a dataclass of section dataclasses) from a CLI string
    or a JSON value, converting to the field's type. model.arch replaces cfg.model by that
    architecture's config, its common fields kept (`with_arch`); another architecture's field
    (--model.n_experts of a llama) is refused in one line naming the architecture it is for."""
    section, _, name = dotted.partition(".")
    sections = {f.name for f in dataclasses.fields(cfg)}
    if section not in sections or not name:
        raise UserError(f"unknown config key {dotted!r}; sections are: {', '.join(sorted(sections))}"
                        " (use --section.field=value)")
    if section == "model":
        from .core.model import foreign_field, with_arch  # here, not at the top: --help imports no torch

        if name == "arch" and value is not None:  # (a bare --model.arch: needs a value, said below)
            try:
                cfg.model = with_arch(cfg.model, value)
            except ValueError as e:
                raise UserError(str(e)) from None
            return
        if why := foreign_field(cfg.model.arch, name):
            raise UserError(why)
    obj = getattr(cfg, section)
    types = field_types(obj)
    if name not in types:
        raise UserError(f"unknown config key {dotted!r}; {section} has: {', '.join(types)}")
    if value is None:  # a bare --section.field on the command line: a switch for a bool field
        if types[name] is not bool:
            raise UserError(f"--{dotted} needs a value: --{dotted}=VALUE or --{dotted} VALUE")
        value = True
    setattr(obj, name, _convert(dotted, value, types[name]))


def set_fields(cfg, pairs: list[tuple[str, object]], saved: bool = False):
    """`set_field` for each (section.field, value) in order, but model.arch first wherever it
    stands: it decides which model fields exist, so --model.n_experts=8 --model.arch=qwen3_moe
    works in either order. saved=True reads a recorded config (`Config.from_dict`, a config file):
    another architecture's field left at its default is dropped (`stale_default`). Returns cfg."""
    from .core.model import stale_default  # here, not at the top: --help imports no torch

    for key, value in sorted(pairs, key=lambda pair: pair[0] != "model.arch"):  # stable: the rest keep their order
        section, _, name = key.partition(".")
        if not (saved and section == "model" and stale_default(cfg.model.arch, name, value)):
            set_field(cfg, key, value)
    return cfg


def _convert(key: str, value, typ: type):
    if typing.get_origin(typ) is list:  # list[int] (model.mlp_only_layers): "0,5" on the command line, a JSON list
        items = [v for v in value.strip().strip("[]").split(",") if v.strip()] if isinstance(value, str) else value
        if not isinstance(items, list):
            raise UserError(f"{key}: expected comma-separated integers, got {value!r}")
        return [_convert(key, v.strip() if isinstance(v, str) else v, int) for v in items]
    if not isinstance(value, str):
        if typ is float and isinstance(value, int) and not isinstance(value, bool):
            return float(value)
        if isinstance(value, typ) and not (typ is int and isinstance(value, bool)):
            return value
        raise UserError(f"{key}: expected {typ.__name__}, got {value!r}")
    try:
        if typ is bool:
            low = value.lower()
            if low in ("1", "true", "yes", "on"):
                return True
            if low in ("0", "false", "no", "off"):
                return False
            raise ValueError
        if typ is int:
            return int(value)
        if typ is float:
            return float(value)
        return value
    except ValueError:
        raise UserError(f"{key}: expected {typ.__name__}, got {value!r}") from None


def parse_overrides(args: list[str]) -> list[tuple[str, str | None]]:
    """`--a.b=1 --c.d 2 --e.f` -> [("a.b", "1"), ("c.d", "2"), ("e.f", None)]. A bare flag (last,
    or followed by another --flag) has no value: `set_field` reads it as true for a bool field
    (`--log.tensorboard`) and refuses it for any other."""
    out, i = [], 0
    while i < len(args):
        arg = args[i]
        if not arg.startswith("--") or "." not in arg.split("=", 1)[0]:
            raise UserError(f"unexpected argument {arg!r}; config overrides look like --section.field=value")
        if "=" in arg:
            key, value = arg[2:].split("=", 1)
            i += 1
        elif i + 1 >= len(args) or args[i + 1].startswith("--"):
            key, value = arg[2:], None
            i += 1
        else:
            key, value = arg[2:], args[i + 1]
            i += 2
        out.append((key, value))
    return out
