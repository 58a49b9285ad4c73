"""The shape of the house, checked from the code's own imports (docs/architecture.md).

Every import counts: at module level, inside functions and under TYPE_CHECKING. The rules:
one namespace (`afmon.*`, never a bare `aggregator` or `collectors`), imports that point one
way between the packages and between the aggregator's subpackages (the table below), and no
cycle between modules.
"""

from __future__ import annotations

import ast
import tomllib
from collections.abc import Iterator
from importlib.metadata import distribution
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
FOLDERS = ("collectors", "aggregator", "dashboard", "alerts")  # installed as afmon.<folder>
OLD_TOPS = {*FOLDERS, "afmon"}

# What each unit may import besides itself. A unit is a package of the four, or a subpackage
# of the aggregator; `afmon.aggregator` alone (its __init__: the version) is open to all.
A = "afmon.aggregator"
WIRE = "afmon.collectors.wire"
ALLOWED: dict[str, set[str]] = {
    "afmon.collectors": set(),
    f"{A}.core": set(),
    f"{A}.store": {f"{A}.core", WIRE},
    f"{A}.identity": {f"{A}.store"},
    f"{A}.ledger": {f"{A}.core", f"{A}.identity", WIRE},
    f"{A}.ingest": {f"{A}.core", f"{A}.store", f"{A}.identity", f"{A}.ledger", WIRE},
    # the query layer resolves accounts to members over time as the ingest does (formats)
    f"{A}.query": {f"{A}.core", f"{A}.store", f"{A}.ledger", f"{A}.identity"},
    # the exported alert signals are computed by the evaluator's own queries (query.signals)
    f"{A}.metrics": {f"{A}.core", f"{A}.store", f"{A}.query"},
    f"{A}.auth": {f"{A}.core", f"{A}.store", f"{A}.identity", f"{A}.query"},
    f"{A}.report": {f"{A}.core", f"{A}.store", f"{A}.query"},
    f"{A}.federation": {f"{A}.core", f"{A}.store", WIRE},
    f"{A}.web": {
        f"{A}.{p}"
        for p in (
            "core",
            "store",
            "identity",
            "ingest",
            "query",
            "metrics",
            "auth",
            "report",
            "federation",
        )
    }
    | {WIRE},
    f"{A}.cli": {
        f"{A}.{p}"
        for p in ("core", "store", "identity", "ingest", "auth", "report", "web", "federation")
    }
    | {WIRE, "afmon.collectors.simulator"},
    # readers above the aggregator: they plug into its web app and CLI, never into each other
    "afmon.dashboard": {A, WIRE},
    "afmon.alerts": {A},
}


def module_name(path: Path) -> str:
    rel = path.relative_to(ROOT).with_suffix("")
    parts = ["afmon", *rel.parts]
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def sources() -> dict[str, Path]:
    return {
        module_name(p): p
        for folder in FOLDERS
        for p in sorted((ROOT / folder).rglob("*.py"))
        if "__pycache__" not in p.parts
    }


def imports(path: Path, module: str, known: set[str]) -> Iterator[tuple[str, int]]:
    """(imported module, line) for every import of ours in the file, at any depth."""
    is_package = path.name == "__init__.py"
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            for alias in node.names:
                yield alias.name, node.lineno
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = module.split(".")
                base = base[: len(base) - node.level + (1 if is_package else 0)]
                target = ".".join([*base, node.module] if node.module else base)
            else:
                target = node.module or ""
            for alias in node.names:  # `from pkg import submodule` imports the submodule
                sub = f"{target}.{alias.name}"
                yield (sub if sub in known else target), node.lineno


def unit_of(module: str) -> str | None:
    if module == A:
        return None
    for unit in sorted(ALLOWED, key=len, reverse=True):
        if module == unit or module.startswith(unit + "."):
            return unit
    return module


def may_import(unit: str, target: str) -> bool:
    if target == A:
        return True
    return any(target == a or target.startswith(a + ".") for a in ALLOWED[unit] | {unit})


GRAPH: dict[str, set[str]] = {}
LINES: dict[tuple[str, str], int] = {}
_SOURCES = sources()
for _mod, _path in _SOURCES.items():
    GRAPH[_mod] = set()
    for _target, _line in imports(_path, _mod, set(_SOURCES)):
        if _target.split(".")[0] in OLD_TOPS:
            GRAPH[_mod].add(_target)
            LINES.setdefault((_mod, _target), _line)


def test_every_import_of_ours_goes_through_the_afmon_namespace() -> None:
    folders = (*FOLDERS, "tests", "bench", "scripts")
    files = [p for folder in folders for p in (ROOT / folder).rglob("*.py")]
    bare = []
    for path in files:
        for target, line in imports(path, "x", set()):
            if target.split(".")[0] in FOLDERS:
                bare.append(f"{path.relative_to(ROOT)}:{line} imports {target}")
    assert bare == []


def test_every_unit_is_in_the_table() -> None:
    units = {unit_of(m) for m in GRAPH} - {None}
    missing = units - set(ALLOWED)
    assert not missing, f"add to ALLOWED (and to docs/architecture.md): {missing}"


def test_imports_point_one_way() -> None:
    wrong = []
    for module, targets in GRAPH.items():
        unit = unit_of(module)
        if unit is None:  # afmon.aggregator itself: the version, nothing else
            assert targets == set(), targets
            continue
        for target in sorted(targets):
            if unit_of(target) != unit and not may_import(unit, target):
                wrong.append(f"{module}:{LINES[(module, target)]} imports {target}")
    assert wrong == []


def _cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected components of more than one node (Tarjan), or a node importing
    itself."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    found: list[list[str]] = []

    def visit(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        on_stack.add(v)
        for w in graph.get(v, ()):
            if w not in graph:
                continue
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
            if len(component) > 1 or v in graph.get(v, ()):
                found.append(sorted(component))

    for v in sorted(graph):
        if v not in index:
            visit(v)
    return found


def _without_package_inits(graph: dict[str, set[str]]) -> dict[str, set[str]]:
    """A package's __init__ may import its own modules to register them (the ledger does):
    that edge is how plug-ins load, not a dependency of theirs on the package."""
    return {m: {t for t in targets if not t.startswith(m + ".")} for m, targets in graph.items()}


def test_no_module_imports_in_a_circle() -> None:
    assert _cycles(_without_package_inits(GRAPH)) == []


def test_the_units_import_in_no_circle() -> None:
    units: dict[str, set[str]] = {}
    for module, targets in GRAPH.items():
        unit = unit_of(module)
        if unit is None:
            continue
        units.setdefault(unit, set()).update(
            u for u in (unit_of(t) for t in targets) if u is not None and u != unit
        )
    assert _cycles(units) == []


def test_the_cycle_finder_finds_a_cycle() -> None:
    assert _cycles({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == [["a", "b", "c"]]
    assert _cycles({"a": {"a"}}) == [["a"]]
    assert _cycles({"a": {"b"}, "b": set()}) == []


@pytest.mark.parametrize(
    ("unit", "target", "allowed"),
    [
        ("afmon.collectors", "afmon.aggregator.store.db", False),
        (f"{A}.store", f"{A}.web.app", False),
        (f"{A}.ledger", f"{A}.ingest.apply", False),
        (f"{A}.web", "afmon.dashboard.app", False),
        (f"{A}.cli", "afmon.alerts.cli", False),
        ("afmon.dashboard", "afmon.alerts.service", False),
        ("afmon.dashboard", f"{A}.query.reads", True),
        (f"{A}.ingest", WIRE, True),
        (f"{A}.ingest", "afmon.collectors.simulator", False),
    ],
)
def test_the_table_refuses_wrong_way_imports(unit: str, target: str, allowed: bool) -> None:
    assert may_import(unit, target) is allowed


def test_plugins_register_into_the_layer_below() -> None:
    """The web app and the `afmon` command import no plug-in: they load what the installed
    distribution names; the ledger's base imports none of its rules."""
    readers = ("afmon.dashboard", "afmon.alerts")
    assert not any(t.startswith(readers) for t in GRAPH[f"{A}.web.app"])
    assert {t for t in GRAPH[f"{A}.cli.main"] if t.startswith(f"{A}.cli.")} == {f"{A}.cli.common"}
    assert not {t for t in GRAPH[f"{A}.ledger.base"] if t.startswith(f"{A}.ledger.")}
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    installed = distribution("afmon").entry_points
    for group in ("afmon.commands", "afmon.web"):
        declared = project["entry-points"][group]
        found = {ep.name: ep.value for ep in installed if ep.group == group}
        assert found == declared, f"reinstall (pip install -e .): {group} is stale"
        for ep in (ep for ep in installed if ep.group == group):
            assert ep.load() is not None


def test_every_package_is_in_pyproject() -> None:
    setuptools = tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["setuptools"]
    packages = {module_name(p) for f in FOLDERS for p in (ROOT / f).rglob("__init__.py")}
    listed = set(setuptools["packages"])
    assert packages == listed
