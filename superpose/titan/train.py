"""`python -m superpose.titan.train --module superpose.titan --config NAME [torchtitan flags]`

torchtitan's own entry point (`torchtitan.train.main`), with `compat` applied first: on a machine
without an accelerator it trains on the CPU with gloo (torchtitan alone would pick CUDA), and on
stable torch it gets the one torch-nightly call it makes. With a GPU and torch nightly,
`torchrun -m torchtitan.train --module superpose.titan --config NAME` is the same run.
"""

from __future__ import annotations

from .compat import accelerator_present, ensure_torch_api, use_cpu


def main() -> None:
    if not accelerator_present():
        use_cpu()
    ensure_torch_api()
    from torchtitan.train import main as titan_main

    titan_main()


if __name__ == "__main__":
    main()
