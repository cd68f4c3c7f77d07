"""The layout's rules, checked on the source: no import cycles, library code never imports
the CLI, the core never imports a plugin, and only the run directory names its files."""

from __future__ import annotations

import ast
import re
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
CORE = ROOT / "pgprune_core"


def _modules() -> dict[str, Path]:
    mods = {}
    for file in CORE.rglob("*.py"):
        parts = list(file.relative_to(ROOT).with_suffix("").parts)
        if parts[-1] == "__init__":
            parts = parts[:-1]
        mods[".".join(parts)] = file
    return mods


def _imports(module: str, file: Path, mods: dict[str, Path]) -> set[str]:
    """Modules of the core that ``module`` imports anywhere (functions included), except
    imports under ``if TYPE_CHECKING``."""
    tree = ast.parse(file.read_text(encoding="utf-8"))
    typing_only = {id(node) for n in ast.walk(tree)
                   if isinstance(n, ast.If) and "TYPE_CHECKING" in ast.unparse(n.test)
                   for stmt in n.body for node in ast.walk(stmt)}
    found: set[str] = set()
    for node in ast.walk(tree):
        if id(node) in typing_only or not isinstance(node, ast.Import | ast.ImportFrom):
            continue
        names = ([a.name for a in node.names] if isinstance(node, ast.Import)
                 else [node.module or ""] + [f"{node.module}.{a.name}" for a in node.names])
        assert not (isinstance(node, ast.ImportFrom) and node.level), f"{file}: relative import"
        for name in names:
            while name and name not in mods:
                name = name.rpartition(".")[0]
            if name and name != module and not module.startswith(name + "."):
                found.add(name)
    return found


def _graph() -> dict[str, set[str]]:
    mods = _modules()
    return {m: _imports(m, f, mods) for m, f in mods.items()}


def test_no_import_cycles() -> None:
    graph = _graph()
    state: dict[str, int] = {}
    cycles: list[list[str]] = []

    def visit(node: str, path: list[str]) -> None:
        state[node] = 1
        for nxt in sorted(graph[node]):
            if state.get(nxt) == 1:
                cycles.append([*path[path.index(nxt):], nxt])
            elif nxt not in state:
                visit(nxt, [*path, nxt])
        state[node] = 2

    for node in sorted(graph):
        if node not in state:
            visit(node, [node])
    assert not cycles, cycles


def test_few_top_level_modules() -> None:
    top = {p.stem for p in CORE.glob("*.py")} - {"__init__", "__main__"}
    assert top == {"errors", "interfaces"}


def test_library_code_never_imports_the_cli() -> None:
    """Only the CLI itself, ``__main__`` and command modules registered through the command
    hook may import ``pgprune_core.cli``."""
    allowed = {"pgprune_core.__main__", "pgprune_core.compare.command"}
    for module, deps in _graph().items():
        if module.startswith("pgprune_core.cli") or module in allowed:
            continue
        assert not any(d.startswith("pgprune_core.cli") for d in deps), module


def test_the_core_never_imports_a_plugin() -> None:
    packages = [p.name.replace("-", "_") for p in (ROOT / "plugins").iterdir()
                if (p / "pyproject.toml").exists()]
    for file in CORE.rglob("*.py"):
        text = file.read_text(encoding="utf-8")
        for package in packages:
            assert not re.search(rf"^\s*(from|import) {package}\b", text, re.M), (file, package)


RUN_FILES = ("run.json", "config.yaml", "policy.pt", "metrics.jsonl", "dense.json",
             "init_scores.pt", "masks.json", "metrics.json", "report.md", "sparsity.png",
             "loss.png")


#: files of other directories that share a run file's name (a comparison's own figure)
OTHER_DIRS = {("compare/runner.py", "sparsity.png")}


def test_only_the_run_directory_names_its_files() -> None:
    """Every reader and writer of a run directory goes through ``RunDir``."""
    owner = CORE / "run" / "rundir.py"
    pattern = re.compile("|".join(rf"[\"']{re.escape(name)}[\"']" for name in RUN_FILES))
    offenders = []
    for file in CORE.rglob("*.py"):
        if file == owner:
            continue
        code = "\n".join(line for line in file.read_text(encoding="utf-8").splitlines()
                         if not line.lstrip().startswith("#"))
        # docstrings may name the files; code may not
        tree = ast.parse(code)
        for node in ast.walk(tree):
            if isinstance(node, ast.Constant) and isinstance(node.value, str) \
                    and pattern.fullmatch(repr(node.value)) \
                    and (file.relative_to(CORE).as_posix(), node.value) not in OTHER_DIRS:
                offenders.append(f"{file.relative_to(ROOT)}:{node.lineno}: {node.value}")
    assert not offenders, offenders
