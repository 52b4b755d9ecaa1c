"""TST inside torchtitan: `--module superpose.titan` (the optional extra `superpose[titan]`).

    torchrun --nproc-per-node 8 -m torchtitan.train --module superpose.titan --config tst_llama3_270m
    python -m superpose.titan.train --module superpose.titan --config tst_llama3_debug   # also on a CPU, no torchrun

torchtitan's config manager imports `superpose.titan.config_registry` and calls the named
function, which returns a `TSTTrainer.Config`: torchtitan's own `Trainer.Config` with a `tst`
section (s, r, bag weights, mode, loss, curriculum). The run is then torchtitan's trainer,
parallelisms and DCP checkpoints, with TST's two changes, both taken from superpose's core:

    arch.py             superpose architecture -> torchtitan model (one dict, `TITAN_MODELS`)
    trainer.py          TSTTrainer: rows of s*L tokens in phase 1, the bag-mean hook on the
                        embedding, the switch inside the run, the refusals (CP, TP, PP)
    loss.py             MultiHotLoss: superpose's multi-hot next-bag loss as a torchtitan loss,
                        chunked through torchtitan's ChunkedLossWrapper
    config_registry.py  the configs (debug, the paper's 270M, the 10B-A1B MoE)
    compat.py           the version check and every private torchtitan name; running torchtitan
                        0.3.0 on a CPU (gloo) and on stable torch
    data.py             a superpose data directory as torchtitan's dataloader (pre-tokenized shards)
    export.py           a TST checkpoint -> a Hugging Face folder, by the plan the run recorded
    train.py            `python -m superpose.titan.train`: torchtitan.train with compat applied

Nothing here is imported by `import superpose`; importing this package needs torchtitan, and
checks its version first (compat.SUPPORTED_TORCHTITAN; another one is refused in one line).
"""

import sys

from .compat import TitanVersionError, check_version

try:
    check_version()
except TitanVersionError as e:
    # superpose's own entry points (python -m superpose.titan.train / .export, also under torchrun)
    # say it in one line; importers get the exception.
    argv = getattr(sys, "orig_argv", [])
    if any(a == "-m" and b in ("superpose.titan.train", "superpose.titan.export") for a, b in zip(argv, argv[1:])):
        raise SystemExit(f"superpose.titan: {e}") from None
    raise
