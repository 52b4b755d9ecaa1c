"""The two arms the pre-registration's section 1 picks from the screen, and the compare command
that confirms them (PREREGISTRATION.md sections 1-2), from the cells copied into screen/.

    python drivers/arms.py      prints each arm's stage-1 winner, what is still missing (a cell of
                                the grid, a widening the rule asks for, a stage-2 cell), and once
                                nothing is, the arms and the confirmation command
    python drivers/arms.py --cells   only the missing cells, as grid.sh takes them (empty: done)
    python drivers/arms.py --compare-args   the two arms as compare's arguments, one a line (exit 1
                                            while cells are missing)
    python drivers/arms.py --size d32 ...   the same for the second size (cells named d32-...;
                                            section 2: rate x init only, no stage 2)

A cell's score is its mean final validation loss over seeds 0 and 1; an arm's stage-1 winner is its
best (init, rate) cell at warmup 100 and decay 0.2; its rate axis is widened while the winner sits
on an edge; stage 2 tries warmup {100, 400} x decay {0.2, 0.4} at the winner; ties within 0.001
nats go to the cell closer to the preset (rate 3e-3, warmup 100, decay 0.2).
"""
import contextlib
import io
import json
import math
import re
import sys
from pathlib import Path

here = Path(__file__).resolve().parent.parent
GRID = ("1e-3", "1.5e-3", "2e-3", "3e-3")
# Section 1's widening, in order, "until the best rate is interior" (it names the first step each way)
WIDER = {"low": ("7e-4", "5e-4", "3e-4", "2e-4"), "high": ("4e-3", "6e-3", "8e-3", "1.2e-2")}
SCHEDULES = (("100", "0.2"), ("100", "0.4"), ("400", "0.2"), ("400", "0.4"))
TIE = 0.001

SIZE = sys.argv[sys.argv.index("--size") + 1] if "--size" in sys.argv else ""  # "" (d = 64) or "d32"
TAG = f"{SIZE}-" if SIZE else ""
runs: dict[tuple, dict[int, float]] = {}  # (arm, init, lr, warmup, decay) -> {seed: final val loss}
for summary in here.glob("screen/*/summary.json"):
    name = re.fullmatch(r"(d32-)?(tst|base)-(\w+)-lr([\d.e-]+?)(?:-w(\d+)-d([\d.]+))?-s(\d+)", summary.parent.name)
    tag, arm, init, lr, w, d, seed = name.groups()
    if (tag or "") == TAG:
        runs.setdefault((arm, init, lr, w or "100", d or "0.2"), {})[int(seed)] = json.loads(summary.read_text())["val_loss"]


def score(cell: tuple) -> float | None:
    got = runs.get(cell, {})
    return (got[0] + got[1]) / 2 if 0 in got and 1 in got else None


def preset_distance(cell: tuple) -> tuple:
    _, _, lr, w, d = cell
    return ((w, d) != ("100", "0.2"), abs(math.log(float(lr) / 3e-3)))


def best(cells: list[tuple]) -> tuple:
    top = min(score(c) for c in cells)
    return min((c for c in cells if score(c) <= top + TIE), key=preset_distance)


def pick(arm: str, missing: list[str]) -> tuple | None:
    stage1 = [(arm, i, lr, "100", "0.2") for i in ("torch", "normal") for lr in GRID]
    lacking = [c for c in stage1 if score(c) is None]
    if lacking:
        missing += [f"{arm}:{c[1]}:{c[2]}" for c in lacking]
        return None
    winner = best(stage1)
    for side, more in WIDER.items():  # widen the winner's init while it sits on an edge
        # The edge is the grid's, moved out by each widening cell as it is weighed (not every rate
        # already run: a widening cell that exists would otherwise make the old edge look interior).
        axis = sorted(GRID, key=float)
        for lr in more:
            edge = axis[0] if side == "low" else axis[-1]
            if winner[2] != edge:
                break
            cell = (arm, winner[1], lr, "100", "0.2")
            if score(cell) is None:
                missing.append(f"{arm}:{winner[1]}:{lr} (widening)")
                return None
            axis = sorted(set(axis) | {lr}, key=float)
            winner = best([winner, cell])
    print(f"{arm}: stage-1 winner init={winner[1]} lr={winner[2]} (mean {score(winner):.4f})")
    if SIZE:  # the second size is screened on rate x init alone (section 2)
        return winner
    stage2 = [winner[:3] + s for s in SCHEDULES]
    lacking = [c for c in stage2 if score(c) is None]
    if lacking:
        missing += [f"{arm}:{c[1]}:{c[2]}:{c[3]}:{c[4]}" for c in lacking]
        return None
    return best(stage2)


def fields(cell: tuple) -> list[str]:
    return [f"model.init={cell[1]}", f"optim.lr={cell[2]}", f"optim.warmup_steps={cell[3]}",
            f"optim.decay_frac={cell[4]}"]


missing: list[str] = []
with contextlib.redirect_stdout(io.StringIO()) as said:
    arms = {arm: pick(arm, missing) for arm in ("base", "tst")}
if "--cells" in sys.argv[1:]:
    print(" ".join(m.split(" ")[0] for m in missing))
    sys.exit(0)
if "--compare-args" in sys.argv[1:]:
    if missing:
        sys.exit(1)
    # the tuned baseline is compare's own (its settings apply to both arms); TST is its one grid cell
    print("\n".join([*(f"--{f}" for f in fields(arms["base"])), "--tst-grid", ";".join(fields(arms["tst"]))]))
    sys.exit(0)
print(said.getvalue(), end="")
if missing:
    print("still to run (grid.sh cells, seeds 0 and 1): " + " ".join(missing))
else:
    for arm, cell in arms.items():
        print(f"{arm}: the arm is init={cell[1]} lr={cell[2]} warmup={cell[3]} decay={cell[4]} (mean {score(cell):.4f})")
    print("confirmation, one compare per seed (TST as its one grid cell, the tuned baseline as compare's own):")
    print("  superpose compare --preset cpu-long --steps 12000 --data.val_tokens=229376 --baseline-lengths 1,1.25,1.5 "
          + " ".join(f"--{f}" for f in fields(arms["base"])) + f" --tst-grid \"{';'.join(fields(arms['tst']))}\"")
