"""The package's shape, read from the source (no imports run): dependencies go one way,
``functional -> ops -> backends -> kernels``, with no import cycle anywhere inside
``fastvae`` (function-local imports included) and no file past ~500 lines."""
from __future__ import annotations

import ast
import os

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
# Installed names of the source folders (kernels/ installs as fastvae.kernels).
SOURCES = {"fastvae": os.path.join(ROOT, "fastvae"),
           "fastvae.kernels": os.path.join(ROOT, "kernels")}
# Who may not import whom: a module under the key imports nothing under the values.
LAYERS = {
    "fastvae.kernels": ("fastvae.backends", "fastvae.ops", "fastvae.functional", "fastvae.loss",
                        "fastvae.models", "fastvae.train", "fastvae.evaluation", "fastvae.cli",
                        "fastvae.bench", "fastvae.reference", "fastvae.validation"),
    "fastvae.backends": ("fastvae.ops", "fastvae.functional", "fastvae.loss", "fastvae.models",
                         "fastvae.train", "fastvae.evaluation", "fastvae.cli", "fastvae.bench"),
    "fastvae.ops": ("fastvae.functional", "fastvae.loss", "fastvae.models", "fastvae.train",
                    "fastvae.evaluation", "fastvae.cli", "fastvae.bench"),
}
MAX_LINES = 500


def _modules():
    """{module name: path} of every .py file of the package."""
    out = {}
    for package, folder in SOURCES.items():
        for dirpath, dirnames, files in os.walk(folder):
            dirnames[:] = [d for d in dirnames if d != "__pycache__"]
            rel = os.path.relpath(dirpath, folder)
            parts = [] if rel == "." else rel.split(os.sep)
            if package == "fastvae" and parts[:1] == ["kernels"]:
                continue
            for f in files:
                if f.endswith(".py"):
                    stem = [] if f == "__init__.py" else [f[:-3]]
                    out[".".join([package, *parts, *stem])] = os.path.join(dirpath, f)
    return out


def _imports(name: str, path: str, modules) -> set:
    """The package modules ``name`` imports, wherever the import statement stands."""
    is_package = path.endswith("__init__.py")
    here = name if is_package else name.rsplit(".", 1)[0]
    with open(path) as f:
        tree = ast.parse(f.read(), path)
    found = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            targets = [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = here.split(".")
                base = base[:len(base) - (node.level - 1)]
                module = ".".join(base + ([node.module] if node.module else []))
            else:
                module = node.module or ""
            targets = [f"{module}.{a.name}" if f"{module}.{a.name}" in modules else module
                       for a in node.names]
        else:
            continue
        found.update(t for t in targets if t in modules and t != name)
    return found


def _graph():
    modules = _modules()
    return modules, {n: _imports(n, p, modules) for n, p in modules.items()}


def _cycles(graph):
    """Strongly connected components of more than one module (Tarjan)."""
    index, low, stack, on, out = {}, {}, [], set(), []

    def visit(v):
        index[v] = low[v] = len(index)
        stack.append(v)
        on.add(v)
        for w in graph[v]:
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

    for v in graph:
        if v not in index:
            visit(v)
    return out


def test_the_graph_is_read():
    modules, graph = _graph()
    assert "fastvae.ops.elbo" in modules and "fastvae.kernels.elbo" in modules
    assert "fastvae.backends" in graph["fastvae.ops.elbo"]
    assert "fastvae.kernels.elbo" in graph["fastvae.backends.triton_backend.elbo"]


def test_no_import_cycle():
    assert _cycles(_graph()[1]) == []


def test_a_cycle_would_be_found():
    assert _cycles({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == [["a", "b", "c"]]


@pytest.mark.parametrize("lower", sorted(LAYERS))
def test_no_upward_import(lower):
    _, graph = _graph()
    bad = [(m, t) for m, targets in graph.items() if m == lower or m.startswith(lower + ".")
           for t in targets for up in LAYERS[lower] if t == up or t.startswith(up + ".")]
    assert bad == [], f"{lower} must not import {bad}"


def test_files_stay_small():
    big = {}
    for path in _modules().values():
        with open(path) as f:
            n = sum(1 for _ in f)
        if n > MAX_LINES:
            big[os.path.relpath(path, ROOT)] = n
    assert big == {}, f"files over {MAX_LINES} lines: {big}"
