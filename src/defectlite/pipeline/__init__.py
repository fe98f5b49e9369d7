"""A run, end to end: data -> teacher (trained, given, or an ensemble) -> student -> deploy (calibrate, fuse once,
ONNX, parity, INT8) -> test once -> profile -> report. Orchestration only: the run folder is :mod:`defectlite.runs`'
(its layout is documented there), everything that depends on the task is the task's (:mod:`defectlite.tasks`).

- :mod:`~defectlite.pipeline.context`: :class:`RunContext`, the one value every step receives.
- :mod:`~defectlite.pipeline.training`: stages, the teacher source, ``train_run`` / ``resume_run`` / ``train_members``.
- :mod:`~defectlite.pipeline.parallel`: ``nproc`` (torchrun) and ``jobs`` (members several at a time).
- :mod:`~defectlite.pipeline.deployment`: fuse once, export and parity, the one INT8 deployment, profile,
  ``export_run``.
- :mod:`~defectlite.pipeline.reporting`: test once, assemble and write the report.

Every stage resumes: finished stages return at once, an interrupted one continues from its last epoch, and the
deployment steps after training are recomputed from the checkpoints, so a run killed at any point and resumed ends
as an uninterrupted one.
"""

from defectlite.pipeline.context import RunContext, open_context
from defectlite.pipeline.deployment import Deployed, export_and_check, export_run, quantize_and_score
from defectlite.pipeline.training import (
    resolve_teacher,
    resume_run,
    stage_summary,
    train_members,
    train_run,
    train_stage,
)

__all__ = [
    "Deployed",
    "RunContext",
    "export_and_check",
    "export_run",
    "open_context",
    "quantize_and_score",
    "resolve_teacher",
    "resume_run",
    "stage_summary",
    "train_members",
    "train_run",
    "train_stage",
]
