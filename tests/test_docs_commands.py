"""Issue 35: the docs' command blocks for your own text, export and the Hugging Face path run as
written. The marked blocks (MARK) of the README and of each docs/ page run in order, verbatim, in
an empty folder holding a small input.txt (as a doctest runs its examples): a bash block line by
line, `superpose ...` through the CLI's own `main` and `python -c ...` as a subprocess; a python
block as a subprocess. Each page's blocks go from a text file to a Hugging Face folder loaded by
transformers, so the docs cannot drift from the code.

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
BLOCK = re.compile(re.escape(MARK) + r"[^\n]*\n```(bash|python)\n(.*?)^```", re.M | re.S)


def marked_pages() -> dict[str, list[tuple[str, str]]]:
    """{page: its marked (language, block)s in order} for the README and docs/."""
    pages = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]
    found = {page.name: BLOCK.findall(page.read_text()) for page in pages}
    return {page: blocks for page, blocks in found.items() if blocks}


def test_the_readme_and_docs_mark_their_own_text_and_export_blocks():
    assert {"README.md", "data.md", "huggingface.md"} <= set(marked_pages())


def run_python(code: list[str], env: dict, where: str) -> None:
    proc = subprocess.run([sys.executable, *code], env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, f"{where}\n{proc.stderr[-2000:]}"


@pytest.mark.parametrize("page", sorted(marked_pages()))
def test_a_pages_marked_blocks_run_verbatim(page, tmp_path, monkeypatch, one_thread):
    pytest.importorskip("transformers")
    from superpose import cli

    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("SUPERPOSE_CACHE", str(tmp_path / "cache"))
    Path("input.txt").write_text("\n\n".join(make_documents(700, 11)))  # one document, ~90 KB, as nanoGPT's
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")]),
           "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1", "OMP_NUM_THREADS": "1"}
    steps = []
    for language, block in marked_pages()[page]:
        if language == "python":
            steps.append(("python", ["-c", block]))
            continue
        for line in block.splitlines():
            if line.strip():
                words = shlex.split(line, comments=True)
                steps.append((words[0], words[1:]))
    assert ("superpose", "export") in {(tool, args[0]) for tool, args in steps if args}, f"{page}: no export"
    assert steps[-1][0] == "python" and "transformers" in " ".join(steps[-1][1]), f"{page}: ends without loading"
    for tool, args in steps:
        where = f"{page}: {tool} {shlex.join(args)[:200]}"
        if tool == "superpose":
            assert cli.main(args) == 0, where
        elif tool == "python":
            run_python(args, env, where)
        else:
            pytest.fail(f"{where}: the test runs superpose and python, not {tool!r}")
    assert list(tmp_path.glob("hf/*/model.safetensors"))
    assert not [p.name for p in tmp_path.iterdir() if p.name.startswith(".")]  # no litter beside the text
