"""The screen's table from the cells copied into screen/ (one summary.json per cell and seed):
final validation loss per seed and their mean, by arm, init and learning rate, plus the paired
difference of each TST cell to the best baseline cell where both seeds are in.

    python drivers/table.py            (prints Markdown)
    python drivers/table.py --notes    (also writes it into NOTES.md, between its table markers)
"""
import contextlib
import io
import json
import re
import sys
from pathlib import Path

here = Path(__file__).resolve().parent.parent
sized: dict[str, dict[tuple[str, str, str], dict[int, float]]] = {"": {}, "d32-": {}}  # stage 1, by size tag
stage2: dict[tuple[str, str, str, str, str], dict[int, float]] = {}  # (arm, init, lr, warmup, decay)
for summary in sorted(here.glob("screen/*/summary.json")):
    name = re.fullmatch(r"(d32-)?(tst|base)-(\w+)-lr([\d.e-]+?)(?:-w(\d+)-d([\d.]+))?-s(\d+)", summary.parent.name)
    tag, arm, init, lr, warmup, decay, seed = name.groups()
    loss = json.loads(summary.read_text())["val_loss"]
    if warmup is None:
        sized[tag or ""].setdefault((arm, init, lr), {})[int(seed)] = loss
    else:
        stage2.setdefault((arm, init, lr, warmup, decay), {})[int(seed)] = loss
cells = sized[""]


def schedules() -> None:
    """Stage 2: each arm's stage-1 winner at warmup x decay (the (100, 0.2) cell is stage 1's)."""
    print("\n| stage 2: seed 0 / seed 1 (mean) | warmup 100, decay 0.2 | " +
          " | ".join(f"warmup {w}, decay {d}" for w, d in (("100", "0.4"), ("400", "0.2"), ("400", "0.4"))) + " |")
    print("|---|---|---|---|---|")
    for arm, init, lr in sorted({k[:3] for k in stage2}):
        row = [cells.get((arm, init, lr), {})] + [stage2.get((arm, init, lr, w, d), {})
                                                  for w, d in (("100", "0.4"), ("400", "0.2"), ("400", "0.4"))]
        print(f"| {'TST' if arm == 'tst' else 'baseline'}, init = {init}, lr {lr} | " + " | ".join(
            " / ".join(f"{got[s]:.4f}" if s in got else "-" for s in (0, 1))
            + (f" ({sum(got.values()) / 2:.4f})" if len(got) == 2 else "") for got in row) + " |")


def table(cells: dict[tuple[str, str, str], dict[int, float]]) -> None:
    rates = sorted({k[2] for k in cells} | {"1e-3", "1.5e-3", "2e-3", "3e-3"}, key=float)  # plus widened ones
    rows = [("base", "normal"), ("base", "torch"), ("tst", "torch"), ("tst", "normal")]
    print("| cell: seed 0 / seed 1 (mean) | " + " | ".join(f"lr {r}" for r in rates) + " |")
    print("|---|" + "---|" * len(rates))
    for arm, init in rows:
        out = []
        for lr in rates:
            got = cells.get((arm, init, lr), {})
            vals = [f"{got[s]:.4f}" if s in got else "-" for s in (0, 1)]
            mean = f" ({sum(got.values()) / len(got):.4f})" if len(got) == 2 else ""
            out.append(" / ".join(vals) + mean)
        print(f"| {'TST' if arm == 'tst' else 'baseline'}, init = {init} | " + " | ".join(out) + " |")

    complete = {k: v for k, v in cells.items() if len(v) == 2}
    base = {k: v for k, v in complete.items() if k[0] == "base"}
    if base:
        best = min(base, key=lambda k: sum(base[k].values()))
        print(f"\nBest baseline cell so far (both seeds): init = {best[1]}, lr {best[2]}, mean "
              f"{sum(base[best].values()) / 2:.4f}.")
        for k, v in sorted(complete.items()):
            if k[0] == "tst":
                d = [base[best][s] - v[s] for s in (0, 1)]
                print(f"- TST init = {k[1]}, lr {k[2]}: gain over it {d[0]:+.4f} / {d[1]:+.4f} (seeds 0 / 1), "
                      f"mean {sum(d) / 2:+.4f}")


out = io.StringIO()
with contextlib.redirect_stdout(out):
    table(cells)
    if stage2:
        schedules()
    if sized["d32-"]:
        print("\nThe second size, d = 32 at 3,000 steps (stage 1 only):\n")
        table(sized["d32-"])
print(out.getvalue(), end="")
if "--notes" in sys.argv[1:]:
    notes = here / "NOTES.md"
    text, n = re.subn(r"(<!-- table -->\n).*?(<!-- /table -->)", lambda m: m[1] + out.getvalue() + m[2],
                      notes.read_text(), flags=re.S)
    assert n == 1, "NOTES.md needs one <!-- table --> ... <!-- /table --> block"
    notes.write_text(text)
