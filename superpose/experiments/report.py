"""Plots and markdown for `compare` and `sweep` (matplotlib, headless)."""

from __future__ import annotations

import dataclasses
import math
from pathlib import Path

import matplotlib
import matplotlib.ticker

matplotlib.use("Agg")  # files only, no display
import matplotlib.pyplot as plt  # noqa: E402

from ..config import Config  # noqa: E402
from ..core.tst_spec import TSTSpec  # noqa: E402
from ..files import write_file, write_text  # noqa: E402
from .stats import speedup_text  # noqa: E402

REPORT_FIX = "free some space and run the same command again: finished seeds and cells are kept"


def write_report(path: Path, text: str) -> None:
    """A report file, through the one write path (atomic; a full disk is one line)."""
    write_text(path, text, intact="the runs' results are kept", fix=REPORT_FIX)


def save_figure(fig, path: Path, intact: str = "the runs' results are kept", fix: str = REPORT_FIX) -> None:
    """A figure file, renamed into place whole (`files.write_file`): a viewer never sees half an image."""
    # The temporary's name has no .png suffix, so the format is given.
    write_file(path, lambda p: fig.savefig(p, dpi=120, format=path.suffix.lstrip(".") or "png"),
               intact=intact, fix=fix)

TST_COLOR, BASE_COLOR = "tab:red", "tab:blue"


def tst_label(t: dict) -> str:
    """The TST arm in a few words: "s=4, r=0.3", a curriculum, and any ablation option set."""
    out = [f"s={t['bag_size']}, r={t['ratio']}" if not t.get("schedule") else f"curriculum {t['schedule']}"]
    defaults = dataclasses.asdict(TSTSpec())  # the ablation options, by their defaults
    out += [f"{k}={t[k]}" for k in ("mode", "loss", "weights", "reset_optimizer", "reinit")
            if t.get(k, defaults[k]) != defaults[k]]
    return ", ".join(out)


def plot_compare(report: dict, per_seed: dict, out: Path) -> list[Path]:
    """loss_vs_time.png, loss_vs_step.png, loss_vs_tokens.png: validation loss of both arms.

    TST: its eval curve (phase 1 then 2). Baseline: the trunk's curve at the stable LR (dashed;
    not a loss at that length), and the decayed loss at each length (markers, solid): the
    baseline's real loss-for-budget curve. The dotted vertical line is TST's phase switch."""
    cfg = report["config"]
    B, L = cfg["train"]["batch_size"], cfg["data"]["seq_len"]
    phase1_tokens = Config.from_dict(cfg).build_schedule().raw_tokens(B, L)[1]  # modes and curricula included
    axes_spec = {"time": ("train_time_s", "training wall clock (s)"), "step": ("step", "optimizer step"),
                 "tokens": ("tokens_seen", "raw tokens read")}
    paths = []
    for name, (key, label) in axes_spec.items():
        fig, ax = plt.subplots(figsize=(7, 4.5))
        switch_x = []
        for i, seed in enumerate(sorted(per_seed, key=int)):
            _plot_seed(ax, per_seed[seed], key, pts_key(name), tst_label(cfg["tst"]), first=i == 0)
            r = per_seed[seed]
            switch_x.append({"time": r["tst"]["switch_time_s"], "step": r["tst"]["switch_step"],
                             "tokens": phase1_tokens}[name])
        ax.axvline(sum(switch_x) / len(switch_x), color="gray", ls=":", lw=1, label="TST phase switch")
        # Both curves whole (the first evaluation is far above the rest, so log y), and an inset
        # zoomed on the final losses, where the arms are told apart.
        curves = [e["val_loss"] for k in per_seed for e in per_seed[k]["tst"]["curve"] + per_seed[k]["baseline_curve"]]
        finals = [v for k in per_seed for v in [per_seed[k]["tst"]["val_loss"]]
                  + [b["val_loss"] for b in per_seed[k]["baseline"]]
                  + [b["val_loss"] for b in per_seed[k].get("variants", {}).values()]]
        ax.set_yscale("log")
        ax.set_ylim(min(curves + finals) * 0.98, max(curves + finals) * 1.02)
        ax.yaxis.set_major_formatter(matplotlib.ticker.ScalarFormatter())
        ax.yaxis.set_minor_formatter(matplotlib.ticker.FormatStrFormatter("%.1f"))
        _zoom_inset(ax, per_seed, key, pts_key(name))
        ax.set_xlabel(label)
        ax.set_ylabel("validation loss (nats/token)")
        g, sp = report["equal_steps_loss_gain"], report["iso_loss_speedup"]
        best = (f"; vs the best baseline ({report['best_baseline']}) {report['best_baseline_gain']['mean']:+.3f}"
                if len(report.get("baselines_val_loss", {})) > 1 else "")
        ax.set_title(f"TST vs baseline, {cfg['train']['steps']} steps, {g['n']} seed(s)\ngain {g['mean']:+.3f} "
                     f"nats at equal steps{best}, iso-loss speedup {speedup_text(sp, report['iso_loss_kinds'])}",
                     fontsize=9)
        ax.grid(alpha=0.3)
        ax.legend(fontsize=7, loc="upper right")
        fig.tight_layout()
        path = out / f"loss_vs_{name}.png"
        save_figure(fig, path)
        plt.close(fig)
        paths.append(path)
    return paths


def _plot_seed(ax, r: dict, key: str, pts: str, tst_name: str, first: bool) -> None:
    """One seed's curves on a loss_vs_* axis: TST's eval curve and final loss, the baseline trunk
    at the stable LR, each decayed baseline length, other baselines' final losses (labelled once,
    on the `first` seed). key: the curves' x field; pts: the final points' (`pts_key`)."""
    x = [e[key] + (1 if key == "step" else 0) for e in r["tst"]["curve"]]
    ax.plot(x, [e["val_loss"] for e in r["tst"]["curve"]], color=TST_COLOR, alpha=0.8, lw=1.2,
            label=f"TST {tst_name}" if first else None)
    bx = [e[key] + (1 if key == "step" else 0) for e in r["baseline_curve"]]
    ax.plot(bx, [e["val_loss"] for e in r["baseline_curve"]], color=BASE_COLOR, alpha=0.5, lw=1, ls="--",
            label="baseline at stable LR (not decayed)" if first else None)
    ax.plot([b[pts] for b in r["baseline"]], [b["val_loss"] for b in r["baseline"]], color=BASE_COLOR,
            marker="o", ms=4, lw=1.2, label="baseline after decay, per length" if first else None)
    ax.plot([r["tst"][pts]], [r["tst"]["val_loss"]], color=TST_COLOR, marker="*", ms=10)
    for j, v in enumerate(r.get("variants", {}).values()):  # --baselines: their final losses
        ax.plot([v[pts]], [v["val_loss"]], color="black", marker="s", ms=4, ls="none",
                label="other baselines, final" if first and j == 0 else None)


def pts_key(axis: str) -> str:
    """The field of a finished arm (tst / baseline entries) that is the x of that axis."""
    return {"time": "train_time_s", "step": "steps", "tokens": "tokens_seen"}[axis]


def _zoom_inset(ax, per_seed: dict, key: str, pts: str) -> None:
    """An inset on the right: TST's end and the decayed baselines around it, y fitted to them."""
    ins = ax.inset_axes([0.55, 0.3, 0.42, 0.34])  # right of the middle: the curves run low there by then
    ends = [r["tst"][pts] for r in per_seed.values()]
    x_lo, x_hi = 0.75 * min(ends), 1.3 * max(ends)
    ys = []
    for r in per_seed.values():
        for curve, color, ls in ((r["tst"]["curve"], TST_COLOR, "-"), (r["baseline_curve"], BASE_COLOR, "--")):
            x = [e[key] + (1 if key == "step" else 0) for e in curve]
            ins.plot(x, [e["val_loss"] for e in curve], color=color, lw=1, ls=ls, alpha=0.7)
        ins.plot([b[pts] for b in r["baseline"]], [b["val_loss"] for b in r["baseline"]], color=BASE_COLOR,
                 marker="o", ms=3, lw=1)
        ins.plot([r["tst"][pts]], [r["tst"]["val_loss"]], color=TST_COLOR, marker="*", ms=8)
        ys += [r["tst"]["val_loss"]] + [b["val_loss"] for b in r["baseline"] if x_lo <= b[pts] <= x_hi]
    lo, hi = min(ys), max(ys)
    pad = 0.3 * (hi - lo) + 1e-3
    ins.set_ylim(lo - pad, hi + pad)
    ins.set_xlim(x_lo, x_hi)
    ins.tick_params(labelsize=6)
    ins.grid(alpha=0.3)
    ins.set_title("the end, zoomed", fontsize=7)


def plot_gain_vs_length(report: dict, path: Path) -> None:
    """Equal-steps gain (baseline - TST, nats) against run length, log x: per-seed points, the mean
    with its 95% interval as bars, the zero line, and the fitted trend with its band."""
    import numpy as np

    fig, ax = plt.subplots(figsize=(7, 4.5))
    steps = [ln["steps"] for ln in report["lengths"]]
    for ln in report["lengths"]:
        g = ln["equal_steps_loss_gain"]
        ax.scatter([ln["steps"]] * g["n"], g["values"], color=TST_COLOR, alpha=0.35, s=12)
    means = [ln["equal_steps_loss_gain"]["mean"] for ln in report["lengths"]]
    ci = [0 if math.isnan(ln["equal_steps_loss_gain"]["ci95"]) else ln["equal_steps_loss_gain"]["ci95"]
          for ln in report["lengths"]]
    ax.errorbar(steps, means, yerr=ci, color=TST_COLOR, marker="o", capsize=4, lw=1.5,
                label=f"vs own baseline: mean, 95% interval ({report['lengths'][0]['equal_steps_loss_gain']['n']} seeds)")
    if len(report["lengths"][0].get("baselines_val_loss", {})) > 1:  # --baselines: the gain a user would see
        best = [ln["best_baseline_gain"] for ln in report["lengths"]]
        ax.errorbar(steps, [b["mean"] for b in best], yerr=[0 if math.isnan(b["ci95"]) else b["ci95"] for b in best],
                    color="black", marker="s", capsize=4, lw=1.2, ls="-.",
                    label="vs the best baseline (" + ", ".join(sorted({ln["best_baseline"] for ln in report["lengths"]}))
                    + ")")
    c = report["crossover"]
    hi_x = max(steps[-1] * 4, c["estimate_steps"] * 1.3 if c["estimate_steps"] else 0)
    hi_x = min(hi_x, c["search_range_steps"][1])
    xs = np.geomspace(steps[0] * 0.8, hi_x, 200)
    ax.plot(xs, c["a"] + c["b_per_decade"] * np.log10(xs), color="gray", ls="--", lw=1,
            label=f"fit: {c['b_per_decade']:+.3f} nats per 10x steps")
    if c["estimate_steps"] and c["estimate_steps"] <= hi_x:
        ax.axvline(c["estimate_steps"], color="gray", ls=":", lw=1,
                   label=f"predicted crossover ~{c['estimate_steps']:,.0f} steps")
    ax.axhline(0, color="black", lw=0.8)
    ax.set_xscale("log")
    ax.set_xlabel("run length (optimizer steps, log scale)")
    ax.set_ylabel("baseline - TST val loss at equal steps (nats)")
    cfg = report["config"]
    ax.set_title(f"TST gain vs run length ({tst_label(cfg['tst'])}); "
                 "above 0: TST better", fontsize=9)
    ax.grid(alpha=0.3, which="both")
    ax.legend(fontsize=8)
    fig.tight_layout()
    save_figure(fig, path)
    plt.close(fig)


def write_scan_markdown(rep: dict, path: Path) -> None:
    cfg = rep["config"]
    t, env = cfg["tst"], rep["environment"]
    lines = [f"# superpose compare: TST ({tst_label(t)}) gain vs run length", "",
             f"Date {rep['date']}. Seeds {', '.join(map(str, rep['seeds']))}; lengths "
             f"{', '.join(map(str, rep['steps']))} steps. Machine {env['platform']}, {env['cpu_count']} CPUs, "
             f"torch {env['torch']} ({env['threads']} threads).", "",
             f"Command: `{rep['command']}`" if rep["command"] else "", "", "## Verdict", "",
             *[f"- {v}" for v in rep["verdicts"]], "", "## Per length", "",
             "| steps | TST val loss | baseline val loss | gain (nats) | 95% interval | best baseline | "
             "gain vs best (nats) | its 95% interval | iso-loss speedup (wall) | iso-loss speedup (steps) | "
             "iso-loss speedup vs best (steps) | per-seed gains | details |",
             "|---|---|---|---|---|---|---|---|---|---|---|---|---|"]
    for ln in rep["lengths"]:
        g, b = ln["equal_steps_loss_gain"], ln["best_baseline_gain"]
        lines.append(f"| {ln['steps']} | {_fmt(ln['tst_val_loss'])} | {_fmt(ln['baseline_val_loss'])} | "
                     f"{_fmt(g, 4)} | {interval(g)} | {ln['best_baseline']} | {_fmt(b, 4)} | {interval(b)} | "
                     f"{speedup_text(ln['iso_loss_speedup'], ln['iso_loss_kinds'])} | "
                     f"{speedup_text(ln['iso_loss_step_ratio'], ln['iso_loss_kinds'])} | "
                     + (speedup_text(ln["best_baseline_iso_loss_step_ratio"], ln["best_baseline_iso_loss_kinds"])
                        if "best_baseline_iso_loss_kinds" in ln else "")
                     + f" | {', '.join(f'{v:+.4f}' for v in g['values'])} | [report](steps-{ln['steps']}/report.md) |")
    lines += ["", "## Trend", ""]
    for key, against in (("crossover", "the gain against the own baseline"),
                         ("best_crossover", "the gain against the best baseline")):
        c = rep.get(key)
        if not c:
            continue
        one_seed = c["seeds"] < 2
        lines += [f"Fit of {against}: {c['model']}: a = {c['a']:+.4f}, b = {c['b_per_decade']:+.4f} nats per 10x "
                  "steps. What it predicts beyond the longest length (mean" + ("; one seed, so no band):" if one_seed
                                                                              else ", 95% band):"), ""]
        for T, p in c["predicted_gain"].items():
            band = "" if one_seed else f" ({p['lo']:+.3f} to {p['hi']:+.3f})"
            lines.append(f"- {int(float(T)):,} steps: {p['mean']:+.3f}{band}")
        lines.append("")
    lines += ["A line in log(steps) is a description of the measured lengths, not a law: trust the "
              "extrapolation only as far as the band is narrow.", "", "![gain vs length](gain_vs_length.png)", ""]
    write_report(path, "\n".join(lines))


def interval(st: dict, digits: int = 4, signed: bool = True) -> str:
    """A statistic's 95% interval over seeds, "n/a" with one seed (never a zero-width band)."""
    if st["n"] < 2 or math.isnan(st["ci95"]):
        return "n/a (one seed)"
    f = f"{'+' if signed else ''}.{digits}f"
    return f"{st['mean'] - st['ci95']:{f}} to {st['mean'] + st['ci95']:{f}}"


def _fmt(st: dict, digits: int = 4, suffix: str = "") -> str:
    if st["n"] < 2 or math.isnan(st["std"]):
        return f"{st['mean']:.{digits}f}{suffix}"
    return f"{st['mean']:.{digits}f}{suffix} ± {st['std']:.{digits}f}"


def write_compare_markdown(rep: dict, path: Path) -> None:
    """report.md of one compare length: verdict, setup, the runs' results, the measures."""
    t = rep["config"]["tst"]
    lines = [
        f"# superpose compare: TST ({tst_label(t)}) vs the matched-FLOPs baseline",
        "",
        f"Date {rep['date']}. Seeds {', '.join(map(str, rep['seeds']))}. Values are mean ± sample std over seeds.",
        "",
        "## Verdict",
        "",
        *[f"- {v}" for v in rep["verdicts"]],
        "",
        *_setup_lines(rep),
        *_result_lines(rep),
        *_measure_lines(rep),
        "",
        f"Iso-loss kinds per seed: {', '.join(rep['iso_loss_kinds'])} (interpolated between baseline lengths, or a "
        "bound when TST's loss lies outside them).",
        "",
        "![loss vs time](loss_vs_time.png)",
        "",
        "![loss vs step](loss_vs_step.png)",
        "",
        "![loss vs tokens](loss_vs_tokens.png)",
        "",
    ]
    write_report(path, "\n".join(lines))


def _setup_lines(rep: dict) -> list[str]:
    """report.md's setup: model, data, training, baseline lengths, noise control, machine, command."""
    cfg = rep["config"]
    m, d, o, tr = cfg["model"], cfg["data"], cfg["optim"], cfg["train"]
    env = rep["environment"]
    return [
        "## Setup",
        "",
        f"- model: d={m['dim']}, {m['n_layers']} layers, {m['n_heads']} heads ({m['n_kv_heads']} kv), "
        f"FFN {m['ffn_dim']}, vocab {m['vocab_size']}, tied={m['tie_embeddings']}",
        f"- data: {d['path'] or d.get('mix') or 'default corpus'}, L={d['seq_len']}, "
        f"{d['val_tokens']} validation tokens",
        f"- train: {tr['steps']} steps of {tr['batch_size']} rows, AdamW lr {o['lr']} (betas {o['beta1']}, "
        f"{o['beta2']}, wd {o['weight_decay']}), WSD warmup {o['warmup_steps']}, last {o['decay_frac']:.0%} "
        f"decayed ({o['decay_shape']}), dtype {tr['dtype']}",
        f"- baseline lengths (each read after its own decay): {', '.join(map(str, rep['baseline_lengths']))} steps",
        f"- noise control: {rep['how_noise_is_controlled']}",
        f"- machine: {env['platform']}, {env['cpu_count']} CPUs, torch {env['torch']} ({env['threads']} threads), "
        f"Python {env['python']}" + (f", GPU {env['cuda']}" if env.get("cuda") else ""),
        f"- command: `{rep['command']}`" if rep["command"] else "",
        "",
    ]


def _result_lines(rep: dict) -> list[str]:
    """report.md's results table: TST, every baseline length, other baselines, the TST grid's cells."""
    tr = rep["config"]["train"]
    lines = [
        "## Results",
        "",
        "| run | steps | final val loss | val bits/byte | train wall clock (s) | raw tokens read |",
        "|---|---|---|---|---|---|",
    ]
    a = rep["arms"]["tst"]
    lines.append(f"| TST | {tr['steps']} | {_fmt(a['val_loss'])} | {_fmt(a['val_bpb'])} | "
                 f"{_fmt(a['train_time_s'], 1)} | {a['tokens_seen']['mean']:,.0f} |")
    for n in rep["baseline_lengths"]:
        b = rep["arms"]["baseline"][str(n)]
        mark = " (equal steps)" if n == tr["steps"] else ""
        lines.append(f"| baseline{mark} | {n} | {_fmt(b['val_loss'])} | {_fmt(b['val_bpb'])} | "
                     f"{_fmt(b['train_time_s'], 1)} | {b['tokens_seen']['mean']:,.0f} |")
    for name, st in rep.get("baselines_val_loss", {}).items():
        if name != "own":
            lines.append(f"| baseline {name} | {tr['steps']} | {_fmt(st)} | | | |")
    grid = rep.get("tst_grid", {"cells": {}})
    for name, st in grid["cells"].items():  # TST is the best of these; the row above repeats it in full
        lines.append(f"| TST {name}{' (best: the TST above)' if name == grid['best'] else ''} | {tr['steps']} | "
                     f"{_fmt(st)} | | | |")
    return lines


def _measure_lines(rep: dict) -> list[str]:
    """report.md's measures table: the gains and speedups with their intervals and per-seed values."""
    lines = [
        "",
        "| measure | mean ± std | 95% interval | per seed |",
        "|---|---|---|---|",
    ]
    if len(rep.get("baselines_val_loss", {})) > 1:
        b = rep["best_baseline_gain"]
        lines.append(f"| gain vs the best baseline ({rep['best_baseline']}) (nats) | {_fmt(b, 4)} | {interval(b)} | "
                     f"{', '.join(f'{v:+.4f}' for v in b['values'])} |")
        if "best_baseline_iso_loss_kinds" in rep:
            for key, what in (("best_baseline_iso_loss_step_ratio", "steps"), ("best_baseline_iso_loss_speedup",
                                                                                "wall clock")):
                st, kinds = rep[key], set(rep["best_baseline_iso_loss_kinds"])
                bound = "" if kinds == {"interpolated"} else " (bound, see the verdict)"
                lines.append(f"| iso-loss speedup vs the best baseline, {what} (x){bound} | {_fmt(st, 3)} | "
                             f"{interval(st, 3, signed=False) if not bound else 'n/a (bound)'} | "
                             f"{', '.join(f'{v:.3f}' for v in st['values'])} |")
    for key, label, digits in (("equal_steps_loss_gain", "equal-steps loss gain (nats)", 4),
                               ("iso_loss_speedup", "iso-loss speedup, wall clock (x)", 3),
                               ("iso_loss_step_ratio", "iso-loss speedup, steps (x)", 3),
                               ("equal_steps_time_ratio", "baseline / TST time at equal steps", 3)):
        st = rep[key]
        ci = interval(st, digits, signed=key == "equal_steps_loss_gain")
        bound = {"upper_bound": "<= ", "lower_bound": ">= "}
        kinds = set(rep["iso_loss_kinds"])
        if key.startswith("iso_loss") and kinds != {"interpolated"}:  # a bound is not a measurement: say so
            label += " (bound: " + (bound[kinds.pop()] if len(kinds) == 1 else "mixed kinds, see below") + ")"
            ci = "n/a (bound)"
        lines.append(f"| {label} | {_fmt(st, digits)} | {ci} | {', '.join(f'{v:.{digits}f}' for v in st['values'])} |")
    return lines


def plot_sweep(grid: dict, path: Path, title: str) -> None:
    """Heat map of the mean gain over the baseline (nats; positive = TST better) by r (rows) x s."""
    ratios, sizes = grid["ratios"], grid["bag_sizes"]
    import numpy as np

    gain = np.full((len(ratios), len(sizes)), np.nan)
    for cell in grid["cells"]:
        if cell.get("gain") is not None:
            gain[ratios.index(cell["ratio"]), sizes.index(cell["bag_size"])] = cell["gain"]["mean"]
    fig, ax = plt.subplots(figsize=(1.2 * len(sizes) + 2.5, 0.7 * len(ratios) + 2))
    lim = np.nanmax(np.abs(gain)) if np.isfinite(gain).any() else 1.0
    im = ax.imshow(gain, cmap="RdBu", vmin=-lim, vmax=lim, aspect="auto")
    for i in range(len(ratios)):
        for j in range(len(sizes)):
            if np.isfinite(gain[i, j]):
                dark = abs(gain[i, j]) > 0.6 * lim  # white text on the deep colours
                ax.text(j, i, f"{gain[i, j]:+.3f}", ha="center", va="center", fontsize=8,
                        color="white" if dark else "black")
    ax.set_xticks(range(len(sizes)), [str(s) for s in sizes])
    ax.set_yticks(range(len(ratios)), [str(r) for r in ratios])
    ax.set_xlabel("bag size s")
    ax.set_ylabel("ratio r")
    ax.set_title(title, fontsize=9)
    fig.colorbar(im, ax=ax, label="baseline loss - TST loss (nats)")
    fig.tight_layout()
    save_figure(fig, path)
    plt.close(fig)

