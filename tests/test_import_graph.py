"""The house's shape: no import cycles among the project's modules, the core package
importing neither ``benchmarks`` nor ``strategies`` at module level, and no task-name
branches (``t == "det"``) outside the task modules."""
from __future__ import annotations

import ast
import graphlib
import re
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
PACKAGES = ("avalanche_onehead", "benchmarks", "strategies")
CORE = "avalanche_onehead"
TASK_NAMES = ("seg", "det", "cls")


def module_name(path: Path) -> str:
    parts = list(path.relative_to(REPO).with_suffix("").parts)
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def project_modules() -> dict[str, Path]:
    return {module_name(p): p for pkg in PACKAGES for p in sorted((REPO / pkg).rglob("*.py"))}


def _enclosing(name: str, known: dict[str, Path]) -> str | None:
    """The project module ``name`` refers to: itself, or the module holding it (``a.b.f`` -> ``a.b``)."""
    while name and name not in known:
        name = name.rpartition(".")[0]
    return name or None


def imports_of(module: str, path: Path, known: dict[str, Path]) -> list[tuple[str, int, bool]]:
    """(imported project module, line, at module level) for every import statement in the file,
    inside functions too."""
    tree = ast.parse(path.read_text(), str(path))
    top = {id(n) for n in tree.body}
    package = module if path.name == "__init__.py" else module.rpartition(".")[0]
    found = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            names = [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                anchor = package.split(".")[: len(package.split(".")) - node.level + 1]
                base = ".".join(anchor + ([base] if base else []))
            # ``from pkg import sub`` imports the submodule; ``from mod import name`` the module
            names = [f"{base}.{a.name}" if f"{base}.{a.name}" in known else base for a in node.names]
        else:
            continue
        for name in names:
            target = _enclosing(name, known)
            if target is not None and target != module:
                found.append((target, node.lineno, id(node) in top))
    return found


@pytest.fixture(scope="module")
def graph() -> dict[str, list[tuple[str, int, bool]]]:
    known = project_modules()
    return {m: imports_of(m, p, known) for m, p in known.items()}


def test_the_graph_sees_the_project(graph):
    assert {"avalanche_onehead.tasks", "avalanche_onehead.tasks.det", "benchmarks.readers",
            "strategies.remedies"} <= set(graph)
    # a relative, a from-package and a function-level import are all edges
    assert "avalanche_onehead.tasks.registry" in {t for t, _, _ in graph["avalanche_onehead.tasks.seg"]}
    assert "avalanche_onehead.tasks.seg" in {t for t, _, _ in graph["avalanche_onehead.tasks"]}
    assert any(not top for _, _, top in graph["avalanche_onehead.training"])


def test_no_import_cycles(graph):
    """Module-level and function-level imports alike: a cycle closed inside a function is
    still a cycle (it only moves the failure to the first call)."""
    sorter = graphlib.TopologicalSorter({m: {t for t, _, _ in edges} for m, edges in graph.items()})
    try:
        sorter.prepare()
    except graphlib.CycleError as e:
        pytest.fail(f"import cycle: {' -> '.join(e.args[1])}")


def test_the_core_imports_benchmarks_and_strategies_only_inside_functions(graph):
    """benchmarks and strategies build on the core, not the other way round: what the core
    still calls of them (the run's assembly in training.py, figures, predict, probes) is
    imported where it runs, never when the core is imported."""
    offenders = [f"{graph_path(m)}:{line} imports {t}" for m, edges in graph.items() if m.split(".")[0] == CORE
                 for t, line, top in edges if top and t.split(".")[0] != CORE]
    assert not offenders, "\n".join(offenders)


def graph_path(module: str) -> str:
    return str(project_modules()[module].relative_to(REPO))


_NAME = "(?:" + "|".join(TASK_NAMES) + ")"
_QUOTED = rf"""['"]{_NAME}['"]"""
TASK_BRANCH = re.compile(
    rf"""(?:==|!=)\s*{_QUOTED}"""  # t == "det"
    rf"""|['"]{_NAME}['"]\s*(?:==|!=)"""  # "det" == t
    rf"""|\bin\s*[(\[{{]\s*{_QUOTED}"""  # t in ("det", ...)
    rf"""|['"]{_NAME}['"]\s+(?:not\s+)?in\b"""  # "det" in order
)


def scanned_files() -> list[Path]:
    files = [p for pkg in PACKAGES for p in (REPO / pkg).rglob("*.py")]
    files = [p for p in files if (REPO / CORE / "tasks") not in p.parents]
    return sorted(files + list((REPO / "experiments").rglob("*.py")) + [REPO / "eval.py"])


@pytest.mark.parametrize("line, hit", [
    ('if t == "det":', True), ("if task != 'seg':", True), ('if "cls" == t:', True),
    ('x = t in ("det", "seg")', True), ("if t in ['cls']:", True), ('if "det" in order:', True),
    ('if "det" not in order:', True), ('name = "det"', False), ('TASKS["det"].label', False),
    ('if t == "detail":', False), ('if mode == "segment":', False),
])
def test_the_task_branch_pattern(line, hit):
    assert bool(TASK_BRANCH.search(line)) is hit


def test_no_task_name_branches_outside_the_task_modules():
    offenders = [f"{p.relative_to(REPO)}:{i}: {line.strip()}" for p in scanned_files()
                 for i, line in enumerate(p.read_text().splitlines(), 1) if TASK_BRANCH.search(line)]
    assert not offenders, "task-name branches (move them into avalanche_onehead/tasks/):\n" + "\n".join(offenders)
