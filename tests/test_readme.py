"""The README's Python example runs as written, its two commands are the ones CI uses, and the module
paths and files the README and ARCHITECTURE.md name exist.

Run: .venv/bin/pytest tests/test_readme.py
"""

import importlib
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


def _resolve(dotted: str):
    """The object a dotted path names: its longest importable module prefix, then attributes."""
    parts = dotted.split(".")
    for i in range(len(parts), 0, -1):
        try:
            obj = importlib.import_module(".".join(parts[:i]))
            break
        except ModuleNotFoundError:
            continue
    for attr in parts[i:]:
        obj = getattr(obj, attr)
    return obj


def test_documented_python_paths_import():
    """Every `superpose.x.y` the README and ARCHITECTURE.md name, and every name their code imports,
    resolves; the paths code moved away from still give the same objects."""
    text = (ROOT / "README.md").read_text() + (ROOT / "ARCHITECTURE.md").read_text()
    names = set(re.findall(r"`(superpose(?:\.\w+)+)", text))
    for module, imported in re.findall(r"from (superpose(?:\.\w+)*) import ([\w, ]+)", text):
        names |= {f"{module}.{n.strip()}" for n in imported.split(",")}
    assert "superpose.superposition.multi_hot_cross_entropy" in names and "superpose.hf.TSTTrainer" in names
    for name in sorted(names):
        _resolve(name)
    for old, new in (("superpose.lm_eval_adapter.SuperposeLM", "superpose.interop.lm_eval_adapter.SuperposeLM"),
                     ("superpose.hf.TSTTrainer", "superpose.interop.hf_trainer.TSTTrainer"),
                     ("superpose.superposition.next_bag_targets", "superpose.core.superposition.next_bag_targets")):
        assert _resolve(old) is _resolve(new), old


def test_architecture_names_files_that_exist():
    files = set(re.findall(r"\b((?:core|data|training|inference|interop|experiments)/\w+\.py|\w+\.py)\b",
                           (ROOT / "ARCHITECTURE.md").read_text()))
    assert "training/trainer.py" in files and "core/superposition.py" in files
    missing = [f for f in files if not (ROOT / "superpose" / f).is_file()]
    assert not missing, missing
