"""The README and the docs/ pages stay honest: the README's Python example runs as written, its two
commands are the ones CI uses, it stays short (<= 300 lines), every `superpose` command in a bash
block or an inline span names verbs, flags, presets and config fields that exist, the module paths
and files they name exist, and every relative link (and its #anchor) resolves.

The docs/huggingface.md examples run in tests/test_hf.py and tests/test_generate_eval.py, which
need their fixtures.

Run: .venv/bin/pytest tests/test_readme.py
"""

import importlib
import importlib.util
import re
import shlex
import textwrap
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
README = ROOT / "README.md"
DOCS = [README, *sorted((ROOT / "docs").glob("*.md"))]
README_MAX_LINES = 300

# A fenced block, also indented inside a list item: (language, body).
FENCE = re.compile(r"^[ \t]*```(\w*)[^\n]*\n(.*?)^[ \t]*```", re.M | re.S)


def _blocks(text: str, lang: str) -> list[str]:
    return [textwrap.dedent(body) for kind, body in FENCE.findall(text) if kind == lang]


def _prose(text: str) -> str:
    """The text outside fenced blocks: where headings, links and inline code spans live."""
    return FENCE.sub("", text)


def _rel(path: Path) -> str:
    return str(path.relative_to(ROOT))


def test_python_example_runs():
    code = re.findall(r"```python\n(.*?)```", README.read_text(), re.S)[0]
    scope: dict = {}
    exec(compile(code, "README.md", "exec"), scope)
    assert scope["loss"].item() > 0 and scope["logits"].shape == (8, 128, 4096)


def test_ci_runs_the_readme_test_command():
    blocks = re.findall(r"```bash\n(.*?)```", README.read_text(), re.S)
    test_command = blocks[1].strip()
    assert test_command in (ROOT / ".ci" / "run").read_text()
    assert blocks[0].strip().startswith("bash scripts/setup.sh && ")


def test_readme_is_short_and_points_at_every_docs_page():
    text = README.read_text()
    assert len(text.splitlines()) <= README_MAX_LINES, f"README.md has {len(text.splitlines())} lines"
    linked = set(re.findall(r"\]\((docs/[\w-]+\.md)[#)]", text))
    pages = {_rel(p) for p in DOCS[1:]}
    assert pages and pages <= linked, f"docs pages the README does not link: {sorted(pages - linked)}"


# ---- commands ---------------------------------------------------------------------------------

def _cli():
    """{verb: set of its option strings}, {section: set of fields}, and the preset names."""
    from superpose.cli import build_parser
    from superpose.config import Config
    from superpose.core.model import ARCHITECTURES
    from superpose.presets import PRESETS

    sub = next(a for a in build_parser()._actions if a.dest == "verb")
    verbs = {verb: set(p._option_string_actions) for verb, p in sub.choices.items()}
    fields = {section: set(values) for section, values in Config().to_dict().items()}
    fields["model"] = set().union(*(a.config().to_dict() for a in ARCHITECTURES.values()))  # any architecture's
    return verbs, fields, set(PRESETS)


def _placeholder(word: str) -> bool:
    """NAME, RUN_DIR, SECTION.FIELD=VALUE, ...: a metavar the reader fills in, as argparse writes them."""
    return bool(re.fullmatch(r"[A-Z][A-Z0-9_.]*(=[A-Z0-9_.]+)?|\.\.\.|\$\w+", word))


def _check_field(flag: str, fields: dict[str, set[str]]) -> str | None:
    """What is wrong with a `--section.field` override, or None."""
    name = flag[2:].split("=", 1)[0]
    if _placeholder(name):
        return None
    section, _, field = name.partition(".")
    if section not in fields:
        return f"{flag}: no config section {section!r} (sections: {', '.join(fields)})"
    if field != "*" and field not in fields[section]:
        return f"{flag}: no field {field!r} in config section {section!r}"
    return None


def _check_args(verb: str, args: list[str], cli) -> list[str]:
    """The problems of `superpose VERB ARGS...`: an unknown verb, flag, preset or config field."""
    verbs, fields, presets = cli
    if verb not in verbs:
        return [f"unknown verb {verb!r}"] if not _placeholder(verb) else []
    problems = []
    args = [arg.strip("[]") for arg in args]  # `[--seeds 3]`: an optional flag of a usage line
    for i, arg in enumerate(args):
        if not arg.startswith("--") or arg == "--":
            continue
        name = arg.split("=", 1)[0]
        if "." in name:
            if verb not in ("train", "compare", "sweep"):
                problems.append(f"{verb} takes no config override {name}")
            elif (problem := _check_field(arg, fields)) is not None:
                problems.append(problem)
            continue
        if name not in verbs[verb]:
            problems.append(f"{verb} has no option {name}")
            continue
        value = arg.split("=", 1)[1] if "=" in arg else (args[i + 1] if i + 1 < len(args) else "")
        if name == "--preset" and not _placeholder(value) and value not in presets:
            problems.append(f"unknown preset {value!r}")
        if name == "--baselines" and not _placeholder(value):  # "model.init=normal;optim.lr=6e-3,..."
            for setting in re.split(r"[;,]", value):
                if (problem := _check_field("--" + setting, fields)) is not None:
                    problems.append(problem)
    return problems


def _segments(line: str) -> list[list[str]]:
    """A shell line split into simple commands (at ;, &&, |, parentheses), comments dropped."""
    lex = shlex.shlex(line, posix=True, punctuation_chars=True)
    lex.whitespace_split = True
    segments: list[list[str]] = [[]]
    for token in lex:
        if set(token) <= set("();<>|&"):
            segments.append([])
        else:
            segments[-1].append(token)
    return [s for s in segments if s]


def _bash_problems(block: str, cli) -> list[str]:
    """Every `superpose VERB ...` (also `.venv/bin/superpose`, `-m superpose`) in a bash block is
    checked with _check_args; every `-m superpose.x.y` names a module file that exists."""
    problems = []
    for line in re.sub(r"\\\n", " ", block).splitlines():
        for tokens in _segments(line):
            start = next((i for i, t in enumerate(tokens) if not re.fullmatch(r"\w+=.*", t)), len(tokens))
            for i, token in enumerate(tokens):
                command_position = i == start or (i > 0 and tokens[i - 1] == "-m")
                if not command_position:
                    continue
                if token == "superpose" or token.endswith("/superpose"):
                    if i + 1 >= len(tokens):
                        problems.append(f"{line.strip()!r}: superpose without a verb")
                    else:
                        problems += [f"{line.strip()!r}: {p}" for p in _check_args(tokens[i + 1], tokens[i + 2:], cli)]
                elif token.startswith("superpose.") and i > 0 and tokens[i - 1] == "-m":
                    module = ROOT.joinpath(*token.split("."))
                    if not (module.with_suffix(".py").is_file() or (module / "__main__.py").is_file()):
                        problems.append(f"{line.strip()!r}: no module {token}")
    return problems


def _inline_problems(prose: str, cli) -> list[str]:
    """Inline spans: `superpose VERB ...` as in bash, `--section.field` and `section.field=value`
    of a config section name fields that exist."""
    _, fields, _ = cli
    problems = []
    for span in re.findall(r"`([^`]+)`", prose):
        span = " ".join(span.split())
        if span.startswith("superpose ") and len(span.split()) > 1:
            # a usage line of a table: `[--a ... \| --b]` groups and alternatives, no quoting
            words = span.replace("\\|", " ").replace("[", " ").replace("]", " ").split()
            problems += [f"`{span}`: {p}" for p in _check_args(words[1], words[2:], cli)]
        elif m := re.match(r"(?:--)?(\w+\.[\w*]+)(?=[=\s]|$)", span):
            dashed = span.startswith("--")
            if m.group(1).split(".")[0] in fields and (dashed or span[m.end():].startswith("=")):
                if (problem := _check_field("--" + m.group(1), fields)) is not None:
                    problems.append(f"`{span}`: {problem}")
    return problems


def test_commands_in_readme_and_docs_name_verbs_flags_presets_and_fields_that_exist():
    cli = _cli()
    problems, commands = [], 0
    for page in DOCS:
        text = page.read_text()
        for block in _blocks(text, "bash"):
            commands += len(re.findall(r"(?:^|[\s/])superpose\s+[a-z]", block))
            problems += [f"{_rel(page)}: {p}" for p in _bash_problems(block, cli)]
        problems += [f"{_rel(page)}: {p}" for p in _inline_problems(_prose(text), cli)]
    assert commands > 50, commands  # the docs do show commands: the scan found them
    assert not problems, "\n".join(problems)


def test_the_command_check_catches_what_it_should():
    cli = _cli()
    good = "superpose train --preset cpu-small --out runs/a --tst.bag_size=6 --checkpoint.every 500"
    assert _bash_problems(good, cli) == []
    assert _bash_problems("torchrun --nproc_per_node 2 -m superpose train --resume runs/a \\\n"
                          "    --parallel.mode fsdp && WANDB_MODE=offline .venv/bin/superpose eval runs/a", cli) == []
    for bad, what in (("superpose trian --preset cpu-small", "unknown verb"),
                      ("superpose train --preset cpu-huge --out r", "unknown preset"),
                      ("superpose train --out r --tst.bagsize=6", "no field 'bagsize'"),
                      ("superpose train --out r --tts.bag_size=6", "no config section"),
                      ("superpose eval runs/a --tasks x --fewshot 0", "eval has no option --fewshot"),
                      ("superpose eval runs/a --train.steps 3", "takes no config override"),
                      ("superpose compare --out c [--seeds 3] [--seed-zero 1]", "compare has no option --seed-zero"),
                      ('superpose compare --out c --baselines "model.init=normal;optim.lrr=1"', "no field 'lrr'"),
                      ("torchrun -m superpose.titan.nothing --x 1", "no module superpose.titan.nothing"),
                      ("ls && superpose plot r --wacth  # comment", "plot has no option --wacth")):
        problems = _bash_problems(bad, cli)
        assert len(problems) == 1 and what in problems[0], (bad, problems)
    assert _inline_problems("`tst.wieghts=mi` and `--optim.lrr`, not `model.safetensors`", cli) == [
        "`tst.wieghts=mi`: --tst.wieghts: no field 'wieghts' in config section 'tst'",
        "`--optim.lrr`: --optim.lrr: no field 'lrr' in config section 'optim'"]


# ---- module paths and files -------------------------------------------------------------------

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


def _defined_in_source(dotted: str) -> bool:
    """Without importing: the module file of `dotted` exists and defines its first attribute at top
    level. For `superpose.titan`, whose import needs torchtitan (an optional extra)."""
    path, parts = ROOT, dotted.split(".")
    for i, part in enumerate(parts):
        if (path / part).is_dir():
            path = path / part
        elif (path / f"{part}.py").is_file():
            path, i = path / f"{part}.py", i + 1
            break
        else:
            break
    else:
        return True  # a package
    source = (path / "__init__.py" if path.is_dir() else path).read_text()
    if i >= len(parts):
        return True
    name = re.escape(parts[i])
    return re.search(rf"^(?:class|def)\s+{name}\b|^{name}\s*[:=]", source, re.M) is not None


def test_documented_python_paths_import():
    """Every `superpose.x.y` the README, ARCHITECTURE.md and docs/ name, and every name their code
    imports, resolves; the short paths that once re-exported them are gone (one path per name)."""
    text = "".join(p.read_text() for p in [*DOCS, ROOT / "ARCHITECTURE.md"])
    names = set(re.findall(r"`(superpose(?:\.\w+)+)", text))
    for module, imported in re.findall(r"from (superpose(?:\.\w+)*) import ([\w, ]+)", text):
        names |= {f"{module}.{n.strip()}" for n in imported.split(",")}
    assert "superpose.core.superposition.multi_hot_cross_entropy" in names
    assert "superpose.interop.hf_trainer.TSTTrainer" in names and "superpose.inference.load.load_model" in names
    assert "superpose.titan.config_registry" in names and "superpose.data.open_dataset" in names
    titan = importlib.util.find_spec("torchtitan") is not None
    for name in sorted(names):
        if name.startswith("superpose.titan") and not titan:
            assert _defined_in_source(name), name
        else:
            _resolve(name)
    for old in ("lm_eval_adapter", "hf", "superposition"):
        assert not (ROOT / "superpose" / f"{old}.py").exists(), old
    for old in ("load_model", "ModelConfig", "multi_hot_cross_entropy"):
        assert not hasattr(importlib.import_module("superpose"), old), old
    stale = re.findall(r"superpose\.(?:superposition|hf|lm_eval_adapter)\b|from superpose import (?!cli\b)\w+", text)
    assert not stale, stale


def test_defined_in_source_can_fail():
    assert _defined_in_source("superpose.titan.trainer.TSTTrainer")
    assert not _defined_in_source("superpose.titan.trainer.NoSuchTrainer")
    assert not _defined_in_source("superpose.titan.no_such_module")


def test_architecture_names_files_that_exist():
    # Package paths (core/llama.py, cli.py) and repository paths (tests/test_imports.py); an
    # upper-case stem (core/NAME.py) is a placeholder of a recipe.
    files = set(re.findall(r"(?<![\w/.-])((?:(?:tests|benchmarks)/)?(?:(?:core|data|training|inference|interop|"
                           r"experiments|titan|tasks)/)?\w+\.py)\b", (ROOT / "ARCHITECTURE.md").read_text()))
    assert {"training/trainer.py", "core/superposition.py", "tests/test_imports.py", "tasks/cloze.py"} <= files
    missing = [f for f in files if not Path(f).stem.isupper()
               and not ((ROOT / "superpose" / f).is_file() or (ROOT / f).is_file())]
    assert not missing, missing


# Repository paths (`benchmarks/gpu.py`, `superpose/config.py`) and package paths (`core/moe.py`).
REPO_PATH = re.compile(r"(?<![\w/.-])((?:scripts|benchmarks|tests|superpose|docs|\.ci)/[\w./-]*\w\.(?:py|sh|md|yaml|json))")
PACKAGE_PATH = re.compile(r"(?<![\w/.-])((?:core|data|training|inference|interop|experiments|titan|tasks)/\w+\.py)\b")


def test_readme_and_docs_name_files_that_exist():
    missing, named = [], 0
    for page in DOCS:
        text = page.read_text()
        for path in REPO_PATH.findall(text):
            named += 1
            if not (ROOT / path).exists():
                missing.append(f"{_rel(page)}: {path}")
        for path in PACKAGE_PATH.findall(text):
            named += 1
            if not (ROOT / "superpose" / path).exists():
                missing.append(f"{_rel(page)}: superpose/{path}")
    assert named > 10, named
    assert not missing, missing


# ---- links ------------------------------------------------------------------------------------

def _slug(heading: str) -> str:
    """GitHub's anchor of a heading: lower case, punctuation dropped, spaces to hyphens."""
    return re.sub(r"[^\w\- ]", "", heading.strip().lower()).replace(" ", "-")


def _anchors(page: Path) -> set[str]:
    seen: dict[str, int] = {}
    anchors = set()
    for heading in re.findall(r"^#{1,6} +(.+?) *#*$", _prose(page.read_text()), re.M):
        slug = _slug(heading)
        anchors.add(slug if slug not in seen else f"{slug}-{seen[slug]}")
        seen[slug] = seen.get(slug, 0) + 1
    return anchors


def _link_problems(page: Path) -> list[str]:
    """Every relative link of a page that does not lead to an existing file, folder or heading."""
    problems = []
    for target in re.findall(r"\]\(([^)\s]+)\)", _prose(page.read_text())):
        if re.match(r"[a-z][a-z0-9+.-]*:", target):  # https:, mailto:
            continue
        path, _, anchor = target.partition("#")
        dest = (page.parent / path).resolve() if path else page
        if not dest.exists():
            problems.append(f"{_rel(page)}: ({target}): no such file")
        elif anchor and dest.suffix == ".md" and anchor not in _anchors(dest):
            problems.append(f"{_rel(page)}: ({target}): no heading #{anchor} in {_rel(dest)}")
    return problems


def test_relative_links_in_readme_and_docs_resolve():
    problems = [p for page in DOCS for p in _link_problems(page)]
    assert not problems, "\n".join(problems)
    assert "tracking-tensorboard-and-wb" in _anchors(ROOT / "docs" / "checkpoints.md")


def test_a_broken_link_or_anchor_is_caught(tmp_path, monkeypatch):
    monkeypatch.setitem(globals(), "ROOT", tmp_path)  # _rel names pages relative to it
    (tmp_path / "docs").mkdir()
    (tmp_path / "docs" / "a.md").write_text("# Tracking: TensorBoard and W&B\n\n## Same\n\n## Same\n")
    page = tmp_path / "README.md"
    page.write_text("[ok](docs/a.md#tracking-tensorboard-and-wb) [ok](docs/a.md#same-1) [ok](#x)\n\n# x\n"
                    "[web](https://example.com/missing)\n```bash\n[not a link](nowhere.md)\n```\n")
    assert _link_problems(page) == []
    page.write_text("[gone](docs/b.md) [bad anchor](docs/a.md#tracking) [self](#nope)\n")
    assert _link_problems(page) == ["README.md: (docs/b.md): no such file",
                                    "README.md: (docs/a.md#tracking): no heading #tracking in docs/a.md",
                                    "README.md: (#nope): no heading #nope in README.md"]


@pytest.mark.parametrize("heading, slug", [("Tracking: TensorBoard and W&B", "tracking-tensorboard-and-wb"),
                                           ("The paper's ablations, and two of ours",
                                            "the-papers-ablations-and-two-of-ours"),
                                           ("TST inside torchtitan: `--module superpose.titan`",
                                            "tst-inside-torchtitan---module-superposetitan")])
def test_slug_is_githubs(heading, slug):
    assert _slug(heading) == slug
