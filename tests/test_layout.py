"""The folder tree shows the pipeline: no module imports from a later stage than its own (cli/ excepted), there is
no import circle, and no file name repeats across layers."""

from __future__ import annotations

import ast
from collections import defaultdict
from pathlib import Path

import defectlite

ROOT = Path(defectlite.__file__).parent
# left to right: a module may import from its own stage and the ones before it
ORDER = ["base", "data", "layers", "models", "train", "runs", "compress", "evaluate", "deploy", "tasks", "pipeline",
         "workflows", "cli"]  # fmt: skip
BASE = {"errors", "utils", "_lazy", "checkpoint", "onnx_file", "cpus"}


def module_name(path: Path) -> str:
    parts = path.relative_to(ROOT.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def stage(module: str) -> str | None:
    parts = module.split(".")
    if parts[0] != "defectlite":
        return None
    if len(parts) == 1 or parts[1] in BASE:
        return "base"
    return parts[1]


def imports(path: Path, *, top_level_only: bool = False) -> list[tuple[str, int]]:
    """defectlite modules imported by ``path`` (function-level imports too, unless ``top_level_only``)."""
    tree = ast.parse(path.read_text())
    nodes = tree.body if top_level_only else ast.walk(tree)
    out = []
    for node in nodes:
        if isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            names = [node.module] + [f"{node.module}.{a.name}" for a in node.names]
        elif isinstance(node, ast.Import):
            names = [a.name for a in node.names]
        else:
            continue
        out += [(n, node.lineno) for n in names if n.startswith("defectlite")]
    return out


MODULES = {module_name(p): p for p in ROOT.rglob("*.py")}


def test_every_stage_is_known():
    assert {stage(m) for m in MODULES} <= set(ORDER), {stage(m) for m in MODULES} - set(ORDER)


def test_no_module_imports_from_a_later_stage():
    bad = []
    for mod, path in MODULES.items():
        me = stage(mod)
        if me == "cli" or mod == "defectlite":  # the package root re-exports the public API lazily
            continue
        for name, line in imports(path):
            other = stage(name)
            if other is not None and ORDER.index(other) > ORDER.index(me):
                bad.append(f"{path.relative_to(ROOT)}:{line} ({me}) imports {name} ({other})")
    assert not bad, "\n".join(bad)


def test_no_import_circle():
    """Tarjan's strongly connected components over the module-level import graph: every component is one module."""
    graph = defaultdict(set)
    for mod, path in MODULES.items():
        for name, _ in imports(path, top_level_only=True):
            target = name if name in MODULES else name.rpartition(".")[0]
            if target in MODULES and target != mod and not mod.startswith(target + "."):
                graph[mod].add(target)
    index, low, stack, on, cycles, counter = {}, {}, [], set(), [], [0]

    def visit(v):
        index[v] = low[v] = counter[0]
        counter[0] += 1
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
                cycles.append(sorted(comp))

    for v in list(MODULES):
        if v not in index:
            visit(v)
    assert not cycles, cycles


def test_no_file_name_repeats_across_layers():
    seen = defaultdict(list)
    for path in ROOT.rglob("*.py"):
        if path.name != "__init__.py":
            seen[path.name].append(str(path.relative_to(ROOT)))
    repeated = {name: where for name, where in seen.items() if len(where) > 1}
    assert not repeated, repeated
