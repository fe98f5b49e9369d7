"""Task runtimes: how the outputs of an exported model become answers (NumPy only, no PyTorch).

An ONNX file says which task it is (``task`` in its metadata; files exported before it was recorded are
``classify``). The :class:`~defectlite.deploy.predictor.Predictor`, ``defectlite predict``, ``val`` and the
HTTP service look the task's runtime up here and never branch on the task themselves.

A runtime is an object with::

    name: str                                         # the task name
    check(meta, outputs) -> None                      # refuse metadata that does not fit the model
                                                      # (outputs: ONNX Runtime's output descriptions)
    postprocess(outputs, meta, sizes, **options)      # list of raw output arrays -> one result per image
    as_dict(result, meta) -> dict                     # JSON (API, --json)
    as_rows(result, meta) -> list[dict[str, str]]     # CSV rows / printed lines (one per class or box)
    draw(source, result, meta) -> PIL.Image           # the answer drawn on the image (--save-images)
    options: tuple[str, ...]                          # keyword options postprocess accepts (e.g. conf, iou)
    columns: tuple[str, ...]                          # the keys of as_rows (every row has them, maybe empty)
    eval_options: dict                                # the options scoring uses (detection: conf 0.001)
    score_key: str                                    # the headline metric of score() (accuracy, map50)
    read_labelled(root, meta, format=, split=, skip_bad=)  # a labelled folder -> (paths, ground truth, bad files)
    score(results, truths, meta) -> dict              # metrics; headline(), summary(), report_lines(),
                                                      # write_figures() present them

Built-in runtimes are imported on first use; :func:`register_runtime` adds others (a task registered with
``defectlite.tasks.register_task`` registers its runtime too).
"""

from __future__ import annotations

import difflib
import importlib
from typing import Any

from defectlite.errors import CheckpointError

_BUILTIN = {
    "classify": "defectlite.deploy.labels:ClassifyRuntime",
    "detect": "defectlite.deploy.det_runtime:DetectRuntime",
}
_RUNTIMES: dict[str, Any] = {}


def register_runtime(runtime: Any) -> None:
    """Make ``runtime`` the runtime of the task ``runtime.name`` (replacing an earlier one of that name)."""
    _RUNTIMES[runtime.name] = runtime


def get_runtime(task: str) -> Any:
    """The runtime of ``task``.

    Raises:
        CheckpointError: no runtime is known for that task (the model was exported by a newer defectlite or a
            plug-in that is not installed).
    """
    if task not in _RUNTIMES and task in _BUILTIN:
        module, _, attr = _BUILTIN[task].partition(":")
        register_runtime(getattr(importlib.import_module(module), attr)())
    if task not in _RUNTIMES:
        known = sorted(set(_BUILTIN) | set(_RUNTIMES))
        close = difflib.get_close_matches(str(task), known, n=1)
        hint = f"; did you mean {close[0]}?" if close else ""
        raise CheckpointError(f"unknown model task {task!r} (known: {', '.join(known)}){hint}")
    return _RUNTIMES[task]
