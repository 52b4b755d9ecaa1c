"""superpose.titan launched as a user launches it, through the switch, on CPU processes (gloo):

- the docs' single-process command, `python -m superpose.titan.train --module superpose.titan
  --config tst_llama3_debug`, without torchrun, reading a superpose data directory;
- a user error from that command: one line, exit 1, no traceback;
- HSDP (2 replicas x FSDP 2, 4 processes) on the Llama debug config;
- expert parallelism 2 with FSDP 2 (2 processes) on the Qwen3-MoE debug config.

A file of its own so pytest-xdist runs it beside tests/test_titan.py. Skipped without torchtitan.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

pytest.importorskip("torchtitan", reason="torchtitan is not installed (bash scripts/setup.sh installs it)")

# The docs' command (docs/torchtitan.md, "The one flag"); the tests add the data directory and a short run.
DOCS_COMMAND = "python -m superpose.titan.train --module superpose.titan --config tst_llama3_debug"
SHORT = ["--training.steps", "4", "--training.seq_len", "16", "--training.local_batch_size", "2", "--tst.ratio", "0.5",
         "--metrics.log_freq", "1", "--checkpoint.no-enable"]


def launch(args: list[str], tmp_path: Path, nproc: int = 0, timeout: int = 900) -> subprocess.CompletedProcess:
    env = {**os.environ, "OMP_NUM_THREADS": "1", "HF_DATASETS_OFFLINE": "1", "SUPERPOSE_CACHE": str(tmp_path / "c")}
    for k in ("RANK", "WORLD_SIZE", "LOCAL_RANK", "MASTER_ADDR", "MASTER_PORT"):
        env.pop(k, None)
    run = ([sys.executable, "-m", "torch.distributed.run", "--nproc-per-node", str(nproc), "--master-port",
            str(29000 + (os.getpid() + nproc) % 500)] if nproc else [sys.executable])
    return subprocess.run(run + ["-m", "superpose.titan.train", *args, "--dump_folder", str(tmp_path / "out")],
                          env=env, capture_output=True, text=True, timeout=timeout)


def test_docs_command_without_torchrun_reads_a_superpose_data_directory(tiny_data, tmp_path):
    assert "python -m superpose.titan.train" in (Path(__file__).parents[1] / "docs" / "torchtitan.md").read_text()
    args = DOCS_COMMAND.split()[3:] + ["--dataloader.path", str(tiny_data), *SHORT]
    out = launch(args, tmp_path)
    log = out.stdout + out.stderr
    assert out.returncode == 0, log[-3000:]
    assert "switches from superposition (s=4) to next-token (s=1)" in log
    assert "TST step  1: superposition (s=4)" in log and "TST step  4: next-token (s=1)" in log
    assert "Training completed" in log


def test_another_torchtitan_version_is_one_line(tmp_path):
    """A torchtitan other than 0.3.0 (a fake one, found first on the path) is refused in one line."""
    fake = tmp_path / "site" / "torchtitan-0.4.0.dist-info"
    fake.mkdir(parents=True)
    (fake / "METADATA").write_text("Metadata-Version: 2.1\nName: torchtitan\nVersion: 0.4.0\n")
    out = subprocess.run([sys.executable, "-m", "superpose.titan.train", *DOCS_COMMAND.split()[3:]],
                         env={**os.environ, "PYTHONPATH": str(tmp_path / "site")}, capture_output=True, text=True,
                         timeout=300)
    assert out.returncode == 1 and out.stdout == "", out.stderr[-3000:]
    assert out.stderr == ("superpose.titan: torchtitan 0.4.0 is installed; superpose.titan supports 0.3.0: "
                          "pip install torchtitan==0.3.0\n")


def test_a_user_error_is_one_line(tmp_path):
    out = launch(DOCS_COMMAND.split()[3:] + ["--dataloader.path", str(tmp_path / "nowhere")], tmp_path)
    assert out.returncode == 1
    assert "Traceback" not in out.stderr, out.stderr[-3000:]
    last = out.stderr.strip().splitlines()[-1]
    assert last.startswith("superpose.titan: --dataloader.path ") and "superpose prepare" in last, last


@pytest.mark.parametrize("name,nproc,config,flags", [
    ("hsdp", 4, "tst_llama3_debug", ["--parallelism.data_parallel_replicate_degree", "2",
                                     "--parallelism.data_parallel_shard_degree", "2"]),
    ("ep", 2, "tst_qwen3_moe_debug", ["--parallelism.data_parallel_shard_degree", "2",
                                      "--parallelism.expert_parallel_degree", "2"]),
])
def test_parallel_runs_through_the_switch(tiny_data, tmp_path, name, nproc, config, flags):
    """HSDP and EP=2 x FSDP=2 on CPU processes (torchrun, gloo), the way a user launches them."""
    out = launch(["--module", "superpose.titan", "--config", config, "--dataloader.path", str(tiny_data), *SHORT,
                  *flags, "--parallelism.spmd_backend", "partial_dtensor"], tmp_path, nproc=nproc)
    log = out.stdout + out.stderr
    assert out.returncode == 0, log[-4000:]
    assert log.count("switches from superposition (s=4) to next-token (s=1)") == nproc, log[-3000:]
    assert log.count("Training completed") == nproc
