"""The statistics of superpose's experiments: intervals over paired seeds, the iso-loss point, the
trend of a gain with run length and its crossover, and how a speedup that is only a bound reads.

Pure functions of numbers: compare and sweep call them, and so do the benchmarks that summarise
runs (benchmarks/knobs.py, benchmarks/crossover_guard.py).
"""

from __future__ import annotations

import math

import numpy as np

# Two-sided 95% Student-t quantiles by degrees of freedom, for confidence intervals over seeds.
T95 = {1: 12.706, 2: 4.303, 3: 3.182, 4: 2.776, 5: 2.571, 6: 2.447, 7: 2.365, 8: 2.306, 9: 2.262, 10: 2.228,
       15: 2.131, 20: 2.086, 30: 2.042}


def t95(df: int) -> float:
    return T95[max(k for k in T95 if k <= df)] if df >= 1 else math.nan


def stats(values: list[float]) -> dict:
    """mean, sample std, 95% half-interval over seeds, min, max, and the values."""
    a = np.asarray(values, dtype=float)
    n = len(a)
    std = float(a.std(ddof=1)) if n > 1 else math.nan
    return {"mean": float(a.mean()), "std": std, "ci95": t95(n - 1) * std / math.sqrt(n) if n > 1 else math.nan,
            "min": float(a.min()), "max": float(a.max()), "n": n, "values": [float(v) for v in a]}


def iso_loss(target: float, points: list[tuple[float, float]]) -> tuple[float, str]:
    """Where a decreasing curve of (x, loss) points reaches `target`, by linear interpolation
    between neighbours. -> (x, kind): kind "interpolated", or "lower_bound" when even the last
    point is above target (x is then the last x), or "upper_bound" when the first is already below."""
    pts = sorted(points)
    if target >= pts[0][1]:
        return pts[0][0], "upper_bound" if target > pts[0][1] else "interpolated"
    for (x0, y0), (x1, y1) in zip(pts, pts[1:]):
        if y1 <= target <= y0:
            return (x0 + (y0 - target) / (y0 - y1) * (x1 - x0) if y0 != y1 else x0), "interpolated"
    return pts[-1][0], "lower_bound"


def crossover(gains: dict[int, list[tuple[int, float]]], extrapolate: float = 1000.0) -> dict:
    """Fit gain = a + b * log10(steps) and find where it crosses zero.

    The fit is made per seed (each seed's lengths are paired: same init, same data order), and the
    seeds' lines are averaged; the spread of (a, b) over seeds gives a t-based 95% band around the
    mean line (seed-clustered, df = seeds - 1; points of one seed are not treated as independent).
    The crossover's interval is every length where the band holds zero, searched from a tenth of
    the shortest length to `extrapolate` x the longest; an end outside that range is unbounded."""
    seeds = sorted(gains)
    lines = []
    for k in seeds:
        x = np.log10([T for T, _ in gains[k]])
        y = np.array([g for _, g in gains[k]])
        b, a = np.polyfit(x, y, 1)
        lines.append((a, b))
    ab = np.array(lines)  # (seeds, 2)
    a, b = ab.mean(axis=0)
    n = len(seeds)
    steps = sorted({T for k in seeds for T, _ in gains[k]})
    out = {"model": "gain = a + b * log10(steps), per seed, averaged", "a": float(a), "b_per_decade": float(b),
           "seeds": n, "lengths": steps}
    cov = np.cov(ab.T, ddof=1) / n if n > 1 else None
    t = t95(n - 1) if n > 1 else math.nan

    def band(xs: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        mid = a + b * xs
        if cov is None:
            return mid, mid, mid
        se = np.sqrt(np.maximum(cov[0, 0] + 2 * xs * cov[0, 1] + xs ** 2 * cov[1, 1], 0.0))
        return mid, mid - t * se, mid + t * se

    out["b_ci95"] = float(t * math.sqrt(cov[1, 1])) if cov is not None else math.nan
    lo_x, hi_x = math.log10(steps[0]) - 1, math.log10(steps[-1] * extrapolate)
    xs = np.linspace(lo_x, hi_x, 2001)
    mid, lo, hi = band(xs)
    out["predicted_gain"] = {}
    for m in (2, 4, 10):  # what the trend says about runs longer than any measured
        mid_m, lo_m, hi_m = (float(v[0]) for v in band(np.array([math.log10(m * steps[-1])])))
        out["predicted_gain"][str(m * steps[-1])] = {"mean": mid_m, "lo": lo_m, "hi": hi_m}
    out["estimate_steps"] = float(10 ** (-a / b)) if b > 0 else None
    inside = (lo <= 0) & (hi >= 0)
    if cov is None or not inside.any():
        out["ci95_steps"] = None
    else:
        idx = np.flatnonzero(inside)
        out["ci95_steps"] = [None if idx[0] == 0 else float(10 ** xs[idx[0]]),
                             None if idx[-1] == len(xs) - 1 else float(10 ** xs[idx[-1]])]
    out["search_range_steps"] = [float(10 ** lo_x), float(10 ** hi_x)]
    return out


def clear_of_noise(st: dict, null: float) -> str:
    if st["n"] < 2 or math.isnan(st["std"]):
        return "cannot tell with one seed"
    lo, hi = st["mean"] - st["ci95"], st["mean"] + st["ci95"]
    side = "above" if lo > null else "below" if hi < null else None
    if side is None:
        return f"NOT clear of seed noise (95% interval {lo:.4g} to {hi:.4g} includes {null:g})"
    return f"clear of seed noise ({side} {null:g}; 95% interval {lo:.4g} to {hi:.4g})"


def speedup_text(st: dict, kinds: list[str]) -> str:
    """The iso-loss speedup as it may be read: "0.57x" when every seed's value was interpolated,
    "<= 0.99x" when TST's loss was worse than even the shortest baseline in every seed (the
    value is then only an upper bound), ">= 1.8x" when better than the longest, and the bound kinds
    spelled out when seeds differ."""
    v = f"{st['mean']:.2f}x"
    kinds = set(kinds)
    if kinds == {"interpolated"}:
        return v
    if kinds == {"upper_bound"}:
        return f"<= {v}"
    if kinds == {"lower_bound"}:
        return f">= {v}"
    return f"{v} (mixed: {', '.join(sorted(kinds))})"
