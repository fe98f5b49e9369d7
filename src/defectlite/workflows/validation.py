"""Score an exported model on labelled images: ``defectlite val``, and the ONNX rows of prune / quantise.

Runs on ONNX Runtime through the :class:`~defectlite.deploy.predictor.Predictor` and the model's task runtime
(:class:`defectlite.tasks.base.Runtime`), so it needs neither PyTorch nor scikit-learn: a camera station with the
base install can check a model on a new labelled folder. Images of any size go through the one
preprocessing; classes in the folder that the model does not know are an error.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
from tqdm.auto import tqdm

from defectlite.deploy.predictor import Predictor
from defectlite.errors import DataError
from defectlite.runs import is_run, open_run
from defectlite.utils import atomic_write_json

log = logging.getLogger(__name__)


def model_of(path: str | Path) -> Path:
    """The ONNX file ``defectlite val`` scores: the file given, or the deployed ``model.onnx`` of a run folder.

    Raises:
        CheckpointError: not an ONNX file and not a run folder with one.
    """
    p = Path(path)
    if is_run(p):
        return open_run(p).onnx
    return p


def validate_folder(
    model: str | Path,
    data: str | Path,
    out: str | Path,
    *,
    format: str = "auto",
    split: str | None = None,
    batch_size: int = 32,
    threads: int = 1,
    skip_bad: bool = False,
    progress: bool = True,
    fp32: bool = False,
) -> dict[str, Any]:
    """Score ``model`` (an ONNX file or a run folder) on a labelled folder or list file; write ``out/``.

    Writes ``metrics.json`` and the task's figures (classification: confusion matrices, counts and
    normalised, PNG and CSV) into ``out``.

    Args:
        data: a labelled folder in any layout the task reads (``format`` as in ``train``), or a list file.
        split: only this split of a pre-split folder.
        skip_bad: leave unreadable images and bad label files (a detector's boxes) out, listed in ``metrics.json``,
            instead of failing.
        fp32: score ``model.onnx`` even when the run deployed an INT8 form beside it.

    Returns:
        The task's metrics plus ``model``, ``data``, ``skipped``, ``figures``.

    Raises:
        CheckpointError: missing or invalid model. DataError: unreadable data, unknown classes, unreadable
            images (without ``skip_bad``).
    """
    predictor = Predictor.for_scoring(model_of(model), threads=threads, fp32=fp32)
    runtime, meta = predictor.runtime, predictor.meta
    paths, truths, skipped = runtime.read_labelled(Path(data), meta, format=format, split=split, skip_bad=skip_bad)
    if not len(paths):
        raise DataError(f"{data}: no labelled images found")
    results: list[Any] = []
    kept: list[int] = []
    bar = tqdm(total=len(paths), desc="val", unit="img", disable=not progress, leave=False)
    for i in range(0, len(paths), batch_size):
        chunk = paths[i : i + batch_size]
        for j, res in enumerate(predictor.predict_each(chunk, [str(p) for p in chunk])):
            if isinstance(res, DataError):
                skipped.append((str(chunk[j]), str(res).removeprefix(f"{chunk[j]}: ")))
            else:
                results.append(res)
                kept.append(i + j)
        bar.update(len(chunk))
    bar.close()
    if skipped and not skip_bad:
        lines = "\n".join(f"  {p}: {why}" for p, why in skipped[:20])
        raise DataError(f"{len(skipped)} unreadable image(s):\n{lines}\n(use --skip-bad to leave them out)")
    if not results:
        raise DataError(f"{data}: none of the {len(paths)} images could be read")
    metrics = runtime.score(results, _take(truths, kept), meta)
    out = Path(out)
    figures = runtime.write_figures(metrics, meta, out, "confusion")
    report = {**metrics, "task": predictor.task, "model": str(predictor.path), "data": str(data), "skipped": skipped,
              "figures": figures}  # fmt: skip
    atomic_write_json(out / "metrics.json", report)
    return report


def _take(truths: Any, idx: Sequence[int]) -> Any:
    return truths[np.asarray(idx)] if isinstance(truths, np.ndarray) else [truths[i] for i in idx]


def score_split(onnx_path: str | Path, images: np.ndarray, truths: Any, sizes: Sequence[tuple[int, int]]) -> dict:
    """Metrics of an ONNX model on already-decoded uint8 images (N, C, H, W) of a run's split (prune, quantise).

    Args:
        truths: ground truth as the task's runtime scores it (classification: class indices (N,)).
        sizes: original (H, W) of each image (detection maps boxes back to them).
    """
    return Predictor.for_scoring(onnx_path).score(images, truths, sizes)


def score_run_splits(onnx_path: str | Path, task: Any, data: Any) -> dict[str, Any]:
    """Validation and test metrics of an ONNX model on a run's data: ``{"val": {...}, "test": {...}}``."""
    return {split: score_split(onnx_path, *task.split_truth(data, split)) for split in ("val", "test")}
