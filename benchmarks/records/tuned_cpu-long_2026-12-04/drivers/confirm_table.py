"""PREREGISTRATION.md section 3's analysis, from the confirmation seeds copied into this record.

Each confirmation is a folder here (confirm-default, confirm-big, confirm-d32, corpus2) holding one
compare result per seed (seed-K/result.json, copied from runs/ by --collect) and, once every seed
has run, compare's own report. Per seed: TST's and the baseline's final validation loss, the gain
(baseline minus TST, nats; positive = TST better) and the baseline's steps to TST's loss,
interpolated in steps between its decayed lengths; then the mean, sample std and 95% paired t
interval of the gain, and of the speedup over the seeds where it was interpolated (a seed outside
the baseline's lengths is a bound and is listed, not averaged). d = 32 against d = 64: the paired
difference of the two sizes' gains by seed number.

    .venv/bin/python drivers/confirm_table.py --collect   (copy finished seeds from runs/, then print)
    .venv/bin/python drivers/confirm_table.py --notes     (also write it into NOTES.md between its markers)
"""
import contextlib
import io
import json
import re
import shutil
import sys
from pathlib import Path

here = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(here.parents[2]))  # the checkout, for superpose's statistics
from superpose.experiments.stats import iso_loss, stats  # noqa: E402

# record folder -> (runs/ folder it is copied from, title, the analysis's own baseline)
RUNS = {"confirm-default": ("runs/confirm-default", "default corpus, d = 64, 12,000 steps (primary)", "own"),
        "confirm-big": ("runs/confirm-big", "non-repeating corpus (67M tokens), d = 64, 12,000 steps", "own"),
        "confirm-d32": ("runs/confirm-d32", "default corpus, d = 32, 3,000 steps", "own"),
        "corpus2": ("runs/corpus2-rerun", "Python docs corpus, d = 64, 6,000 steps, earlier record's arms", "own")}
SEEDS = {"corpus2": list(range(400, 410))}  # the others: 300-307
# Exploratory, after the registered runs (drivers/speedup_ext.sh): the primary's bounded seeds with
# the baseline decayed at 21,000 and 24,000 steps too, copied into speedup-ext/ from here.
EXT = "runs/speedup-ext"
T_FMT = "{:+.4f}"


def collect(root: Path) -> None:
    """Copy each finished seed (result.json and its compare log) and, when present, the final report."""
    for name, (src, _, _) in RUNS.items():
        src = root / src
        for result in sorted(src.glob("all/seed-*/result.json")):
            dst = here / name / result.parent.name
            dst.mkdir(parents=True, exist_ok=True)
            shutil.copy2(result, dst / "result.json")
            log = src / "parts" / f"{result.parent.name}.log"
            if log.exists():
                shutil.copy2(log, dst / "compare.log")
        for f in ("report.json", "report.md"):
            if (src / "all" / f).exists():
                shutil.copy2(src / "all" / f, here / name / f)
    for result in sorted((root / EXT).glob("seed-*/seed-*/result.json")):
        dst = here / "speedup-ext" / result.parent.name
        dst.mkdir(parents=True, exist_ok=True)
        shutil.copy2(result, dst / "result.json")
        log = root / EXT / f"{result.parent.name}.log"
        if log.exists():
            shutil.copy2(log, dst / "compare.log")


def seed_row(result: dict) -> dict:
    """One seed's numbers at its (one) length, whether TST was a --tst-grid cell or the compare's own."""
    (steps, at), = (result["tst_cells"] if "tst_cells" in result else result["by_steps"]).items()
    if "tst_cells" in result:
        (_, at), = at.items()
    base = sorted((b["steps"], b["val_loss"]) for b in at["baseline"])
    return {"steps": int(steps), "tst": at["tst"]["val_loss"], "base": base, "gain": at["equal_steps_loss_gain"],
            "ratio": at["iso_loss_step_ratio"], "kind": at["iso_loss_kind"],
            "switch": at["tst"].get("phase1_loss_at_switch"),
            "variants": {k: v["val_loss"] for k, v in at.get("variants", {}).items()}}


def interval(st: dict, fmt: str = T_FMT) -> str:
    return f"{fmt.format(st['mean'])} ± {st['std']:.4f} (95% {fmt.format(st['mean'] - st['ci95'])} to " \
           f"{fmt.format(st['mean'] + st['ci95'])}, n = {st['n']})"


def speedup_of(row: dict) -> str:
    """A seed's speedup in steps, or the bound it is."""
    bound = {"lower_bound": "at least ", "upper_bound": "at most "}.get(row["kind"], "")
    return f"{bound}{row['ratio']:.3f}x"


def verdict(st: dict) -> str:
    lo, hi = st["mean"] - st["ci95"], st["mean"] + st["ci95"]
    return "TST wins (interval above zero)" if lo > 0 else "TST loses (interval below zero)" if hi < 0 else \
        "level (interval includes zero)"


def report(name: str) -> dict[int, dict]:
    """Print one confirmation's table and analysis; -> its seed rows by seed."""
    _, title, _ = RUNS[name]
    rows = {int(p.parent.name.split("-")[1]): seed_row(json.loads(p.read_text()))
            for p in sorted((here / name).glob("seed-*/result.json"))}
    planned = SEEDS.get(name, list(range(300, 308)))
    print(f"\n### {title}: {len(rows)} of {len(planned)} pre-registered seeds\n")
    if not rows:
        print("Not run yet.")
        return {}
    lengths = [s for s, _ in next(iter(rows.values()))["base"]]
    variants = sorted(next(iter(rows.values()))["variants"])
    print("| seed | TST | " + " | ".join(f"baseline, {s:,}" for s in lengths) + "".join(f" | {v}" for v in variants)
          + " | gain | baseline steps to TST's loss |")
    print("|---" * (3 + len(lengths) + len(variants)) + "|---|")
    for seed, r in sorted(rows.items()):
        steps = r["ratio"] * r["steps"]
        reach = f"{steps:,.0f} ({r['ratio']:.3f}x)" if r["kind"] == "interpolated" else \
            f"{'>' if r['kind'] == 'lower_bound' else '<'} {steps:,.0f} (bound)"
        print(f"| {seed} | {r['tst']:.4f} | " + " | ".join(f"{v:.4f}" for _, v in r["base"])
              + "".join(f" | {r['variants'][v]:.4f}" for v in variants) + f" | {T_FMT.format(r['gain'])} | {reach} |")
    gains = {seed: r["gain"] for seed, r in rows.items()}
    done = "" if sorted(rows) == planned else f" (partial: seeds {', '.join(map(str, sorted(rows)))} only)"
    if len(rows) > 1:
        g = stats(list(gains.values()))
        print(f"\n- gain (baseline minus TST, nats){done}: {interval(g)}"
              + ("" if done else f": **{verdict(g)}**"))
        for v in variants:
            print(f"- gain against {v}: {interval(stats([r['variants'][v] - r['tst'] for r in rows.values()]))}")
        measured = [r["ratio"] for r in rows.values() if r["kind"] == "interpolated"]
        bounds = [f"seed {s}: {speedup_of(r)}" for s, r in rows.items() if r["kind"] != "interpolated"]
        if len(measured) > 1:
            print(f"- speedup in steps (seeds interpolated between the baseline's lengths): "
                  f"{interval(stats(measured), '{:.3f}x')}")
        if bounds:
            print("- bounds, not averaged: " + "; ".join(bounds))
        switch = [r["switch"] for r in rows.values() if r["switch"] is not None]
        if switch:
            print(f"- exploratory: phase 1's multi-hot loss at the switch {stats(switch)['mean']:.3f} (mean)")
    return rows


def same(a: float, b: float) -> str:
    return "identical" if a == b else f"DIFFERS by {a - b:+.2e}"


def extended(primary: dict[int, dict]) -> None:
    """Exploratory: the primary's speedup with speedup_ext.sh's longer baseline lengths added to each
    seed's own (the same seed, config and data order, so one curve), read where it reaches TST's
    loss; TST's loss there is the confirmation's run again and must come out identical."""
    ext = {int(p.parent.name.split("-")[1]): seed_row(json.loads(p.read_text()))
           for p in sorted((here / "speedup-ext").glob("seed-*/result.json"))}
    if not ext or not primary:
        return
    print(f"\n### exploratory: the primary's bounded seeds, baseline also decayed at "
          f"{', '.join(f'{s:,}' for s, _ in next(iter(ext.values()))['base'][1:])} steps "
          f"(drivers/speedup_ext.sh; seeds {', '.join(map(str, ext))})\n")
    ratios = {}
    for seed, r in sorted(ext.items()):
        p = primary[seed]
        base = dict(p["base"]) | dict(r["base"])  # both runs decay at 12,000 too: a second check
        steps, kind = iso_loss(p["tst"], list(base.items()))
        ratios[seed] = steps / p["steps"]
        print(f"- seed {seed}: TST {r['tst']:.4f} ({same(r['tst'], p['tst'])} to the confirmation's), baseline at "
              f"{p['steps']:,} {same(dict(r['base'])[p['steps']], dict(p['base'])[p['steps']])}; baseline "
              + ", ".join(f"{s:,}: {v:.4f}" for s, v in sorted(base.items())) + "; steps to TST's loss "
              + (f"{steps:,.0f} ({ratios[seed]:.3f}x)" if kind == "interpolated" else f"{kind} {steps:,.0f}"))
        if kind != "interpolated":
            ratios.pop(seed)
    every = {s: ratios.get(s, p["ratio"] if p["kind"] == "interpolated" else None) for s, p in primary.items()}
    if None not in every.values() and len(every) > 1:
        print(f"- speedup in steps over all {len(every)} seeds, each read between measured lengths: "
              f"{interval(stats(list(every.values())), '{:.3f}x')}")
    else:
        read = [v for v in every.values() if v is not None]
        left = [f"seed {s}: {speedup_of(primary[s])}" for s, v in every.items() if v is None]
        print(f"- speedup in steps over the {len(read)} seeds read between measured lengths: "
              f"{interval(stats(read), '{:.3f}x')}; still a bound, not averaged: {'; '.join(left)}")


def main() -> None:
    if "--collect" in sys.argv[1:]:
        collect(Path.cwd())
    said = io.StringIO()
    with contextlib.redirect_stdout(said):
        rows = {name: report(name) for name in RUNS}
        extended(rows["confirm-default"])
        big, small = rows["confirm-default"], rows["confirm-d32"]
        both = sorted(set(big) & set(small))
        if len(both) > 1:
            d = stats([big[s]["gain"] - small[s]["gain"] for s in both])
            print(f"\n**Size:** gain at d = 64 minus gain at d = 32, paired by seed: {interval(d)}")
            # Exploratory (section 3 registered only the gains' difference): the speedup's, over the
            # seeds interpolated at both sizes; a seed bounded at either size is left out and listed.
            read = [s for s in both if big[s]["kind"] == small[s]["kind"] == "interpolated"]
            if len(read) > 1:
                r = stats([big[s]["ratio"] - small[s]["ratio"] for s in read])
                left = [f"seed {s}: d = 64 {speedup_of(big[s])}, d = 32 {speedup_of(small[s])}" for s in both if s not in read]
                print(f"- exploratory: speedup at d = 64 minus speedup at d = 32, paired, seeds read at both sizes: "
                      f"{interval(r, '{:+.3f}x')}" + (f"; left out, bounds: {'; '.join(left)}" if left else ""))
    print(said.getvalue(), end="")
    if "--notes" in sys.argv[1:]:
        notes = here / "NOTES.md"
        text = notes.read_text()
        begin, end = "<!-- confirm -->", "<!-- /confirm -->"
        if begin not in text:
            sys.exit(f"confirm_table.py: {notes} has no {begin} ... {end} markers; add them where the table goes")
        text = re.sub(re.escape(begin) + ".*?" + re.escape(end), lambda _: f"{begin}\n{said.getvalue().strip()}\n{end}",
                      text, flags=re.S)
        notes.write_text(text)


if __name__ == "__main__":
    main()
