"""The package's import graph points only down its layers, and has no cycles.

`LAYERS` below is the one place the layer order is written: a module may import modules of its
own layer or of a layer below, never above. The graph is read from the source with `ast`:
module-level imports and the lazy ones inside functions alike, relative forms resolved. An
import under `if TYPE_CHECKING:` never runs, so it cannot close a cycle; it must still point
down (a lower layer must not know a higher one's types). The checker is itself tested on a small
synthetic package, so a broken checker cannot pass silently.

Run: .venv/bin/pytest tests/test_imports.py
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent / "superpose"

# Bottom first. An entry names a module or a package (and everything under it); a module belongs
# to its longest entry. "superpose" names the package's own __init__ only.
LAYERS: tuple[tuple[str, ...], ...] = (
    ("superpose.errors", "superpose.files"),  # one-line errors; atomic writes, locks, checksums
    ("superpose.core",),  # the TST math, the models, phases and LR: no files, no processes
    ("superpose.checks", "superpose.data"),  # device, seed and memory checks; text -> shards -> rows
    ("superpose.overrides", "superpose.config"),  # --section.field=value text; the typed run config
    ("superpose.presets",),  # named presets, config files, resolve (preset < file < overrides)
    ("superpose.checkpoint",),  # the run-directory format: step-N checkpoints and the final model, read
    ("superpose.inference",),  # find and load a trained model, generate, the one evaluation
    ("superpose.interop", "superpose.tasks", "superpose.titan"),  # Hugging Face, lm-eval, torchtitan
    ("superpose.training",),  # build a run, step it, write checkpoints, resume
    ("superpose.experiments",),  # compare, sweep, their reports and plots
    ("superpose", "superpose.__main__", "superpose.cli", "superpose.cli_errors", "superpose.cli_parser",  # the verbs
     "superpose.eval_cli"),
)

# Cycles allowed by name (none: the architecture registry removed the last, core/model <-> core/moe).
KNOWN_CYCLES: set[frozenset[str]] = set()


def module_files(root: Path) -> dict[str, Path]:
    """{dotted module name: file} of every module of the package at `root`."""
    out = {}
    for path in sorted(root.rglob("*.py")):
        parts = (root.name, *path.relative_to(root).with_suffix("").parts)
        out[".".join(parts[:-1] if parts[-1] == "__init__" else parts)] = path
    return out


def _type_checking(test: ast.expr) -> bool:
    return (isinstance(test, ast.Name) and test.id == "TYPE_CHECKING") or (
        isinstance(test, ast.Attribute) and test.attr == "TYPE_CHECKING")


def _walk(node: ast.AST, type_only: bool = False):
    """(import node, whether it only runs for a type checker), everywhere in `node`."""
    for child in ast.iter_child_nodes(node):
        if isinstance(child, (ast.Import, ast.ImportFrom)):
            yield child, type_only
        elif isinstance(child, ast.If) and _type_checking(child.test):
            for stmt in child.body:
                yield from _walk(ast.Module(body=[stmt], type_ignores=[]), True)
            for stmt in child.orelse:
                yield from _walk(ast.Module(body=[stmt], type_ignores=[]), type_only)
        else:
            yield from _walk(child, type_only)


def imports(module: str, path: Path, modules: dict[str, Path]) -> list[tuple[str, int, bool]]:
    """(imported module of the package, line, type only) for each import in `module`'s source."""
    package = module if path.name == "__init__.py" else module.rpartition(".")[0]
    top = module.split(".")[0]
    out = []
    for node, type_only in _walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            targets = [a.name for a in node.names]
        else:
            if node.level:
                base = package.split(".")[: len(package.split(".")) - node.level + 1]
                base = ".".join(base + ([node.module] if node.module else []))
            else:
                base = node.module or ""
            # `from pkg import name`: the submodule pkg.name when there is one, else pkg itself.
            targets = [f"{base}.{a.name}" if f"{base}.{a.name}" in modules else base for a in node.names]
        for target in targets:
            if target.split(".")[0] != top:
                continue
            while target not in modules:  # `import pkg.mod.attr` forms: the module that holds it
                target = target.rpartition(".")[0]
            if target != module and (target, node.lineno, type_only) not in out:
                out.append((target, node.lineno, type_only))
    return out


def layer_of(module: str, layers) -> int | None:
    """The index of the layer whose longest entry names `module`; None when no entry does."""
    best = None
    for i, entries in enumerate(layers):
        for entry in entries:
            top_only = "." not in entry  # the package root names its __init__ only
            if module == entry or (not top_only and module.startswith(entry + ".")):
                if best is None or len(entry) > len(best[1]):
                    best = (i, entry)
    return None if best is None else best[0]


def check(root: Path, layers, known_cycles=frozenset()) -> list[str]:
    """Every problem of the import graph of the package at `root`, one line each: a module in no
    layer, an import up the layers, a cycle of imports that run (known_cycles aside)."""
    modules = module_files(root)
    problems, graph = [], {m: set() for m in modules}
    for module, path in modules.items():
        here = layer_of(module, layers)
        if here is None:
            problems.append(f"{module} is in no layer: add it to LAYERS")
            continue
        for target, line, type_only in imports(module, path, modules):
            there = layer_of(target, layers)
            if there is not None and there > here:
                problems.append(f"{path.relative_to(root.parent)}:{line}: {module} (layer {here}) imports {target} "
                                f"(layer {there}), a layer above it")
            if not type_only:
                graph[module].add(target)
    for component in strongly_connected(graph):
        if len(component) > 1 and frozenset(component) not in known_cycles:
            problems.append(f"import cycle: {' <-> '.join(sorted(component))}")
    return problems


def strongly_connected(graph: dict[str, set[str]]) -> list[list[str]]:
    """Tarjan's strongly connected components: each cycle of the graph lies inside one."""
    index, low, stack, on_stack, out = {}, {}, [], set(), []

    def visit(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        on_stack.add(v)
        for w in sorted(graph.get(v, ())):
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on_stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            component = []
            while True:
                w = stack.pop()
                on_stack.discard(w)
                component.append(w)
                if w == v:
                    break
            out.append(component)

    for v in sorted(graph):
        if v not in index:
            visit(v)
    return out


def test_superpose_imports_only_point_down_and_have_no_cycles():
    problems = check(ROOT, LAYERS, KNOWN_CYCLES)
    assert not problems, "\n".join(problems)


def test_every_layer_entry_exists():
    """A layer entry that names nothing (a module renamed away) would silently stop checking."""
    modules = module_files(ROOT)
    missing = [e for entries in LAYERS for e in entries if not any(m == e or m.startswith(e + ".") for m in modules)]
    assert not missing, missing


def _package(tmp_path: Path, files: dict[str, str]) -> Path:
    for name, text in files.items():
        (tmp_path / "pkg" / name).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / "pkg" / name).write_text(text)
    return tmp_path / "pkg"


def test_the_checker_finds_an_upward_import_a_lazy_cycle_and_an_unplaced_module(tmp_path):
    root = _package(tmp_path, {
        "__init__.py": "",
        "low/__init__.py": "",
        "low/a.py": "from . import b\n",
        "low/b.py": "def f():\n    from .a import x\n",  # a lazy import closes the cycle a -> b -> a
        "low/c.py": "from ..high import top\n",  # up a layer
        "low/d.py": "from typing import TYPE_CHECKING\nif TYPE_CHECKING:\n    from ..high.top import T\n",
        "high/__init__.py": "",
        "high/top.py": "import pkg.low.b\nfrom pkg.low import a\n",
        "stray.py": "",
    })
    layers = (("pkg.low",), ("pkg", "pkg.high"))
    problems = check(root, layers)
    assert "pkg.stray is in no layer: add it to LAYERS" in problems
    assert any("pkg.low.c (layer 0) imports pkg.high.top (layer 1)" in p for p in problems), problems
    assert any("pkg.low.d (layer 0) imports pkg.high.top (layer 1)" in p for p in problems), problems  # type-only, still up
    assert "import cycle: pkg.low.a <-> pkg.low.b" in problems
    assert len(problems) == 4, problems  # high -> low and the type-only import close no cycle
    known = check(root, layers, {frozenset({"pkg.low.a", "pkg.low.b"})})
    assert known == [p for p in problems if not p.startswith("import cycle")]


def test_a_type_only_import_closes_no_cycle_but_a_runtime_one_does(tmp_path):
    root = _package(tmp_path, {
        "__init__.py": "",
        "a.py": "from typing import TYPE_CHECKING\nif TYPE_CHECKING:\n    from .b import B\n",
        "b.py": "from . import a\n",
    })
    assert check(root, (("pkg",), ("pkg.a", "pkg.b"))) == []
    (root / "a.py").write_text("import typing\nif typing.TYPE_CHECKING:\n    pass\nelse:\n    from .b import B\n")
    assert check(root, (("pkg",), ("pkg.a", "pkg.b"))) == ["import cycle: pkg.a <-> pkg.b"]


@pytest.mark.parametrize("module,layer", [("superpose.core.model", 1), ("superpose.inference.load", 6),
                                          ("superpose.training.save", 8), ("superpose", 10)])
def test_layer_of_takes_the_longest_entry(module, layer):
    assert layer_of(module, LAYERS) == layer


# ----------------------------------------------------------------------------- one import path per name


def _package_exports() -> dict[str, set[str]]:
    """{package: the names its __init__ lists in __all__} (its public API: data, training, tasks)."""
    out = {}
    for init in ROOT.rglob("__init__.py"):
        for node in ast.parse(init.read_text()).body:
            if isinstance(node, ast.Assign) and any(isinstance(t, ast.Name) and t.id == "__all__" for t in node.targets):
                name = ".".join(("superpose", *init.parent.relative_to(ROOT).parts))
                out[name] = {e.value for e in node.value.elts}
    return out


def test_a_module_lists_only_what_it_defines():
    """Each public name has one import path: a module's __all__ names only what the module itself
    defines (a package's __init__ is where a package states its API, and is the exception)."""
    for path in ROOT.rglob("*.py"):
        if path.name == "__init__.py":
            continue
        tree = ast.parse(path.read_text())
        defined, listed = set(), []
        for node in tree.body:
            if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)):
                defined.add(node.name)
            for target in (node.targets if isinstance(node, ast.Assign) else
                           [node.target] if isinstance(node, ast.AnnAssign) else []):
                if isinstance(target, ast.Name):
                    defined.add(target.id)
                    if target.id == "__all__":
                        listed = [e.value for e in node.value.elts]
        assert not set(listed) - defined, f"{path}: __all__ re-exports {sorted(set(listed) - defined)}"


def test_a_package_api_name_is_imported_from_the_package():
    """A name that a package's __init__ exports (superpose.data.open_dataset) is imported from the
    package everywhere outside it, never also from the submodule that defines it."""
    exports = _package_exports()
    tests = ROOT.parent / "tests"
    for path in [*ROOT.rglob("*.py"), *tests.glob("*.py")]:
        here = ".".join(("superpose", *path.parent.relative_to(ROOT).parts)) if ROOT in path.parents else "tests"
        for node in ast.walk(ast.parse(path.read_text())):
            if not isinstance(node, ast.ImportFrom) or not node.module:
                continue
            module = node.module
            if node.level:
                base = here.split(".")[: len(here.split(".")) - (node.level - 1)]
                module = ".".join([*base, node.module])
            package = module.rsplit(".", 1)[0]
            if package in exports and not here.startswith(package):
                doubled = {a.name for a in node.names} & exports[package]
                assert not doubled, f"{path}:{node.lineno}: import {sorted(doubled)} from {package}, not {module}"
