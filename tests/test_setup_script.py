"""scripts/setup.sh's `pip check` rule, on a stand-in .venv (no network, no install): conflicts fail
setup and clear its stamp, except with SUPERPOSE_SYSTEM_PACKAGES=1, where the packages pip check
judges are the interpreter's own (a container's CUDA torch and its neighbours) and only a warning
is printed."""

import os
import shutil
import subprocess
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]

# .venv/bin/python: `-m pip ... check` reports a conflict among packages superpose did not install;
# anything else (the final `import torch, superpose` line) succeeds.
SHIM = """#!/usr/bin/env bash
if [ "$1" = -m ] && [ "$2" = pip ]; then echo "torchtitan 0.3.0 requires wandb, which is not installed."; exit 1; fi
echo "setup: superpose 0.1.0, torch (stand-in)" >&2
"""


@pytest.fixture
def checkout(tmp_path):
    (tmp_path / "scripts").mkdir()
    shutil.copy(ROOT / "scripts" / "setup.sh", tmp_path / "scripts" / "setup.sh")
    shutil.copy(ROOT / "pyproject.toml", tmp_path / "pyproject.toml")
    python = tmp_path / ".venv" / "bin" / "python"
    python.parent.mkdir(parents=True)
    python.write_text(SHIM)
    python.chmod(0o755)
    digest = subprocess.run(["sha256sum", "pyproject.toml"], cwd=tmp_path, capture_output=True, text=True,
                            check=True).stdout.split()[0]
    stamp = tmp_path / ".venv" / "superpose-setup"
    stamp.write_text(f"test,titan {digest}\n")  # set up already: nothing to install
    return tmp_path, stamp


def _setup(root, **env):
    return subprocess.run(["bash", "scripts/setup.sh"], cwd=root, capture_output=True, text=True, timeout=60,
                          env={**os.environ, **env})


def test_pip_check_conflicts_fail_setup_and_clear_the_stamp(checkout):
    root, stamp = checkout
    r = _setup(root, SUPERPOSE_SYSTEM_PACKAGES="0")
    assert r.returncode == 1
    assert "requires wandb" in r.stderr and "setup: pip check found conflicting packages" in r.stderr
    assert not stamp.exists()  # the next run resolves again


def test_system_packages_only_warn_about_pip_check(checkout):
    root, stamp = checkout
    r = _setup(root, SUPERPOSE_SYSTEM_PACKAGES="1")
    assert r.returncode == 0, r.stderr
    assert "setup: warning: pip check found conflicts (above) among the interpreter's own packages" in r.stderr
    assert stamp.exists() and "setup: superpose 0.1.0" in r.stderr
