"""The one value every step of a run receives: the run folder, its recipe, its task, its data and its shared card."""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Any

from defectlite.errors import DataError
from defectlite.runs import Run
from defectlite.tasks import get_task
from defectlite.tasks.base import Card, Task, TaskData
from defectlite.train.config import RecipeCfg

log = logging.getLogger(__name__)


@dataclass
class RunContext:
    """A run opened for work: what :func:`open_context` read, passed whole instead of five arguments.

    Attributes:
        run: the run folder; cfg: its resolved recipe; task: its task; data: its decoded, split data;
        card: the card fields every model of the run shares (:meth:`Task.card`); progress: show progress bars.
    """

    run: Run
    cfg: RecipeCfg
    task: Task
    data: TaskData
    card: Card
    progress: bool = True


def open_context(run: Run, *, progress: bool = True) -> RunContext:
    """Check the run's recipe against its task, then read (or re-read) its data.

    Raises:
        ConfigError: the recipe does not fit the task. DataError: unreadable data.
    """
    cfg = run.config()
    task = get_task(run.task)
    task.check_config(cfg)
    data = task.load_data(cfg, run, progress)
    log.info("data: %s, classes %s, split %s", data.root, data.classes, data.counts())
    return RunContext(run, cfg, task, data, task.card(cfg, data), progress)


def check_eval_splits(ctx: RunContext) -> None:
    """Refuse data whose val or test split is empty before anything is trained: a run selects its epoch on val and
    reports test.

    Raises:
        DataError: naming the empty split(s), the counts and the recipe's split ratios.
    """
    counts = ctx.data.counts()
    empty = [s for s in ("val", "test") if not counts.get(s)]
    if empty:
        raise DataError(
            f"{ctx.data.root}: the {' and '.join(empty)} split{'s are' if len(empty) > 1 else ' is'} empty ({counts}); "
            "a run selects its epoch on val and scores test: give each a share (data.split, now "
            f"{list(ctx.cfg.data.split)}) or more images"
        )


def data_summary(data: TaskData) -> dict[str, Any]:
    """What the report says of the data: where, which layout, classes, split counts, leaks, skipped files."""
    return {
        "root": str(data.root),
        "format": data.format,
        "classes": list(data.classes),
        "counts": data.counts(),
        "leaks": len(data.leaks),
        "dropped_leaks": data.dropped_leaks,
        "leaked": [vars(leak) for leak in data.leaks],
        "skipped": data.skipped,
        "warnings": list(getattr(data, "warnings", [])),
    }
