"""The task table: what a run learns (``classify``, ``detect``, ...), one line per task. Torch-free and lazy.

A task is one folder under ``tasks/`` (as Ultralytics keeps ``models/yolo/{classify,detect}/``): its training half
(:class:`~defectlite.tasks.base.Task`: data, models, objectives, evaluation, report; PyTorch) and its inference half
(a :class:`~defectlite.tasks.base.Runtime`: decoding, scoring, drawing; NumPy only, so a camera station without
PyTorch runs it). The pipeline, the CLI, ``val``, the Predictor and the service find a task here and nowhere else,
and nothing outside ``tasks/`` compares a task name, so a new task is a folder plus one line of :data:`TASKS` (or
one :func:`register_task` call for a task that lives in another package).

This module imports neither PyTorch nor a task: the classes load on first use from the dotted paths of the table.
"""

from __future__ import annotations

import difflib
import importlib
from collections.abc import Mapping
from dataclasses import dataclass
from importlib import resources
from pathlib import Path
from typing import TYPE_CHECKING, Any

from defectlite.errors import CheckpointError, ConfigError

if TYPE_CHECKING:  # pragma: no cover - types only
    from defectlite.tasks.base import Runtime, Task


@dataclass(frozen=True)
class TaskOption:
    """A command-line option of ``defectlite train`` that a task adds (e.g. ``--good NAME`` of anomaly detection).

    Attributes:
        flag: the option, e.g. ``--good``.
        key: the recipe field it sets, e.g. ``data.good`` (the value is checked as ``--set KEY=VALUE`` is).
        help: the ``--help`` text.
        metavar: the value's name in ``--help``.
    """

    flag: str
    key: str
    help: str
    metavar: str = "VALUE"


@dataclass(frozen=True)
class TaskEntry:
    """One line of the task table.

    Attributes:
        task: ``"package.module:Class"`` of the :class:`~defectlite.tasks.base.Task` (the training half).
        runtime: ``"package.module:Class"`` of the :class:`~defectlite.tasks.base.Runtime` (the inference half,
            imports no PyTorch).
        options: extra ``train`` options of the task.
    """

    task: str
    runtime: str
    options: tuple[TaskOption, ...] = ()

    @property
    def package(self) -> str:
        """The task's folder as a package (the task module's parent), e.g. ``defectlite.tasks.detect``."""
        return self.task.partition(":")[0].rpartition(".")[0]


DEFAULT_TASK = "classify"  # what a recipe, card, run or ONNX file without a task is (older versions wrote none)

_T = "defectlite.tasks"
TASKS: dict[str, TaskEntry] = {  # one line per task
    "classify": TaskEntry(f"{_T}.classify.task:ClassifyTask", f"{_T}.classify.runtime:ClassifyRuntime"),
    "detect": TaskEntry(f"{_T}.detect.task:DetectTask", f"{_T}.detect.runtime:DetectRuntime"),
}

_LOADED: dict[tuple[str, str], Any] = {}


def task_name(record: Mapping[str, Any] | None) -> str:
    """The task of a card, run manifest, report or ONNX metadata: its ``task`` field, or :data:`DEFAULT_TASK` for
    one written before the field existed. The one place where a missing task is read."""
    value = (record or {}).get("task")
    return DEFAULT_TASK if value is None else value


def register_task(name: str, entry: TaskEntry) -> None:
    """Add (or replace) the task ``name``: a task of another package plugs in with this one call."""
    TASKS[name] = entry
    for key in [k for k in _LOADED if k[0] == name]:
        del _LOADED[key]


def task_names() -> list[str]:
    """The names of the known tasks, sorted."""
    return sorted(TASKS)


def _entry(name: str, error: type[Exception]) -> TaskEntry:
    if name not in TASKS:
        close = difflib.get_close_matches(str(name), task_names(), n=1)
        hint = f" (did you mean {close[0]}?)" if close else ""
        raise error(f"task {name!r} is not one of {', '.join(task_names())}{hint}")
    return TASKS[name]


def _load(name: str, part: str, error: type[Exception]) -> Any:
    if (name, part) not in _LOADED:
        module, _, attr = getattr(_entry(name, error), part).partition(":")
        _LOADED[(name, part)] = getattr(importlib.import_module(module), attr)()
    return _LOADED[(name, part)]


def get_task(name: str) -> Task:
    """The :class:`~defectlite.tasks.base.Task` called ``name`` (one instance, made on first use).

    Raises:
        ConfigError: no such task (the message lists the known ones and a close match).
    """
    return _load(name, "task", ConfigError)


def get_runtime(name: str) -> Runtime:
    """The :class:`~defectlite.tasks.base.Runtime` of the task ``name``; imports no PyTorch.

    Raises:
        CheckpointError: no such task (a model of a newer defectlite or of a plug-in that is not installed).
    """
    try:
        return _load(name, "runtime", CheckpointError)
    except CheckpointError as e:
        raise CheckpointError(f"unknown model task {name!r}: {e}") from None


def task_options() -> list[tuple[str, TaskOption]]:
    """(task name, option) of every task's extra ``train`` option, in table order."""
    return [(name, opt) for name, entry in TASKS.items() for opt in entry.options]


def recipe_dirs() -> list[Path]:
    """The ``recipes/`` folders that tasks ship inside their own folder (those that exist)."""
    out = []
    for entry in TASKS.values():
        try:
            folder = Path(str(resources.files(entry.package) / "recipes"))
        except ModuleNotFoundError:
            continue
        if folder.is_dir():
            out.append(folder)
    return out


__all__ = [
    "DEFAULT_TASK",
    "TASKS",
    "TaskEntry",
    "TaskOption",
    "get_runtime",
    "get_task",
    "recipe_dirs",
    "register_task",
    "task_name",
    "task_names",
    "task_options",
]
