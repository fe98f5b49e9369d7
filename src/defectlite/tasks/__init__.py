"""Tasks: what a run learns (``classify``, ``detect``), each one object that owns exactly what differs.

A task (see :class:`defectlite.tasks.base.Task`) reads its data and splits it, builds its model and
objective, feeds the shared training loop (:class:`defectlite.train.loop.StageData`), evaluates, writes
its part of the report, and says what goes into the ONNX file; its runtime
(:mod:`defectlite.deploy.runtime`) turns the ONNX outputs into answers. The pipeline, the CLI, ``val``,
the Predictor and the service dispatch on the task here and nowhere else, so a new task adds files.

Built-in tasks are imported on first use (``defectlite.tasks.classify``, ``defectlite.tasks.detect``);
:func:`register_task` adds others.
"""

from __future__ import annotations

import difflib
import importlib
from typing import Any

from defectlite.deploy.runtime import register_runtime
from defectlite.errors import ConfigError

_BUILTIN = {
    "classify": "defectlite.tasks.classify:ClassifyTask",
    "detect": "defectlite.tasks.detect:DetectTask",
}
_TASKS: dict[str, Any] = {}


def register_task(task: Any) -> None:
    """Register ``task`` under ``task.name`` together with its runtime (``task.runtime``)."""
    _TASKS[task.name] = task
    register_runtime(task.runtime)


def get_task(name: str) -> Any:
    """The task called ``name``.

    Raises:
        ConfigError: no such task (the message lists the known ones).
    """
    if name not in _TASKS and name in _BUILTIN:
        module, _, attr = _BUILTIN[name].partition(":")
        register_task(getattr(importlib.import_module(module), attr)())
    if name not in _TASKS:
        known = task_names()
        close = difflib.get_close_matches(str(name), known, n=1)
        hint = f" (did you mean {close[0]}?)" if close else ""
        raise ConfigError(f"task: {name!r} is not one of {', '.join(known)}{hint}")
    return _TASKS[name]


def task_names() -> list[str]:
    """Names of the built-in and registered tasks."""
    return sorted(set(_BUILTIN) | set(_TASKS))


__all__ = ["get_task", "register_task", "task_names"]
