"""How much two tokens of a corpus tell about each other, by distance: the data behind tst.weights=mi.

The paper (§4.3) measures the mutual information between token pairs d positions apart on DCLM,
finds it decays like MI(d) = c0 + a * d^k (c0 ~ 3.63, a ~ 1.35, k ~ -1.25), and weights the
slots of the next-bag loss by the fitted curve. We do the same on the train split of a prepared
data directory:

    record = measure(dataset)        MI(d) for d = 1..16 and the fit {c0, a, k}, and the train
                                     split's unigram entropy (the plateau a TST phase 1 can sit on)
    save(data_dir, record)           DATA_DIR/mi.json and the plot DATA_DIR/mi.png
    load(data_dir)                   the record, or None

`superpose prepare` measures every new data directory; `superpose mi --data DIR` (re)measures an
existing one. How the fit becomes weights is `core.superposition.mi_bag_weights`.

Estimator: the plug-in MI of the empirical joint distribution of (x_t, x_{t+d}) over the sampled
stream (end-of-text separators and pairs across documents included: it is the stream the model
reads), with the Miller-Madow correction -(cells_xy - cells_x - cells_y + 1) / (2N), which removes
most of the plug-in's upward bias. That bias grows with the number of distinct pairs, i.e. with d,
so without the correction the decay would look flatter than it is.
"""

from __future__ import annotations

import json
import math
import time
from pathlib import Path
from collections.abc import Callable

import numpy as np

from ..errors import UserError, command

FILE = "mi.json"
PLOT = "mi.png"
MAX_DISTANCE = 16
MAX_TOKENS = 4_000_000
"""Tokens sampled from the train split: 16 evenly spaced contiguous blocks of this many in all
(seconds of numpy; the fit's parameters move by about 1% between 2M and 8M tokens on the default corpus)."""


def pair_mutual_information(blocks: list[np.ndarray], distance: int, vocab_size: int) -> float:
    """MI in nats between tokens `distance` apart, over pairs inside each 1-D block (Miller-Madow)."""
    left = np.concatenate([b[:-distance] for b in blocks if len(b) > distance]).astype(np.int64)
    right = np.concatenate([b[distance:] for b in blocks if len(b) > distance]).astype(np.int64)
    n = len(left)
    if n == 0:
        raise UserError(f"too few tokens to measure mutual information at distance {distance}")
    codes, joint = np.unique(left * vocab_size + right, return_counts=True)  # sorted pair codes, counts
    p_left = np.bincount(left, minlength=vocab_size)
    p_right = np.bincount(right, minlength=vocab_size)
    a, b = codes // vocab_size, codes % vocab_size
    plugin = float(np.sum(joint * (np.log(joint) + math.log(n) - np.log(p_left[a]) - np.log(p_right[b]))) / n)
    cells = len(codes) - np.count_nonzero(p_left) - np.count_nonzero(p_right) + 1
    return plugin - cells / (2 * n)


def fit_decay(distances: np.ndarray, mi: np.ndarray) -> dict:
    """Least-squares fit of MI(d) = c0 + a * d^k. For a fixed k the model is linear in (c0, a), so
    k is found by a grid over (-4, 0) refined by golden-section search, each k solved exactly."""
    d, y = np.asarray(distances, dtype=np.float64), np.asarray(mi, dtype=np.float64)

    def solve(k: float) -> tuple[float, float, float]:
        X = np.stack([np.ones_like(d), d ** k], axis=1)
        (c0, a), *_ = np.linalg.lstsq(X, y, rcond=None)
        return float(np.sum((X @ np.array([c0, a]) - y) ** 2)), float(c0), float(a)

    grid = np.linspace(-4.0, -0.02, 200)
    best = int(np.argmin([solve(k)[0] for k in grid]))
    lo, hi = grid[max(best - 1, 0)], grid[min(best + 1, len(grid) - 1)]
    g = (math.sqrt(5) - 1) / 2
    for _ in range(60):
        m1, m2 = hi - g * (hi - lo), lo + g * (hi - lo)
        if solve(m1)[0] < solve(m2)[0]:
            hi = m2
        else:
            lo = m1
    k = (lo + hi) / 2
    sse, c0, a = solve(k)
    return {"c0": c0, "a": a, "k": k, "rmse": math.sqrt(sse / len(d))}


def token_entropy(dataset, chunk: int = 1 << 24) -> float:
    """The unigram entropy H(p) in nats of the train split's token frequencies p: the multi-hot
    next-bag loss of a model that knows no context (it can do no better than predict p for every
    slot), so a TST phase 1 stuck there learned token frequencies only. All tokens, read in chunks."""
    counts = np.zeros(dataset.vocab_size, dtype=np.int64)
    total = dataset.train.num_tokens
    for start in range(0, total, chunk):
        counts += np.bincount(dataset.train.read(start, min(chunk, total - start)), minlength=dataset.vocab_size)
    p = counts[counts > 0] / total
    return float(-(p * np.log(p)).sum())


def unigram_entropy(data_dir: Path) -> float:
    """The train split's unigram entropy (nats): from mi.json when prepare or `superpose mi`
    recorded it, else measured now (seconds) without writing anything."""
    record = load(data_dir)
    if record is not None and "unigram_entropy" in record:
        return float(record["unigram_entropy"])
    from .shards import open_dataset

    return token_entropy(open_dataset(data_dir))


def measure(dataset, max_distance: int = MAX_DISTANCE, max_tokens: int = MAX_TOKENS,
            log: Callable[[str], None] = print) -> dict:
    """MI at distances 1..max_distance on up to `max_tokens` train tokens, and its fit."""
    if max_distance < 3:
        raise UserError(f"--max-distance must be >= 3 (a three-parameter fit), got {max_distance}")
    t0 = time.time()
    total = dataset.train.num_tokens
    n_blocks = 16
    per = min(total, max_tokens) // n_blocks
    if per <= max_distance:
        raise UserError(f"{dataset.path} has {total} train tokens, too few to measure mutual information up to "
                        f"distance {max_distance}")
    starts = np.linspace(0, total - per, n_blocks).astype(np.int64)
    blocks = [dataset.train.read(int(s), per) for s in starts]
    distances = list(range(1, max_distance + 1))
    mi = [float(pair_mutual_information(blocks, d, dataset.vocab_size)) for d in distances]
    fit = fit_decay(np.array(distances), np.array(mi))
    log(f"mi: MI(1) {mi[0]:.3f}, MI({max_distance}) {mi[-1]:.3f} nats; fit c0 {fit['c0']:.3f} + a {fit['a']:.3f} * "
        f"d^{fit['k']:.3f} (rmse {fit['rmse']:.4f}) on {per * n_blocks:,} tokens [{time.time() - t0:.0f}s]")
    return {"format_version": 1, "estimator": "plug-in with Miller-Madow correction, nats", "distances": distances,
            "mi": mi, "fit": fit, "tokens": per * n_blocks, "blocks": n_blocks, "vocab_size": dataset.vocab_size,
            "unigram_entropy": token_entropy(dataset)}


def save(data_dir: Path, record: dict, log: Callable[[str], None] = print) -> Path:
    """mi.json (atomically) and its plot mi.png into `data_dir`."""
    from ..files import write_text

    path = Path(data_dir) / FILE
    write_text(path, json.dumps(record, indent=2) + "\n", fix="free some space and run superpose mi again")
    plot(record, Path(data_dir) / PLOT)
    log(f"mi: wrote {path} and {PLOT}")
    return path


def load(data_dir: Path) -> dict | None:
    """The record in data_dir/mi.json, None when there is none; a broken file is one UserError."""
    path = Path(data_dir) / FILE
    if not path.is_file():
        return None
    try:
        record = json.loads(path.read_text())
        fit = record["fit"]
        float(fit["a"]), float(fit["k"]), float(fit["c0"])
    except (OSError, ValueError, KeyError, TypeError) as e:
        raise UserError(f"cannot read {path} ({e}); measure it again with: "
                        f"{command('superpose', 'mi', '--data', data_dir)}") from None
    return record


def plot(record: dict, path: Path) -> None:
    from ..files import write_file

    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    d, mi, fit = np.array(record["distances"]), np.array(record["mi"]), record["fit"]
    dd = np.linspace(1, d[-1], 200)
    fig, ax = plt.subplots(figsize=(5.5, 3.6))
    ax.plot(d, mi, "o", label="measured")
    ax.plot(dd, fit["c0"] + fit["a"] * dd ** fit["k"],
            label=f"fit {fit['c0']:.3f} + {fit['a']:.3f}·d^{fit['k']:.2f}")
    ax.set_xscale("log")
    ax.set_xlabel("distance d (tokens)")
    ax.set_ylabel("mutual information (nats)")
    ax.set_title(f"Token-pair mutual information ({record['tokens']:,} tokens)")
    ax.legend()
    fig.tight_layout()
    try:  # through the one write path: a full disk or a read-only folder is one line
        write_file(Path(path), lambda p: fig.savefig(p, format="png", dpi=110),
                   intact=f"{FILE} is written", fix="free some space and run superpose mi again")
    finally:
        plt.close(fig)
