"""Phase boundaries and the WSD learning rate at its edges.

Run: .venv/bin/pytest tests/test_schedule.py
"""

import pytest

from superpose.core.schedule import build_phases, lookup, wsd_lr


def test_phases_split_at_round_r_t():
    p1, p2 = build_phases(100, 0.3, 6)
    assert (p1.index, p1.bag_size, p1.start, p1.end) == (1, 6, 0, 30)
    assert (p2.index, p2.bag_size, p2.start, p2.end) == (2, 1, 30, 100)
    assert lookup([p1, p2], 29) is p1 and lookup([p1, p2], 30) is p2 and lookup([p1, p2], 99) is p2
    with pytest.raises(IndexError):
        lookup([p1, p2], 100)
    assert build_phases(7, 0.5, 2)[0].end == round(3.5)  # Python's round, as documented


@pytest.mark.parametrize("ratio,bag", [(0.0, 6), (0.3, 1), (0.01, 4)])
def test_baseline_is_a_single_next_token_phase(ratio, bag):
    phases = build_phases(20, ratio, bag)
    assert len(phases) == 1 and phases[0].bag_size == 1 and (phases[0].start, phases[0].end) == (0, 20)


def test_all_phase_one():
    phases = build_phases(10, 1.0, 3)
    assert len(phases) == 1 and phases[0].index == 1 and phases[0].end == 10


def test_wsd_boundaries():
    T, peak = 100, 1.0
    lr = [wsd_lr(k, T, peak, warmup_steps=10, decay_frac=0.2) for k in range(T)]
    assert lr[0] == pytest.approx(0.1) and lr[9] == pytest.approx(1.0)
    assert all(x == 1.0 for x in lr[10:80])  # stable
    assert lr[80] < 1.0 and lr[80] == pytest.approx(1 - 1 / 20)
    assert lr[-1] == pytest.approx(0.0)
    assert all(a >= b for a, b in zip(lr[79:], lr[80:]))  # monotone decay
    floor = wsd_lr(T - 1, T, 2.0, 0, 0.2, min_lr_ratio=0.1)
    assert floor == pytest.approx(0.2)
    for shape in ("cosine", "sqrt"):
        assert wsd_lr(T - 1, T, peak, 0, 0.2, decay_shape=shape) == pytest.approx(0.0, abs=1e-12)
        assert wsd_lr(79, T, peak, 0, 0.2, decay_shape=shape) == 1.0


def test_wsd_is_blind_to_phases():
    # One schedule over the whole run: the LR sequence of a TST run is the baseline's.
    lrs = [wsd_lr(k, 50, 3e-3, 5, 0.2) for k in range(50)]
    assert lrs == [wsd_lr(k, 50, 3e-3, 5, 0.2) for k in range(50)]
    assert lrs[14] == lrs[15] == 3e-3  # the switch of a r=0.3 run lands in the stable part
