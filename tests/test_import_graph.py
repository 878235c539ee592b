"""The house's shape: no import cycles among the project's modules, the core package
importing neither ``benchmarks`` nor ``strategies`` at module level (its ``commands``, the layer
that drives runs, may), thin scripts that import no other script and edit no ``sys.path``
(``eval.py`` keeps one line, to run from a checkout), tests that import packages rather than
load scripts by path, and no task-name branches (``t == "det"``) outside the task modules."""
from __future__ import annotations

import ast
import graphlib
import re
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
PACKAGES = ("avalanche_onehead", "benchmarks", "strategies")
CORE = "avalanche_onehead"
DRIVER = "avalanche_onehead.commands"  # the commands: may import benchmarks and strategies
SCRIPTS = sorted([*(REPO / "experiments").glob("*.py"), REPO / "eval.py"])
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
    offenders = [f"{graph_path(m)}:{line} imports {t}" for m, edges in graph.items()
                 if m.split(".")[0] == CORE and not (m == DRIVER or m.startswith(DRIVER + "."))
                 for t, line, top in edges if top and t.split(".")[0] != CORE]
    assert not offenders, "\n".join(offenders)


def test_the_commands_are_declared_console_scripts():
    """Every command module has a ``main`` and a console command in pyproject.toml."""
    import tomllib

    scripts = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]["scripts"]
    targets = {v.split(":")[0] for v in scripts.values()}
    commands = {module_name(p) for p in (REPO / DRIVER.replace(".", "/")).glob("*.py") if p.name != "__init__.py"}
    assert commands <= targets, sorted(commands - targets)
    for name, target in scripts.items():
        module, _, func = target.partition(":")
        assert name.startswith("onehead-") and func == "main", (name, target)
        assert module in project_modules(), target
        assert "def main(" in project_modules()[module].read_text(), target


def test_scripts_are_thin_and_import_no_other_script():
    """A script imports the package (its command's ``main``), never another script, and edits
    ``sys.path`` only in ``eval.py`` (which a TA runs from a checkout without installing it)."""
    script_names = {p.stem for p in SCRIPTS}
    for path in SCRIPTS:
        tree = ast.parse(path.read_text(), str(path))
        imported = {a.name.split(".")[0] for n in ast.walk(tree) if isinstance(n, ast.Import) for a in n.names}
        imported |= {(n.module or "").split(".")[0] for n in ast.walk(tree) if isinstance(n, ast.ImportFrom)}
        assert not imported & script_names, (path.name, imported & script_names)
        edits = path.read_text().count("sys.path.insert") + path.read_text().count("sys.path.append")
        assert edits == (1 if path.name == "eval.py" else 0), (path.name, edits)
        assert len([n for n in tree.body if isinstance(n, (ast.FunctionDef, ast.ClassDef))]) == 0, path.name


def test_no_test_loads_a_script_by_path():
    offenders = [f"{p.name}:{i}" for p in sorted((REPO / "tests").glob("*.py")) if p.name != Path(__file__).name
                 for i, line in enumerate(p.read_text().splitlines(), 1)
                 if re.search(r"spec_from_file_location|runpy|syspath_prepend|sys\.path\.(insert|append)", line)]
    assert not offenders, offenders


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
