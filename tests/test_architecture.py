"""The package's layers, checked from the source: no import cycles, no upward imports, a public surface.

The layers, lowest first (docs/architecture.md draws them):

* foundation — errors, version, options, atomic, progress, config, hookspecs;
* nn (inference modules) and linalg (C-step algebra);
* core — the contract, the plugin machinery and the LC algorithm;
* integrations and io (files);
* reporting;
* runs (the one-call API and everything around a run);
* testing (the conformance kit) and cli.

A module may import its own layer and the layers below it, never a higher
one. Inside lcpress a module imports names from the module that defines them
— never from a package's ``__init__`` (re-exports are for users), never a
``_private`` name of another module. The built-in plugins, the benchmarks,
the examples and the sample plugin package import only public names.
"""

from __future__ import annotations

import ast
from pathlib import Path

import networkx as nx
import pytest

import lcpress

ROOT = Path(__file__).resolve().parents[1]
SOURCES = {"lcpress": ROOT / "toolkit", "lcpress.plugins": ROOT / "plugins", "lcpress.costmodels": ROOT / "costmodels"}
LAYERS = [
    {"errors", "version", "options", "atomic", "progress", "config", "hookspecs"},
    {"nn", "linalg"},
    {"core"},
    {"integrations", "io"},
    {"reporting"},
    {"runs"},
    {"testing", "cli"},
    {"__main__"},
]
#: What code outside the package may import: the root's names and these modules.
PUBLIC_MODULES = {"lcpress", "lcpress.nn", "lcpress.linalg", "lcpress.testing", "lcpress.integrations.hf",
                  "lcpress.testing.pytest_plugin"}


def _modules() -> dict[str, Path]:
    found = {}
    for package, folder in SOURCES.items():
        for path in sorted(folder.rglob("*.py")):
            parts = list(path.relative_to(folder).with_suffix("").parts)
            if parts[-1] == "__init__":
                parts.pop()
            found[".".join([package, *parts])] = path
    return found


MODULES = _modules()


def _is_package(name: str) -> bool:
    return MODULES.get(name, Path()).name == "__init__.py"


def _imports(name: str, path: Path) -> list[tuple[str, list[str], int]]:
    """(module imported, names taken from it, line) for every import of an lcpress module in ``path``."""
    out = []
    package = name if _is_package(name) else name.rpartition(".")[0]
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            out += [(a.name, [], node.lineno) for a in node.names if a.name.split(".")[0] == "lcpress"]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                anchor = package.split(".")
                anchor = anchor[: len(anchor) - (node.level - 1)]
                base = ".".join(anchor + ([base] if base else []))
            if base.split(".")[0] != "lcpress":
                continue
            names = [a.name for a in node.names]
            submodules = [n for n in names if f"{base}.{n}" in MODULES]
            out += [(f"{base}.{n}", [], node.lineno) for n in submodules]
            rest = [n for n in names if n not in submodules]
            if rest:
                out.append((base, rest, node.lineno))
    return out


def _layer(name: str) -> int | None:
    parts = name.split(".")
    if parts[:2] in (["lcpress", "plugins"], ["lcpress", "costmodels"]) or len(parts) < 2:
        return None
    return next(i for i, members in enumerate(LAYERS) if parts[1] in members)


def _internal_edges() -> list[tuple[str, str, list[str], int]]:
    return [(name, target, names, line) for name, path in MODULES.items() if _layer(name) is not None
            for target, names, line in _imports(name, path)]


def test_every_module_belongs_to_a_layer():
    unplaced = [n for n in MODULES if n.count(".") >= 1 and _layer(n) is None
                and not n.startswith(("lcpress.plugins", "lcpress.costmodels"))]
    assert not unplaced, f"put these modules in a layer of tests/test_architecture.py: {unplaced}"


def test_no_import_cycles():
    graph = nx.DiGraph()
    graph.add_edges_from((a, b) for a, b, _, _ in _internal_edges() if a != b)
    cycles = list(nx.simple_cycles(graph))
    assert not cycles, f"import cycles: {cycles}"


def test_no_module_imports_a_higher_layer():
    upward = [f"{a} (layer {_layer(a)}) imports {b} (layer {_layer(b)}) at line {line}"
              for a, b, _, line in _internal_edges() if _layer(b) is not None and _layer(b) > _layer(a)]
    assert not upward, "\n".join(upward)


def test_core_never_imports_files_runs_reports_or_the_cli():
    bad = [(a, b) for a, b, _, _ in _internal_edges() if a.startswith("lcpress.core")
           and b.startswith(("lcpress.io", "lcpress.runs", "lcpress.reporting", "lcpress.cli", "lcpress.integrations"))]
    assert not bad, bad


def _defined_in(name: str) -> set[str]:
    """Names a module defines itself (functions, classes, assignments), not those it re-exports."""
    tree = ast.parse(MODULES[name].read_text())
    names = set()
    for node in tree.body:
        if isinstance(node, (ast.FunctionDef, ast.ClassDef)):
            names.add(node.name)
        elif isinstance(node, (ast.Assign, ast.AnnAssign)):
            targets = node.targets if isinstance(node, ast.Assign) else [node.target]
            names |= {t.id for t in targets if isinstance(t, ast.Name)}
    return names


def test_inside_lcpress_names_come_from_their_defining_module():
    via_init = [f"{a} imports {names} from the package {b} (line {line}); import from the module defining them"
                for a, b, names, line in _internal_edges()
                if names and _is_package(b) and not set(names) <= _defined_in(b)]
    assert not via_init, "\n".join(via_init)


def test_no_module_imports_a_private_name_of_another():
    private = [f"{a} imports {n} from {b} (line {line})" for a, b, names, line in _internal_edges()
               for n in names if n.startswith("_") and not n.startswith("__")]
    assert not private, "\n".join(private)


def _outside_files() -> list[Path]:
    folders = [ROOT / "plugins", ROOT / "costmodels", ROOT / "benchmarks", ROOT / "examples"]
    return [p for folder in folders for p in sorted(folder.rglob("*.py"))]


@pytest.mark.parametrize("path", _outside_files(), ids=lambda p: str(p.relative_to(ROOT)))
def test_plugins_benchmarks_and_examples_import_only_public_names(path):
    public = set(lcpress.__all__)
    own = "lcpress.plugins" if path.parent.name == "plugins" else "lcpress.costmodels"
    problems = []
    for target, names, line in _imports(f"{own}.{path.stem}", path):
        if target.startswith(("lcpress.plugins", "lcpress.costmodels")):
            continue  # a built-in plugin is public: its helpers may be reused
        if target == "lcpress":
            problems += [f"line {line}: lcpress.{n} is not public" for n in names if n not in public]
        elif target not in PUBLIC_MODULES:
            problems.append(f"line {line}: {target} is not a public module")
    text = path.read_text()
    for attr in sorted(_root_attributes(text)):
        if attr not in public and f"lcpress.{attr}" not in PUBLIC_MODULES and attr not in ("plugins", "costmodels"):
            problems.append(f"lcpress.{attr} is not public")
    assert not problems, f"{path.relative_to(ROOT)}: " + "; ".join(problems)


def _root_attributes(text: str) -> set[str]:
    """Names read as ``lcpress.NAME`` in a source file."""
    found = set()
    for node in ast.walk(ast.parse(text)):
        if isinstance(node, ast.Attribute) and isinstance(node.value, ast.Name) and node.value.id == "lcpress":
            found.add(node.attr)
    return found


def test_every_public_name_exists_and_every_subpackage_says_what_it_holds():
    for name in lcpress.__all__:
        assert hasattr(lcpress, name), name
    for name, path in MODULES.items():
        doc = ast.get_docstring(ast.parse(path.read_text()))
        assert doc, f"{name} ({path.relative_to(ROOT)}) needs a docstring saying what it holds and why"
