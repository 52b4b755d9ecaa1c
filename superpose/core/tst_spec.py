"""What a TST run asks for, in one place: `TSTSpec`, its checks and its phase plan.

Every front-end reads its TST settings through this one dataclass: superpose's own config (the
`tst` section, `--tst.<field>`), the Hugging Face `TSTTrainer(tst=TSTSpec(...))` and torchtitan's
`TSTTrainer.Config.tst` (`--tst.<field>` on its command line). So a new TST option is one field
here, one check in `problems`, and its use in `tst_step.tst_loss` or `tst_step.switch`; every
front-end then has it, with the same default and the same message when it is wrong.

    spec.problems()        every invalid field, as 'tst.field: what is allowed, what was given'
    spec.phases(steps)     the run's phases (core/schedule.py `build_phases`)
    spec.phase_loss(phase) the bag loss's name for a phase (`losses.MCE` when it has one target)
"""

from __future__ import annotations

from dataclasses import dataclass

from .losses import LOSSES, MCE
from .schedule import Phase, build_phases, parse_stages
from .superposition import WEIGHT_SCHEMES, Mode
from .tst_step import REINIT


@dataclass
class TSTSpec:
    bag_size: int = 4
    """s: raw tokens averaged into one position in phase 1. 1 disables TST."""
    ratio: float = 0.3
    """r: fraction of optimizer steps spent in phase 1 (paper: 0.2-0.4). 0 disables TST."""
    weights: str = "uniform"
    """Per-slot weights of the multi-hot loss: uniform, power (1/i), exp (e^-i), or mi: fitted to
    the corpus's token-pair mutual information (`superpose mi`; see `mi_bag_weights`)."""
    mode: str = Mode.FULL.value
    """Which side phase 1 bags (paper §5.2): full (the method), input (bagged input, predict the
    first token of the next bag) or output (ordinary token input, predict the next s tokens)."""
    loss: str = MCE.name
    """The bag loss: mce (the paper's multi-hot cross-entropy) or mce_alt (-log of the probability
    mass on the bag, paper App. C.2)."""
    schedule: str = ""
    """A bag-size curriculum, "8:0.1,4:0.1,2:0.1": stages of bag size : fraction of the steps, then
    next-token training. Replaces bag_size and ratio; empty means one stage of bag_size for ratio."""
    reset_optimizer: bool = False
    """At the switch to next-token training, drop the optimizer state (AdamW's moments and step
    count) and start it afresh (the AOMTS ablation: it hurt there)."""
    reinit: str = "none"
    """At the switch to next-token training, re-draw these weights from their initial distribution
    (paper Table 2: it wipes out the gain): none, embeddings, head or both. Their optimizer
    state is reset too."""

    def problems(self) -> list[str]:
        """Every invalid field, as 'tst.field: what is allowed, what was given'."""
        out = []

        def need(ok: bool, msg: str) -> None:
            if not ok:
                out.append(msg)

        need(self.bag_size >= 1, f"tst.bag_size: must be an integer >= 1 (1 disables TST), got {self.bag_size}")
        need(0.0 <= self.ratio <= 1.0, f"tst.ratio: must be in [0, 1] (0 disables TST), got {self.ratio}")
        need(self.weights in WEIGHT_SCHEMES,
             f"tst.weights: must be one of {', '.join(WEIGHT_SCHEMES)}, got {self.weights!r}")
        need(self.mode in list(Mode), f"tst.mode: must be one of {', '.join(Mode)}, got {self.mode!r}")
        need(self.loss in LOSSES, f"tst.loss: must be one of {', '.join(LOSSES)}, got {self.loss!r}")
        need(self.reinit in REINIT, f"tst.reinit: must be one of {', '.join(REINIT)}, got {self.reinit!r}")
        if self.mode == Mode.INPUT:  # one target per position: nothing for slot weights or a bag loss to act on
            need(self.weights == "uniform", f"tst.weights={self.weights} weighs the slots of a target bag, but "
                 "tst.mode=input predicts one token per position; drop it or use tst.mode=full/output")
            need(self.loss == MCE.name, "tst.loss=mce_alt scores a target bag, but tst.mode=input predicts one token "
                 "per position (where it equals plain cross-entropy); drop it or use tst.mode=full/output")
        if self.schedule:
            try:
                parse_stages(self.schedule)
            except ValueError as e:
                out.append(f"tst.schedule: {e}; write it as BAG:FRACTION,... e.g. 8:0.1,4:0.1,2:0.1")
        return out

    def phases(self, steps: int) -> list[Phase]:
        """The phases of a run of `steps` optimizer steps (0-based): the curriculum `schedule`,
        or one stage of `bag_size` for `ratio` of them, then next-token training."""
        stages = parse_stages(self.schedule) if self.schedule else None
        return build_phases(steps, self.ratio, self.bag_size, self.mode, stages)

    def phase_loss(self, phase: Phase) -> str:
        """The bag loss of `phase`: `loss`, or MCE (plain cross-entropy) for one target per position."""
        return self.loss if phase.target_bag > 1 else MCE.name
