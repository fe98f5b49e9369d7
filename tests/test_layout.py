"""The folder tree shows the pipeline: no module imports from a later stage than its own (cli/ excepted), there is
no import circle, and no file name repeats across layers (a task folder's files excepted).

A task is one folder, ``tasks/<name>/``, in two halves: its inference half (the runtime named in the task table and
every module of the folder it imports) sits below ``deploy/``, which reads runtimes through the table, and imports no
PyTorch; its training half sits above ``deploy/``. The table (``tasks/__init__.py``) is a base module: torch-free,
it names the classes by dotted path. Outside ``tasks/`` no module compares a task name."""

from __future__ import annotations

import ast
from collections import defaultdict
from pathlib import Path

import defectlite

ROOT = Path(defectlite.__file__).parent
# left to right: a module may import from its own stage and the ones before it
ORDER = ["base", "data", "layers", "models", "train", "runs", "compress", "evaluate", "runtimes", "deploy", "tasks",
         "pipeline", "workflows", "cli"]  # fmt: skip
BASE = {"errors", "utils", "_lazy", "checkpoint", "onnx_file", "cpus"}
TORCH = ("torch", "torchvision", "timm", "torch_pruning", "pytorch_grad_cam", "safetensors.torch")


def module_name(path: Path) -> str:
    parts = path.relative_to(ROOT.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def stage(name: str) -> str | None:
    """The stage of a module, or of the module an imported name belongs to."""
    module = name if name in MODULES or name.rpartition(".")[0] not in MODULES else name.rpartition(".")[0]
    parts = module.split(".")
    if parts[0] != "defectlite":
        return None
    if len(parts) == 1 or parts[1] in BASE or module == "defectlite.tasks":  # the task table is torch-free, base
        return "base"
    if parts[1] == "tasks":  # tasks.base, each task folder's __init__ and inference half: below deploy
        return "runtimes" if module in INFERENCE or module == "defectlite.tasks.base" or len(parts) == 3 else "tasks"
    return parts[1]


def imports(path: Path, *, top_level_only: bool = False) -> list[tuple[str, int]]:
    """defectlite modules imported by ``path`` (function-level imports too, unless ``top_level_only``)."""
    tree = ast.parse(path.read_text())
    blocks = [b for b in ast.walk(tree) if isinstance(b, ast.If) and getattr(b.test, "id", "") == "TYPE_CHECKING"]
    typing_only = {id(n) for b in blocks for n in ast.walk(b)}  # imports for type checkers, never run
    nodes = tree.body if top_level_only else ast.walk(tree)
    out = []
    for node in nodes:
        if id(node) in typing_only:
            continue
        if isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            names = [node.module] + [f"{node.module}.{a.name}" for a in node.names]
        elif isinstance(node, ast.Import):
            names = [a.name for a in node.names]
        else:
            continue
        out += [(n, node.lineno) for n in names if n.startswith("defectlite")]
    return out


MODULES = {module_name(p): p for p in ROOT.rglob("*.py")}


def inference_half() -> set[str]:
    """The task table's runtime modules and every module of a task folder they import (transitively)."""
    from defectlite.tasks import TASKS

    todo = [e.runtime.partition(":")[0] for e in TASKS.values() if e.runtime.startswith("defectlite.")]
    seen: set[str] = set()
    while todo:
        mod = todo.pop()
        if mod in seen or mod not in MODULES:
            continue
        seen.add(mod)
        for name, _ in imports(MODULES[mod]):
            target = name if name in MODULES else name.rpartition(".")[0]
            if target.startswith("defectlite.tasks.") and target != "defectlite.tasks.base":
                todo.append(target)
    return seen


INFERENCE = inference_half()


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
        if path.name != "__init__.py" and path.parent.parent != ROOT / "tasks":  # a task folder names files freely
            seen[path.name].append(str(path.relative_to(ROOT)))
    repeated = {name: where for name, where in seen.items() if len(where) > 1}
    assert not repeated, repeated


def test_every_task_has_an_inference_half_that_imports_no_torch():
    """By import, not by behaviour: no module of an inference half names PyTorch (or a library built on it) in any
    import statement, top level or inside a function."""
    from defectlite.tasks import TASKS

    runtimes = {e.runtime.partition(":")[0] for e in TASKS.values()}
    assert (
        runtimes <= INFERENCE and {"defectlite.tasks.classify.runtime", "defectlite.tasks.detect.runtime"} <= runtimes
    )
    assert {"defectlite.tasks.detect.decode", "defectlite.tasks.detect.metrics"} <= INFERENCE
    bad = []
    base = {"defectlite.tasks", "defectlite.tasks.base"}  # the table and the contract: no torch at module level
    for mod in sorted(INFERENCE | base):
        tree = ast.parse(MODULES[mod].read_text())
        for node in tree.body if mod in base else ast.walk(tree):
            names = [a.name for a in node.names] if isinstance(node, ast.Import) else []
            if isinstance(node, ast.ImportFrom) and node.level == 0:
                names = [node.module or ""]
            bad += [f"{mod}:{node.lineno} imports {n}" for n in names if n.split(".")[0] in TORCH or n in TORCH]
    assert not bad, "\n".join(bad)


def test_no_module_outside_tasks_compares_a_task_name():
    """``task == "detect"`` outside ``tasks/`` is a leak: the task says what differs (the table, its hooks)."""
    from defectlite.tasks import TASKS

    names = set(TASKS)
    bad = []
    for mod, path in MODULES.items():
        if mod == "defectlite.tasks" or mod.startswith("defectlite.tasks."):
            continue
        for node in ast.walk(ast.parse(path.read_text())):
            if not isinstance(node, ast.Compare):
                continue
            consts = [node.left, *node.comparators]
            consts += [e for c in consts if isinstance(c, (ast.Tuple, ast.List, ast.Set)) for e in c.elts]
            if any(isinstance(c, ast.Constant) and c.value in names for c in consts):
                bad.append(f"{path.relative_to(ROOT)}:{node.lineno}")
    assert not bad, bad


def test_the_task_table_names_modules_that_exist():
    from defectlite.tasks import TASKS

    for name, entry in TASKS.items():
        for dotted in (entry.task, entry.runtime):
            module, _, attr = dotted.partition(":")
            assert module in MODULES and attr, (name, dotted)
            assert f"class {attr}" in MODULES[module].read_text(), (name, dotted)
