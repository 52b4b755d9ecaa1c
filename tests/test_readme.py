"""The README's Python example runs as written, and its two commands are the ones CI uses.

Run: .venv/bin/pytest tests/test_readme.py
"""

import re
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def test_python_example_runs():
    code = re.findall(r"```python\n(.*?)```", (ROOT / "README.md").read_text(), re.S)[0]
    scope: dict = {}
    exec(compile(code, "README.md", "exec"), scope)
    assert scope["loss"].item() > 0 and scope["logits"].shape == (8, 128, 4096)


def test_ci_runs_the_readme_test_command():
    blocks = re.findall(r"```bash\n(.*?)```", (ROOT / "README.md").read_text(), re.S)
    test_command = blocks[1].strip()
    assert test_command in (ROOT / ".ci" / "run").read_text()
    assert blocks[0].strip().startswith("bash scripts/setup.sh && ")
