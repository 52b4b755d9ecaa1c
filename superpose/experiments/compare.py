"""`superpose compare`: TST against the matched-FLOPs baseline, at equal steps and at equal loss.

For each seed, the TST arm and the baseline (r = 0) start from the same initial weights and the
same data order, with the same model, batch, schedule and evaluation tokens. The baseline's loss
at a length is only ever read *after its LR decay*, at several lengths (by default 0.5x to 2x
the TST run's steps). WSD makes this cheap: the baseline's stable phase runs once (the "trunk",
as long as the longest length) and a decay branches off it at each shorter length's decay start.
A branch is bit for bit the straight baseline run of that length.

All runs of a seed advance in lock-step, one optimizer step each in turn, in one process, so a
slow spell of the machine hits every arm alike. Each run's wall clock is the time spent in its
own training steps (`train_time_s`), without evaluation.

    equal_steps_loss_gain = baseline(1x) final val loss - TST final val loss
    iso_loss_speedup      = wall clock the decayed baseline needs to reach TST's final val loss,
                            interpolated linearly between lengths, / TST's wall clock
"""

from __future__ import annotations

import copy
import json
import math
import shutil
import time
from dataclasses import dataclass
from pathlib import Path
from collections.abc import Callable

from ..config import Config
from ..errors import UserError
from ..files import copy_file, lock_dir
from ..training import Trainer, build_trainer, resolve_data
from ..training.metrics import environment
from ..training.ownership import experiment_advice, mark_experiment
from .fingerprint import check_same_config
from .baselines import (OWN, Variant, apply_variant, baseline_name, best_baseline,  # noqa: F401
                        parse_baselines)
from .stats import clear_of_noise, crossover, iso_loss, speedup_text, stats  # noqa: F401 (also imported from here)

DEFAULT_LENGTHS = (0.5, 0.75, 1.0, 1.25, 1.5, 2.0)
_NEW_OUT = "use a new --out for other settings (finished seeds are reused only with the settings they were run with)"

def baseline_lengths(steps: int, factors: tuple[float, ...], decay_frac: float, warmup: int) -> list[int]:
    lengths = sorted({round(f * steps) for f in factors} | {steps})
    for n in lengths:
        if n - round(decay_frac * n) < warmup:
            raise UserError(f"baseline length {n} steps decays before its {warmup}-step warmup ends; drop the "
                            "shortest --baseline-lengths or lower --optim.warmup_steps")
    return lengths


@dataclass
class _Run:
    name: str
    trainer: Trainer


def _arm_config(cfg: Config, seed: int, steps: int, bag_size: int, ratio: float) -> Config:
    c = copy.deepcopy(cfg)
    c.train.seed, c.train.steps, c.tst.bag_size, c.tst.ratio = seed, steps, bag_size, ratio
    if ratio == 0 or bag_size == 1:  # the baseline: nothing of TST, curriculum included
        c.tst = type(c.tst)(bag_size=1, ratio=0.0)
    return c.validate()


def switch_evals(switch: int, eval_every: int, steps: int) -> set[int]:
    """Extra evaluation steps of a TST arm around its phase switch, so the curves show the jump and
    the recovery: the last phase-1 step, then 1, 2, 4, 8, ... steps into phase 2 until the next
    regular evaluation (or the end). Steps are 0-based, as in metrics.jsonl."""
    nxt = min(((switch // eval_every) + 1) * eval_every - 1, steps - 1) if eval_every else steps - 1
    out, k = {switch - 1}, 1
    while switch - 1 + k < nxt:
        out.add(switch - 1 + k)
        k *= 2
    regular = (lambda e: (e + 1) % eval_every == 0) if eval_every else (lambda e: False)
    return {e for e in out if 0 <= e < steps - 1 and not regular(e)}


def run_seed(cfg: Config, out: Path, seed: int, steps_list: list[int], factors: tuple[float, ...],
             log: Callable[[str], None], variants: list[Variant] = ()) -> dict:
    """Train the TST arm of every length and, for the compare's own config and each baseline
    variant, one baseline trunk + decay branches, all in lock-step.

    A trunk runs at the stable LR as far as the longest baseline length any TST length needs; each
    shorter baseline length branches off it where its own decay starts, so every baseline length
    costs only its decay steps. -> {"by_steps": {str(T): result of length T}}."""
    s, r, decay = cfg.tst.bag_size, cfg.tst.ratio, cfg.optim.decay_frac
    needs = {T: baseline_lengths(T, factors, decay, cfg.optim.warmup_steps) for T in steps_list}
    lengths = sorted(set().union(*needs.values()))
    ds = resolve_data(cfg)  # a data directory or a mixture (data.mix)
    quiet = lambda m: None  # noqa: E731 - the arms' own lines would interleave unreadably
    one = len(steps_list) == 1
    tsts = {T: build_trainer(_arm_config(cfg, seed, T, s, r), out / ("tst" if one else f"tst-{T}"), ds,
                             log if one else quiet) for T in steps_list}
    for T, t in tsts.items():  # see the jump at the switch and the recovery after it
        t.extra_evals = frozenset(switch_evals(t.schedule.switch_step, cfg.train.eval_every, T))
    trunk_steps = lengths[-1]
    runs = [_Run(f"tst-{T}", t) for T, t in tsts.items()]
    # One trunk per baseline (None: the compare's own config), each with its decay branches.
    trunks: dict[Trainer, tuple[Variant | None, dict[int, int]]] = {}
    for v in [None, *variants]:
        vcfg = apply_variant(_arm_config(cfg, seed, trunk_steps, 1, 0.0), v)
        trunk = build_trainer(vcfg, out / baseline_name(v, trunk_steps), ds, quiet)
        trunks[trunk] = (v, {n - round(decay * n): n for n in lengths[:-1]})  # trunk step -> branch length
        runs.append(_Run(baseline_name(v, trunk_steps), trunk))
    for run in runs:
        run.trainer.begin(progress=False)
    finished: dict[str, Trainer] = {}
    t0 = time.time()
    total_steps = sum(steps_list) + len(trunks) * (trunk_steps + sum(round(decay * n) for n in lengths[:-1]))
    done_steps, last_log = 0, time.time()
    while runs:
        for run in list(runs):
            t = run.trainer
            if t in trunks and t.state.step in trunks[t][1]:
                v, branch_at = trunks[t]
                n = branch_at.pop(t.state.step)
                # The trunk's whole state (weights, optimizer, run state, data position, RNG), copied.
                bcfg = apply_variant(_arm_config(cfg, seed, n, 1, 0.0), v)
                branch = build_trainer(bcfg, out / baseline_name(v, n), ds, quiet, state=copy.deepcopy(t.state_dict()))
                branch.run_dir.mkdir(parents=True, exist_ok=True)
                # The branch's log starts with the trunk's history: it is the full run of that length.
                copy_file(t.run_dir / "metrics.jsonl", branch.run_dir / "metrics.jsonl",
                          fix="free some space and run the same command again: finished seeds are kept")
                branch.begin(progress=False)
                runs.append(_Run(baseline_name(v, n), branch))
            t.step_once()
            done_steps += 1
            if t.state.step == t.cfg.train.steps:
                t.finish()
                finished[run.name] = t
                runs.remove(run)
        if time.time() - last_log > 30 or not runs:
            last_log = time.time()
            eta = (last_log - t0) / done_steps * (total_steps - done_steps)
            log(f"compare: seed {seed}: {done_steps}/{total_steps} steps of all runs, {last_log - t0:.0f}s, "
                f"eta {eta:.0f}s")
    # Every length reads its iso-loss point off all the decayed baselines the seed trained, not only
    # its own multiples: they are the same runs.
    return {"by_steps": {str(T): _seed_result(finished, tsts[T], lengths, variants) for T in steps_list},
            "baselines": [v.name for v in variants]}


def _records(trainer: Trainer, kind: str) -> list[dict]:
    lines = (trainer.run_dir / "metrics.jsonl").read_text().splitlines()
    return [r for r in map(json.loads, lines) if r["type"] == kind]


PHASE1_TAIL = 50
"""Phase-1 training steps averaged for the loss at the switch (one step's loss is noisy)."""


def _arm_facts(t: Trainer) -> dict:
    """What a finished arm read: raw tokens, epochs of the corpus, tokens per parameter."""
    train = _records(t, "train")
    n_all, n_body = t.model.num_params(), t.model.num_params(non_embedding=True)
    return {"tokens_seen": t.state.tokens_seen, "epochs": train[-1].get("epoch") if train else None,
            "params": n_all, "params_non_embedding": n_body, "tokens_per_param": t.state.tokens_seen / n_all,
            "tokens_per_param_non_embedding": t.state.tokens_seen / n_body}


def _baseline_entry(t: Trainer, n: int) -> dict:
    return {"steps": n, "val_loss": t.state.last_eval["val_loss"], "val_bpb": t.state.last_eval["val_bpb"],
            "train_time_s": t.state.train_time_s, **_arm_facts(t)}


def _seed_result(finished: dict[str, Trainer], tst: Trainer, lengths: list[int], variants: list[Variant] = ()) -> dict:
    T = tst.cfg.train.steps
    switch_step = tst.schedule.switch_step
    tst_curve = _records(tst, "eval")
    train = _records(tst, "train")
    switch_time = next(e["train_time_s"] for e in train if e["step"] == switch_step - 1)
    phase1 = [e["loss"] for e in train if e["step"] < switch_step][-PHASE1_TAIL:]
    base = [_baseline_entry(finished[baseline_name(None, n)], n) for n in lengths]
    tst_loss, tst_time = tst.state.last_eval["val_loss"], tst.state.train_time_s
    equal = next(b for b in base if b["steps"] == T)
    t_iso, kind = iso_loss(tst_loss, [(b["train_time_s"], b["val_loss"]) for b in base])
    s_iso, _ = iso_loss(tst_loss, [(b["steps"], b["val_loss"]) for b in base])
    others = {}
    for v in variants:
        b = _baseline_entry(finished[baseline_name(v, T)], T)
        others[v.name] = {**b, "equal_steps_loss_gain": b["val_loss"] - tst_loss}
    return {
        "tst": {"steps": T, "val_loss": tst_loss, "val_bpb": tst.state.last_eval["val_bpb"], "train_time_s": tst_time,
                "switch_step": switch_step, "switch_time_s": switch_time, "curve": tst_curve,
                "phase1_loss_at_switch": sum(phase1) / len(phase1), **_arm_facts(tst)},
        "baseline": base,
        "baseline_curve": _records(finished[baseline_name(None, lengths[-1])], "eval"),
        "variants": others,
        "equal_steps_loss_gain": equal["val_loss"] - tst_loss,
        "equal_steps_time_ratio": equal["train_time_s"] / tst_time,
        "iso_loss_speedup": t_iso / tst_time,
        "iso_loss_step_ratio": s_iso / T,
        "iso_loss_kind": kind,
    }


def check_lengths(steps: list[int], cfg: Config, factors: tuple[float, ...]) -> None:
    """Refuse a length list the scan cannot use, naming the fix (UserError -> one line, exit 2)."""
    if not steps or any(b <= a for a, b in zip(steps, steps[1:])):
        raise UserError(f"--steps must be strictly increasing run lengths, e.g. 300,600,1200; got "
                        f"{','.join(map(str, steps))}")
    r, warmup = cfg.tst.ratio, cfg.optim.warmup_steps
    for T in steps:
        if round(r * T) < 1 or round(r * T) >= T:
            raise UserError(f"a {T}-step run gives phase 1 {round(r * T)} of its {T} steps at r={r}; each length "
                            "needs both phases: drop it from --steps or change --ratio")
        if T - round(cfg.optim.decay_frac * T) < warmup:
            raise UserError(f"a {T}-step run decays before its {warmup}-step warmup ends; drop {T} from --steps "
                            "or lower --optim.warmup_steps")
        baseline_lengths(T, factors, cfg.optim.decay_frac, warmup)  # raises for a decay before warmup ends


def compare(cfg: Config, out: Path, seeds: list[int], factors: tuple[float, ...] = DEFAULT_LENGTHS,
            command: str = "", log: Callable[[str], None] = print, steps: list[int] | None = None,
            baselines: list[Variant] = ()) -> dict:
    """Run (or finish) every seed, then write report.json, report.md and the plots.

    `steps`: the TST run lengths to measure (default: cfg.train.steps alone). With several, each
    length gets its own report and plots under steps-T/, and the top level reports the gain as a
    function of length with the fitted trend and the crossover length.
    `baselines`: more baselines (`parse_baselines`), each one more trunk per seed in the same
    lock-step. Each length then also reports TST's gain against the best baseline: the one with
    the lowest mean final loss there, the compare's own config included."""
    baselines = list(baselines)
    for v in baselines:  # a bad value fails now, in one line, not after the first seed
        apply_variant(cfg, v)
    if cfg.schedule().switch_step == 0:
        raise UserError("compare needs a TST arm: set --bag-size >= 2 and --ratio > 0, or --tst.schedule (phase 1 "
                        "must get >= 1 step)")
    steps = list(steps or [cfg.train.steps])
    check_lengths(steps, cfg, factors)
    from .report import tst_label, write_report

    # One writer per experiment directory: the arms' run directories, the seeds' results and the
    # reports are written under this lock (an OS lock, dropped by the kernel if we die).
    with lock_dir(out, "compare directory"), experiment_advice("compare", out, command):
        mark_experiment(out, "compare", command)  # `train` keeps out of the whole tree from now on
        per_seed = {}
        for seed in seeds:
            seed_dir = out / f"seed-{seed}"
            done = seed_dir / "result.json"
            if done.is_file():
                per_seed[seed] = _reuse(done, seed, steps, factors, baselines)
                # Steps are checked by _reuse, and each seed sets its own train.seed.
                check_same_config(per_seed[seed].get("config"), cfg, f"seed {seed}", done, _NEW_OUT,
                                  ignore=("train.steps", "train.seed"))
                log(f"compare: seed {seed} already done, reusing {done}")
                continue
            shutil.rmtree(seed_dir, ignore_errors=True)  # an interrupted seed restarts from scratch
            lengths = sorted(set().union(*(baseline_lengths(T, factors, cfg.optim.decay_frac, cfg.optim.warmup_steps)
                                           for T in steps)))
            extra = f" and {len(baselines)} more baseline(s) ({'; '.join(v.name for v in baselines)})" if baselines else ""
            log(f"compare: seed {seed}: TST ({tst_label(cfg.to_dict()['tst'])}) at {', '.join(map(str, steps))} "
                f"steps and the baseline at {', '.join(map(str, lengths))} steps (one trunk){extra}, in lock-step")
            per_seed[seed] = {**run_seed(cfg, seed_dir, seed, steps, factors, log, baselines), "steps": steps,
                              "factors": list(factors), "config": cfg.to_dict()}  # checked when it is reused
            write_report(done, json.dumps(per_seed[seed], indent=1) + "\n")
        from .report import plot_compare, plot_gain_vs_length, write_compare_markdown, write_scan_markdown

        entropy = data_unigram_entropy(cfg)
        subs = []
        for T in steps:
            cfg_T = copy.deepcopy(cfg)
            cfg_T.train.steps = T
            by_seed = {k: per_seed[k]["by_steps"][str(T)] for k in seeds}
            lengths = sorted({b["steps"] for k in seeds for b in by_seed[k]["baseline"]})
            sub = summarize(cfg_T, by_seed, lengths, command, entropy)
            where = out if len(steps) == 1 else out / f"steps-{T}"
            where.mkdir(exist_ok=True)
            plot_compare(sub, by_seed, where)
            write_compare_markdown(sub, where / "report.md")
            subs.append(sub)
        if len(steps) == 1:
            report = subs[0]
            report["lengths"] = [_length_summary(report)]
        else:
            report = summarize_scan(cfg, subs, per_seed, command)
            plot_gain_vs_length(report, out / "gain_vs_length.png")
            write_scan_markdown(report, out / "report.md")
        report["baseline_factors"] = list(factors)
        report["baselines"] = [v.name for v in baselines]
        write_report(out / "report.json", json.dumps(report, indent=2) + "\n")
        for line in report["verdicts"]:
            log(f"compare: {line}")
        log(f"compare: report in {out / 'report.md'}" + (f", plots in {out}/loss_vs_*.png" if len(steps) == 1 else
                                                          f", gain vs length in {out / 'gain_vs_length.png'}"))
        return report


def _reuse(done: Path, seed: int, steps: list[int], factors: tuple[float, ...], baselines: list[Variant] = ()) -> dict:
    """A finished seed's results, if it measured every requested length with the same baselines."""
    data = json.loads(done.read_text())
    if "by_steps" not in data:  # written by a one-length compare before length scans existed
        data = {"by_steps": {str(data["tst"]["steps"]): data}, "steps": [data["tst"]["steps"]]}
    have = sorted(int(T) for T in data["by_steps"])
    if not set(steps) <= set(have) or ("factors" in data and data["factors"] != list(factors)):
        raise UserError(f"seed {seed} in {done.parent.parent} was run with --steps {','.join(map(str, have))} and "
                        f"--baseline-lengths {','.join(map(str, data.get('factors', [])))}; rerun with those, or "
                        "use a new --out for other lengths")
    had = data.get("baselines", [])
    if had != [v.name for v in baselines]:
        raise UserError(f"seed {seed} in {done.parent.parent} was run with --baselines "
                        f"{';'.join(had) or '(none)'!r}; rerun with that, or use a new --out for other baselines")
    return data


def data_unigram_entropy(cfg: Config) -> float | None:
    """The unigram entropy (nats) of the run's data directory, which the multi-hot loss of a model
    that learned no context sits at (measured by prepare, or now); None for a mixture."""
    if cfg.data.mix or not cfg.data.path:
        return None
    from ..data.mutual_info import unigram_entropy

    return unigram_entropy(Path(cfg.data.path))


STAT_KEYS = ("equal_steps_loss_gain", "iso_loss_speedup", "iso_loss_step_ratio", "equal_steps_time_ratio")


def _length_summary(sub: dict) -> dict:
    """One length's statistics, as the scan's report lists them."""
    return {"steps": sub["config"]["train"]["steps"], **{k: sub[k] for k in STAT_KEYS},
            "iso_loss_kinds": sub["iso_loss_kinds"], "tst_val_loss": sub["arms"]["tst"]["val_loss"],
            "baseline_val_loss": sub["arms"]["baseline"][str(sub["config"]["train"]["steps"])]["val_loss"],
            "best_baseline": sub["best_baseline"], "best_baseline_gain": sub["best_baseline_gain"],
            "baselines_val_loss": sub["baselines_val_loss"], "phase1_loss_at_switch": sub["phase1_loss_at_switch"],
            "unigram_entropy": sub["unigram_entropy"], "data_per_arm": sub["data_per_arm"],
            "verdicts": sub["verdicts"]}


def summarize_scan(cfg: Config, subs: list[dict], per_seed: dict, command: str) -> dict:
    seeds = sorted(per_seed)
    lengths = [_length_summary(sub) for sub in subs]
    gains = {k: [(int(T), per_seed[k]["by_steps"][str(T)]["equal_steps_loss_gain"]) for T in
                 [ln["steps"] for ln in lengths]] for k in seeds}
    rep = {"config": cfg.to_dict(), "command": command, "seeds": seeds, "steps": [ln["steps"] for ln in lengths],
           "lengths": lengths, "crossover": crossover(gains), "environment": environment(),
           "date": time.strftime("%Y-%m-%d")}
    if len(lengths[0]["baselines_val_loss"]) > 1:  # --baselines: the trend of the gain a user would see
        # best_baseline_gain's values are in sorted seed order, as `seeds`.
        best = {k: [(ln["steps"], ln["best_baseline_gain"]["values"][i]) for ln in lengths] for i, k in enumerate(seeds)}
        rep["best_crossover"] = crossover(best)
    rep["verdicts"] = scan_verdicts(rep)
    return rep


def scan_verdicts(rep: dict) -> list[str]:
    lines = []
    for ln in rep["lengths"]:
        g = ln["equal_steps_loss_gain"]
        lines.append(f"{ln['steps']} steps: gain {g['mean']:+.4f} nats ({clear_of_noise(g, 0.0)})")
        if len(ln.get("baselines_val_loss", {})) > 1:
            b = ln["best_baseline_gain"]
            lines.append(f"{ln['steps']} steps: gain against the best baseline ({ln['best_baseline']}) "
                         f"{b['mean']:+.4f} nats ({clear_of_noise(b, 0.0)})")
    lines += trend_lines(rep["crossover"], rep["steps"][-1], "")
    if rep.get("best_crossover"):
        lines += trend_lines(rep["best_crossover"], rep["steps"][-1], " against the best baseline")
    return lines


def trend_lines(c: dict, longest: int, against: str) -> list[str]:
    """The fitted trend of a gain with length, and where it crosses zero, as verdict lines."""
    slope = f"{c['b_per_decade']:+.3f} nats per 10x length"
    if not math.isnan(c["b_ci95"]):
        slope += f" (95% interval {c['b_per_decade'] - c['b_ci95']:+.3f} to {c['b_per_decade'] + c['b_ci95']:+.3f})"
    lines = [f"trend: the gain{against} changes by {slope}"]
    if c["estimate_steps"] is None:
        turns = f" (it crosses zero downward at ~{10 ** (-c['a'] / c['b_per_decade']):,.0f} steps)" if c["b_per_decade"] < 0 else ""
        lines.append(f"crossover{against}: none predicted: the fitted gain does not grow with run length" + turns)
    else:
        ci = c["ci95_steps"]
        if ci is None:
            where = "no interval (one seed)" if c["seeds"] < 2 else "the band excludes zero everywhere searched"
        else:
            lo = "below the search range" if ci[0] is None else f"{ci[0]:,.0f}"
            hi = f"beyond {c['search_range_steps'][1]:,.0f} (unbounded)" if ci[1] is None else f"{ci[1]:,.0f}"
            where = f"95% interval {lo} to {hi} steps"
        est = c["estimate_steps"]
        reach = "inside the measured lengths" if est <= longest else f"{est / longest:.1f}x the longest length run"
        lines.append(f"crossover{against} (gain = 0) predicted at {est:,.0f} steps ({reach}); {where}")
    return lines


def summarize(cfg: Config, per_seed: dict, lengths: list[int], command: str, unigram_entropy: float | None = None
              ) -> dict:
    seeds = sorted(per_seed)
    res = [per_seed[k] for k in seeds]
    arms = {
        "tst": {k: stats([r["tst"][k] for r in res]) for k in ("val_loss", "val_bpb", "train_time_s", "tokens_seen")},
        "baseline": {str(n): {k: stats([next(b for b in r["baseline"] if b["steps"] == n)[k] for r in res])
                              for k in ("val_loss", "val_bpb", "train_time_s", "tokens_seen")} for n in lengths},
    }
    out = {
        "config": cfg.to_dict(), "command": command, "seeds": seeds, "steps": cfg.train.steps,
        "baseline_lengths": lengths, "arms": arms,
        "equal_steps_loss_gain": stats([r["equal_steps_loss_gain"] for r in res]),
        "iso_loss_speedup": stats([r["iso_loss_speedup"] for r in res]),
        "iso_loss_step_ratio": stats([r["iso_loss_step_ratio"] for r in res]),
        "iso_loss_kinds": [r["iso_loss_kind"] for r in res],
        "equal_steps_time_ratio": stats([r["equal_steps_time_ratio"] for r in res]),
        "baseline_seed_spread": stats([next(b for b in r["baseline"] if b["steps"] == cfg.train.steps)["val_loss"]
                                       for r in res])["std"],
        "tst_seed_spread": arms["tst"]["val_loss"]["std"],
        "per_seed": {str(k): {key: per_seed[k][key] for key in ("equal_steps_loss_gain", "iso_loss_speedup",
                                                               "iso_loss_step_ratio", "iso_loss_kind")}
                     for k in seeds},
        "how_noise_is_controlled": (
            "per seed both arms start from the same initial weights and the same data order and are scored on the "
            "same validation tokens; all runs of a seed advance in lock-step (one optimizer step each in turn, one "
            "process), so machine noise hits every arm alike; wall clock is each run's own training-step time"),
        **best_baseline(per_seed),
        "phase1_loss_at_switch": stats([r["tst"]["phase1_loss_at_switch"] for r in res]),
        "unigram_entropy": unigram_entropy,
        "data_per_arm": _data_per_arm(res),
        "environment": environment(),
        "date": time.strftime("%Y-%m-%d"),
    }
    out["verdicts"] = verdicts(out)
    return out


def _data_per_arm(res: list[dict]) -> dict:
    """Tokens per parameter (all, non-embedding) and epochs of the corpus of each arm at this length
    (means over seeds: the counts are the same in every seed up to the loader's document order)."""
    T = res[0]["tst"]["steps"]
    arms = {"tst": [r["tst"] for r in res], OWN: [next(b for b in r["baseline"] if b["steps"] == T) for r in res]}
    for name in res[0].get("variants", {}):
        arms[name] = [r["variants"][name] for r in res]
    keys = ("tokens_seen", "epochs", "tokens_per_param", "tokens_per_param_non_embedding")
    return {arm: {k: sum(e[k] for e in entries) / len(entries) for k in keys if all(e.get(k) is not None for e in entries)}
            for arm, entries in arms.items()}


PLATEAU_BAND = 0.1
"""Nats around the unigram entropy that count as sitting on the plateau (a phase-1 loss's noise
over its last steps is a few hundredths on the default corpus)."""


def plateau_verdict(phase1_loss: float, entropy: float) -> str:
    """Where phase 1 ended relative to the unigram plateau (see `data.mutual_info.token_entropy`)."""
    if phase1_loss < entropy - PLATEAU_BAND:
        return "below the plateau, so phase 1 learned context"
    if phase1_loss <= entropy + PLATEAU_BAND:
        return "on the unigram plateau: phase 1 learned token frequencies only and has little to hand over"
    return "above the plateau: phase 1 ended before it had learned even the token frequencies"


def verdicts(rep: dict) -> list[str]:
    g, sp, st = rep["equal_steps_loss_gain"], rep["iso_loss_speedup"], rep["iso_loss_step_ratio"]
    n = g["n"]
    kinds = rep["iso_loss_kinds"]
    bounds = sorted(set(kinds) - {"interpolated"})
    lines = [
        f"equal steps: baseline - TST final val loss = {g['mean']:+.4f} nats ({'TST better' if g['mean'] > 0 else 'TST worse'}; "
        f"mean over {n} seeds, std {g['std']:.4f}; "
        f"per seed {', '.join(f'{v:+.4f}' for v in g['values'])}); baseline seed-to-seed std "
        f"{rep['baseline_seed_spread']:.4f}, TST {rep['tst_seed_spread']:.4f}: {clear_of_noise(g, 0.0)}",
        f"iso-loss speedup in wall clock: {speedup_text(sp, kinds)} (std {sp['std']:.2f}; per seed "
        f"{', '.join(f'{v:.2f}' for v in sp['values'])}): " + (clear_of_noise(sp, 1.0) if not bounds else "a bound, see below"),
        f"iso-loss ratio in steps: {speedup_text(st, kinds)} (std {st['std']:.2f})",
    ]
    if len(rep.get("baselines_val_loss", {})) > 1:
        b = rep["best_baseline_gain"]
        lines.append(f"against the best baseline ({rep['best_baseline']}, lowest mean final loss of "
                     f"{len(rep['baselines_val_loss'])} baselines): {b['mean']:+.4f} nats "
                     f"({'TST better' if b['mean'] > 0 else 'TST worse'}; per seed "
                     f"{', '.join(f'{v:+.4f}' for v in b['values'])}): {clear_of_noise(b, 0.0)}")
    p1, h = rep.get("phase1_loss_at_switch"), rep.get("unigram_entropy")
    if p1 is not None:
        vs = "" if h is None else f" vs the data's unigram entropy {h:.3f}: " + plateau_verdict(p1["mean"], h)
        lines.append(f"phase 1 ended at multi-hot loss {p1['mean']:.3f} (training loss, last {PHASE1_TAIL} steps){vs}")
    data = rep.get("data_per_arm", {})
    if data:
        lines.append("data: " + "; ".join(
            f"{arm} {d['tokens_per_param_non_embedding']:.1f} tokens per non-embedding parameter "
            f"({d['tokens_per_param']:.2f} per parameter), {d.get('epochs', float('nan')):.2f} epochs"
            for arm, d in data.items()))
    if bounds:
        lines.append("some seeds fell outside the baseline lengths run (" + ", ".join(bounds) + "): the speedup "
                     "there is a bound, not a measurement (lower_bound: even the longest baseline did not reach "
                     "TST's loss, so the speedup is at least this; upper_bound: even the shortest beat it, so it "
                     "is at most this)")
    return lines
