"""Issue 30: compare tunes both arms (--baseline-grid, --tst-grid), names the winning cell of each
grid, and says when a grid's best cell is on its edge.

Run: .venv/bin/pytest tests/test_grid.py
"""

import json

import pytest

from superpose.cli import main
from superpose.errors import UserError
from superpose.experiments.baselines import grid_edges, parse_grid
from superpose.experiments.compare import compare

from conftest import tiny_config
from test_trainer import records, train


def test_parse_grid_is_every_combination_in_the_given_order():
    cells = parse_grid("optim.lr=1e-3,2e-3; model.init=torch,normal", "--baseline-grid")
    assert [c.name for c in cells] == ["optim.lr=1e-3,model.init=torch", "optim.lr=1e-3,model.init=normal",
                                       "optim.lr=2e-3,model.init=torch", "optim.lr=2e-3,model.init=normal"]
    assert cells[3].overrides == (("optim.lr", "2e-3"), ("model.init", "normal"))
    assert {c.source for c in cells} == {"--baseline-grid"}
    assert [c.name for c in parse_grid("tst.bag_size=2,4", "--tst-grid", tst=True)] == ["tst.bag_size=2",
                                                                                        "tst.bag_size=4"]
    assert parse_grid(None, "--tst-grid") == [] and parse_grid(" ", "--tst-grid") == []


@pytest.mark.parametrize("text, match", [
    ("optim.lr", "section.field=value"), ("lr=1e-3", "section.field=value"), ("optim.lr=1e-3,", "section.field"),
    ("optim.lr=1e-3;optim.lr=2e-3", "names optim.lr twice"), ("optim.lr=1e-3,1e-3", "given twice"),
    ("tst.ratio=0.2,0.3", "--tst-grid"), ("data.seq_len=8,16", "fixed for every cell"),
    ("train.steps=8,16", "fixed for every cell"), ("model.dim=8,16", "fixed for every cell")])
def test_parse_grid_refuses_in_one_line(text, match):
    with pytest.raises(UserError, match=match):
        parse_grid(text, "--baseline-grid")


def test_grid_edges_names_a_best_cell_on_a_numeric_edge_only():
    cells = parse_grid("optim.lr=1e-3,2e-3,3e-3;model.init=torch,normal", "--baseline-grid")
    loss = {c.name: 4.0 for c in cells}
    loss["optim.lr=2e-3,model.init=normal"] = 3.9  # an interior optimum: nothing to widen
    assert grid_edges(loss, cells) == []
    loss["optim.lr=1e-3,model.init=torch"] = 3.8  # the lowest rate wins: widen downward
    assert grid_edges(loss, cells) == ["optim.lr=1e-3 is the lowest of 3 values tried"]
    loss["optim.lr=3e-3,model.init=normal"] = 3.7
    assert grid_edges(loss, cells) == ["optim.lr=3e-3 is the highest of 3 values tried"]
    assert grid_edges({}, cells) == []


def test_compare_tunes_both_arms_and_reports_the_winning_cells(tiny_data, tmp_path):
    """Each TST cell is one more TST arm, bit for bit the straight TST run with its overrides; TST
    is the cell with the lowest mean loss, and the gains are that cell's, paired by seed. A baseline
    cell equal to the own baseline is run once."""
    cfg = tiny_config(tiny_data, train__eval_every=4)
    lines = []
    rep = compare(cfg, tmp_path / "cmp", seeds=[0, 1], factors=(1.0,), log=lines.append,
                  baselines=parse_grid(f"optim.lr={cfg.optim.lr},0.02", "--baseline-grid"),
                  tst_grid=parse_grid("optim.lr=0.02;tst.bag_size=2,4", "--tst-grid", tst=True))
    assert any(f"optim.lr={cfg.optim.lr} is the own baseline already" in line for line in lines)
    assert set(rep["baselines_val_loss"]) == {"own", "optim.lr=0.02"}
    cells = rep["tst_grid"]["cells"]
    assert len(cells) == 2
    seeds = [json.loads((tmp_path / "cmp" / f"seed-{k}" / "result.json").read_text())["tst_cells"]["8"]
             for k in (0, 1)]
    losses = {c: [s[c]["tst"]["val_loss"] for s in seeds] for c in cells}
    best = min(losses, key=lambda c: sum(losses[c]))
    assert rep["tst_grid"]["best"] == best and cells[best]["values"] == losses[best]
    assert rep["arms"]["tst"]["val_loss"]["values"] == losses[best]
    own = [next(b for b in s[best]["baseline"] if b["steps"] == 8)["val_loss"] for s in seeds]
    assert rep["equal_steps_loss_gain"]["values"] == pytest.approx([b - t for b, t in zip(own, losses[best])])
    bb = rep["best_baseline"]
    bl = rep["baselines_val_loss"][bb]["values"]
    assert rep["best_baseline_gain"]["values"] == pytest.approx([b - t for b, t in zip(bl, losses[best])])
    # A TST cell is the straight TST run with its overrides, bit for bit.
    straight = train(tiny_config(tiny_data, train__eval_every=4, train__seed=1, optim__lr=0.02, tst__bag_size=2),
                     tmp_path / "straight")
    got = records(tmp_path / "cmp" / "seed-1" / "tst-optim.lr=0.02+tst.bag_size=2", "train")
    assert [r["loss"] for r in got] == [r["loss"] for r in records(straight.run_dir, "train")]
    assert rep["verdicts"][0].startswith(f"TST is the best of 2 --tst-grid cells: {best}")
    text = (tmp_path / "cmp" / "report.md").read_text()
    assert f"| TST {best} (best: the TST above) |" in text
    # A rerun with another TST grid would mix cells: refused in one line, the seeds kept.
    with pytest.raises(UserError, match="--tst-grid"):
        compare(cfg, tmp_path / "cmp", seeds=[0, 1], factors=(1.0,), log=lambda m: None,
                baselines=parse_grid(f"optim.lr={cfg.optim.lr},0.02", "--baseline-grid"),
                tst_grid=parse_grid("optim.lr=0.005", "--tst-grid", tst=True))
    assert (tmp_path / "cmp" / "seed-0" / "result.json").is_file()


def test_cli_grid_flags_refuse_bad_cells_before_training(tiny_data, tmp_path, capsys):
    base = ["compare", "--preset", "cpu-smoke", "--data.path", str(tiny_data), "--out", str(tmp_path / "c"),
            "--seeds", "1", "--baseline-lengths", "1"]
    for extra, match in ((["--tst-grid", "tst.ratio=0"], "--tst-grid cell tst.ratio=0 has none"),
                         (["--baseline-grid", "optim.lr=-1,1e-3"], "--baseline-grid optim.lr=-1")):
        assert main(base + extra) == 2
        err = capsys.readouterr().err.strip().splitlines()
        assert len(err) == 1 and match in err[0], err
    assert not (tmp_path / "c" / "seed-0").exists()


def test_sigint_stops_a_compare_after_its_round_with_every_arm_saved_and_its_command_continues(
        tiny_data, tmp_path, capsys, monkeypatch):
    """Ctrl-C mid-seed, with no checkpoint of the arms' own due (checkpoint.every=0): the round
    finishes, every arm saves one at the same step, exit 130 with one line that names the command
    to go on (after the progress log); that command ends with an uninterrupted compare's losses. A second Ctrl-C stops at once."""
    import os
    import signal
    from superpose.training import Trainer

    def args(out):
        return ["compare", "--preset", "cpu-smoke", "--data.path", str(tiny_data), "--out", str(out), "--seeds", "1",
                "--baseline-lengths", "1", "--steps", "12", "--checkpoint.every=0", "--train.eval_every=4"]

    assert main(args(tmp_path / "whole")) == 0
    real, calls = Trainer.step_once, []

    def signalled(self, at=(9,)):  # the TST arm's 5th step of round 5; the baseline's 5th ends the round
        calls.append(1)
        if len(calls) in at:
            os.kill(os.getpid(), signal.SIGINT)
        return real(self)

    monkeypatch.setattr(Trainer, "step_once", signalled)
    capsys.readouterr()
    assert main(args(tmp_path / "cut")) == 130
    err = capsys.readouterr().err  # the progress log, then one line from superpose and no traceback
    last = err.strip().splitlines()[-1]
    assert last.startswith("superpose: compare stopped by SIGINT during seed 0") and "Traceback" not in err, err
    assert f"continue with: superpose compare --preset cpu-smoke --data.path {tiny_data}" in last, last
    saved = sorted(p.relative_to(tmp_path / "cut" / "seed-0").parts[::2] for p in
                   (tmp_path / "cut" / "seed-0").glob("*/checkpoints/step-*"))
    assert saved == [("baseline-12", "step-000005"), ("tst", "step-000005")], saved

    monkeypatch.setattr(Trainer, "step_once", real)
    assert main(args(tmp_path / "cut")) == 0
    assert "continuing its arms from their checkpoints" in capsys.readouterr().err
    whole, cut = (json.loads((tmp_path / d / "report.json").read_text()) for d in ("whole", "cut"))
    for r in (cut, whole):  # the two arms' final losses, each seed's values
        r["losses"] = r["arms"]["tst"]["val_loss"]["values"], r["arms"]["baseline"]["12"]["val_loss"]["values"]
    assert cut["losses"] == whole["losses"]

    # In the seed's last round: not lost to the next seed; every arm is saved at its end, so the
    # command steps nothing again and writes the seed's result.
    calls.clear()
    monkeypatch.setattr(Trainer, "step_once", lambda self: signalled(self, at=(24,)))
    assert main(args(tmp_path / "last")) == 130
    assert "compare stopped by SIGINT during seed 0" in capsys.readouterr().err
    monkeypatch.setattr(Trainer, "step_once", lambda self: pytest.fail("a finished arm stepped again"))
    assert main(args(tmp_path / "last")) == 0
    assert json.loads((tmp_path / "last" / "report.json").read_text())["arms"]["tst"]["val_loss"]["values"] == \
        whole["arms"]["tst"]["val_loss"]["values"]

    # Two signals: the second stops at once, mid-round, without saving; one line, exit 130.
    calls.clear()
    monkeypatch.setattr(Trainer, "step_once", lambda self: signalled(self, at=(3, 4)))
    assert main(args(tmp_path / "twice")) == 130
    err = capsys.readouterr().err
    last = err.strip().splitlines()[-1]
    assert "stopped at once by a second SIGINT during seed 0, without saving" in last and "Traceback" not in err, err
    assert not list((tmp_path / "twice" / "seed-0").glob("*/checkpoints/step-*"))


def test_an_interrupted_compare_continues_its_arms_bit_for_bit(tiny_data, tmp_path, monkeypatch):
    """A compare stopped mid-seed (after a decay branch was taken) continues every arm from its
    checkpoints when rerun, and ends with the losses of an uninterrupted compare, each step logged once."""
    from superpose.training import Trainer

    cfg = tiny_config(tiny_data, train__eval_every=4, checkpoint__every=2)
    kw = dict(seeds=[0], factors=(0.5, 1.0), log=lambda m: None, baselines=parse_grid("optim.lr=0.02", "--baseline-grid"))
    whole = compare(cfg, tmp_path / "whole", **kw)
    real, calls = Trainer.step_once, []

    def dies(self):  # the 21st optimizer step of the seed: the arms at step 6, the branches done
        calls.append(1)
        if len(calls) == 21:
            raise RuntimeError("killed")
        return real(self)

    monkeypatch.setattr(Trainer, "step_once", dies)
    with pytest.raises(RuntimeError, match="killed"):
        compare(cfg, tmp_path / "cut", **kw)
    assert (tmp_path / "cut" / "seed-0" / "baseline-4" / "checkpoints").is_dir()  # a branch begun before the kill
    monkeypatch.setattr(Trainer, "step_once", real)
    lines = []
    again = compare(cfg, tmp_path / "cut", **{**kw, "log": lines.append})
    assert any("continuing its arms from their checkpoints" in line for line in lines)
    for key in ("val_loss", "val_bpb", "tokens_seen"):  # wall clocks differ, nothing else
        assert again["arms"]["tst"][key]["values"] == whole["arms"]["tst"][key]["values"]
        for n in ("4", "8"):
            assert again["arms"]["baseline"][n][key]["values"] == whole["arms"]["baseline"][n][key]["values"]
    assert again["baselines_val_loss"]["optim.lr=0.02"]["values"] == whole["baselines_val_loss"]["optim.lr=0.02"]["values"]
    for arm in ("tst", "baseline-8", "baseline-4", "baseline-optim.lr=0.02-4"):
        got = records(tmp_path / "cut" / "seed-0" / arm, "train")
        assert [r["step"] for r in got] == sorted({r["step"] for r in got}), arm  # each step once
        assert [r["loss"] for r in got] == [r["loss"] for r in records(tmp_path / "whole" / "seed-0" / arm, "train")]
