"""Issue 35: the docs' command blocks for your own text run as written. Every bash block that the
README or a docs/ page marks with MARK is run line by line, verbatim, in an empty folder holding a
small input.txt (as a doctest runs its examples): `superpose ...` lines through the CLI's own
`main`, `python -c ...` lines as a subprocess. Together they go from a text file to a Hugging Face
folder loaded by transformers, so the docs cannot drift from the code.

Run: .venv/bin/pytest tests/test_docs_commands.py
"""

from __future__ import annotations

import os
import re
import shlex
import subprocess
import sys
from pathlib import Path

import pytest

from conftest import make_documents

ROOT = Path(__file__).resolve().parent.parent
MARK = "<!-- tests/test_docs_commands.py runs this block as written"
BLOCK = re.compile(re.escape(MARK) + r"[^\n]*\n```bash\n(.*?)^```", re.M | re.S)


def marked_blocks() -> list[tuple[str, str]]:
    """(page, block) for every marked bash block of the README and docs/."""
    pages = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]
    return [(page.name, block) for page in pages for block in BLOCK.findall(page.read_text())]


def test_the_readme_and_docs_mark_their_own_text_blocks():
    pages = [page for page, _ in marked_blocks()]
    assert "README.md" in pages and "data.md" in pages


@pytest.mark.parametrize("page,block", marked_blocks(), ids=[page for page, _ in marked_blocks()])
def test_a_marked_block_runs_verbatim(page, block, tmp_path, monkeypatch, one_thread):
    pytest.importorskip("transformers")
    from superpose import cli

    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("SUPERPOSE_CACHE", str(tmp_path / "cache"))
    Path("input.txt").write_text("\n\n".join(make_documents(700, 11)))  # one document, ~90 KB, as nanoGPT's
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")]),
           "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1", "OMP_NUM_THREADS": "1"}
    lines = [line for line in block.splitlines() if line.strip()]
    assert len(lines) >= 3, f"{page}: a marked block goes from text to a loaded model"
    for line in lines:
        words = shlex.split(line, comments=True)
        if words[0] == "superpose":
            assert cli.main(words[1:]) == 0, f"{page}: {line}"
        elif words[0] == "python":
            proc = subprocess.run([sys.executable, *words[1:]], env=env, capture_output=True, text=True, timeout=300)
            assert proc.returncode == 0, f"{page}: {line}\n{proc.stderr[-2000:]}"
        else:
            pytest.fail(f"{page}: the test runs superpose and python lines, not {words[0]!r}: {line}")
    assert (tmp_path / "hf" / "mine" / "model.safetensors").is_file()
    assert not [p.name for p in tmp_path.iterdir() if p.name.startswith(".")]  # no litter beside the text
