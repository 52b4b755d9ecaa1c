"""`python -m superpose.titan.train --module superpose.titan --config NAME [torchtitan flags]`

torchtitan's own entry point (`torchtitan.train.main`), with `compat` applied first: on a machine
without an accelerator it trains on the CPU with gloo (torchtitan alone would pick CUDA), and on
stable torch it gets the one torch-nightly call it makes. Started without torchrun it runs as
one process (rank 0 of 1). A user error (a refused setting, a missing data directory) is one line
and exit 1, no traceback. With a GPU and torch nightly,
`torchrun -m torchtitan.train --module superpose.titan --config NAME` is the same run.
"""

from __future__ import annotations

import os
import socket
import sys

from ..errors import UserError
from .compat import accelerator_present, ensure_torch_api, use_cpu


def single_process_env() -> None:
    """Without torchrun: the environment of a one-process torchrun (rank 0 of 1, a free local port)."""
    if "LOCAL_RANK" in os.environ:
        return
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    for k, v in dict(RANK="0", WORLD_SIZE="1", LOCAL_RANK="0", LOCAL_WORLD_SIZE="1", MASTER_ADDR="127.0.0.1",
                     MASTER_PORT=str(port)).items():
        os.environ.setdefault(k, v)


def main() -> None:
    single_process_env()
    if not accelerator_present():
        use_cpu()
    ensure_torch_api()
    from torchtitan.train import main as titan_main

    try:
        titan_main()
    except UserError as e:
        sys.exit(f"superpose.titan: {e}")


if __name__ == "__main__":
    main()
