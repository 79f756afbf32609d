"""The layering a newcomer reads from the tree is the one the code keeps.

- every module imports on its own, in a fresh interpreter (no hidden import-order dependency);
- no import cycle among modules, and none among packages (a package's edges are its modules' imports);
- the layers point one way: datasets <- benchmarks.core/metrics <- benchmarks.suites <- methods <- benchmarks.run;
  the report reads records only (no suites, runner or methods);
- no module imports a private (leading underscore) name from another module.
"""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
PACKAGES = ("benchmarks", "datasets", "methods")


def module_files() -> dict[str, Path]:
    mods = {}
    for pkg in PACKAGES:
        for f in sorted((ROOT / pkg).rglob("*.py")):
            name = ".".join(f.relative_to(ROOT).with_suffix("").parts)
            mods[name.removesuffix(".__init__")] = f
    mods["run_all"] = ROOT / "run_all.py"
    return mods


MODULES = module_files()


def imports_of(name: str) -> list[tuple[str, list[str]]]:
    """(imported module, imported names) for every import statement of a module, local imports included."""
    f = MODULES[name]
    out = []
    for node in ast.walk(ast.parse(f.read_text(), str(f))):
        if isinstance(node, ast.Import):
            out += [(a.name, []) for a in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                parts = name.split(".")[: -node.level + (1 if f.name == "__init__.py" else 0)] or []
                base = ".".join(parts + ([base] if base else []))
            out.append((base, [a.name for a in node.names]))
    return out


def owner(target: str) -> str | None:
    """The project module an import resolves to (a submodule, or the longest module prefix)."""
    while target and target not in MODULES:
        target = target.rpartition(".")[0]
    return target or None


def module_graph() -> dict[str, set[str]]:
    graph = {m: set() for m in MODULES}
    for m in MODULES:
        for base, names in imports_of(m):
            for target in [f"{base}.{n}" for n in names] + [base]:
                dep = owner(target)
                if dep and dep != m:
                    graph[m].add(dep)
                    break
    # a package's __init__ importing its own submodules (registry discovery) is not a dependency on them
    for m, deps in graph.items():
        if MODULES[m].name == "__init__.py":
            graph[m] = {d for d in deps if not d.startswith(m + ".")}
    return graph


def cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected components with more than one node (Tarjan)."""
    index, low, stack, on, out, counter = {}, {}, [], set(), [], [0]

    def visit(v):
        index[v] = low[v] = counter[0]
        counter[0] += 1
        stack.append(v)
        on.add(v)
        for w in graph.get(v, ()):
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            comp = []
            while True:
                w = stack.pop()
                on.discard(w)
                comp.append(w)
                if w == v:
                    break
            if len(comp) > 1:
                out.append(sorted(comp))

    sys.setrecursionlimit(10_000)
    for v in graph:
        if v not in index:
            visit(v)
    return out


def package_of(module: str) -> str:
    return module if MODULES[module].name == "__init__.py" else module.rpartition(".")[0] or module


def test_no_module_cycles():
    assert cycles(module_graph()) == []


def test_no_package_cycles():
    graph: dict[str, set[str]] = {}
    for m, deps in module_graph().items():
        src = package_of(m)
        graph.setdefault(src, set())
        for d in deps:
            dst = package_of(d)
            # a package importing its own subpackages' modules is containment, not a dependency
            if dst != src and not dst.startswith(src + ".") and not src.startswith(dst + "."):
                graph[src].add(dst)
    assert cycles(graph) == []


# (importer prefix, forbidden import prefixes): the direction of the layers
LAYERS = [
    ("datasets", ("benchmarks", "methods", "run_all")),
    (
        "benchmarks.core",
        ("benchmarks.suites", "benchmarks.run", "benchmarks.report", "benchmarks.tools", "methods", "run_all"),
    ),
    (
        "benchmarks.metrics",
        ("benchmarks.core", "benchmarks.suites", "benchmarks.run", "benchmarks.report", "methods", "datasets"),
    ),
    ("benchmarks.suites", ("benchmarks.run", "benchmarks.report", "benchmarks.tools", "methods", "run_all")),
    ("methods", ("benchmarks.run", "benchmarks.report", "benchmarks.tools", "run_all")),
    ("benchmarks.report", ("benchmarks.suites", "benchmarks.run", "benchmarks.tools", "methods", "run_all")),
    ("datasets.adapters", ("datasets.extraction",)),
    ("datasets.encoders", ("datasets.adapters", "datasets.extraction")),
]


def test_layers_point_one_way():
    wrong = []
    for m, deps in module_graph().items():
        for prefix, forbidden in LAYERS:
            if m == prefix or m.startswith(prefix + "."):
                wrong += [f"{m} -> {d}" for d in deps if any(d == f or d.startswith(f + ".") for f in forbidden)]
    assert wrong == []


def test_no_private_name_is_imported_from_another_module():
    wrong = []
    for m in MODULES:
        for base, names in imports_of(m):
            if owner(base) is None:
                continue
            wrong += [f"{m}: from {base} import {n}" for n in names if n.startswith("_") and n != "__future__"]
            if base.rpartition(".")[2].startswith("_") and not base.rpartition(".")[2].startswith("__"):
                family = base.rpartition(".")[0] + "." + base.rpartition(".")[2]
                # a `_family` package of methods is shared code by design; a private module is not
                if not (base.startswith("methods._") and m.startswith("methods.")):
                    wrong.append(f"{m}: imports private module {family}")
    assert wrong == []


def test_every_module_imports_in_a_fresh_interpreter():
    """Each module is imported first by name in one new interpreter (an import cycle that breaks at import time, or a
    module that only works after another was imported, fails here with the module's name)."""
    code = (
        "import importlib, sys, traceback\nbad = []\nfor name in sys.argv[1:]:\n    try:\n"
        "        importlib.import_module(name)\n    except Exception as e:\n        bad.append(f'{name}: {e!r}')\n"
        "print('\\n'.join(bad))\nsys.exit(1 if bad else 0)\n"
    )
    proc = subprocess.run(
        [sys.executable, "-c", code, *sorted(MODULES)], cwd=ROOT, capture_output=True, text=True, timeout=600
    )
    assert proc.returncode == 0, proc.stdout + proc.stderr[-2000:]
