"""Grad-CAM figures of a classification run's report: one test image per class, explained for its true class."""

from __future__ import annotations

import logging
from pathlib import Path

from defectlite.evaluate.gradcam import Explainer, png_bytes, side_by_side, write_png

log = logging.getLogger(__name__)


def explain_per_class(
    run_dir: str | Path, out_dir: str | Path | None = None, *, split: str = "test"
) -> dict[str, Path]:
    """One Grad-CAM figure per class for a run's report (image | overlay, :func:`side_by_side`):
    ``<out_dir>/gradcam_<class>.png``.

    For each class, the first image of ``split`` (from ``splits.csv``) that the deployed model
    classifies correctly is explained for its true class (the first image of the class when none is
    right). Classes without an image in ``split`` are left out.

    Args:
        run_dir: a run folder holding ``config.yaml``, ``splits.csv``, ``model.json`` and ``model.safetensors``.
        out_dir: where to write (default ``run_dir``).

    Returns:
        class name -> PNG path, in class order.

    Raises:
        CheckpointError: no deployed checkpoint in ``run_dir``.
        DataError, ConfigError: the split or the recipe cannot be read, or an image is gone.
    """
    from defectlite.data.locate import resolve_data_path
    from defectlite.data.splits import read_splits_csv
    from defectlite.runs import open_run

    run = open_run(run_dir)
    out = Path(out_dir) if out_dir is not None else run.root
    explainer = Explainer.from_checkpoint(run.deployed)
    root = resolve_data_path(run.config().data.path)
    samples, _ = read_splits_csv(run.splits_csv, root, explainer.classes)
    written: dict[str, Path] = {}
    for index, cls in enumerate(explainer.classes):
        paths = [s.path for s in samples if s.split == split and s.label == index]
        chosen = None
        for path in paths:
            expl = explainer.explain(path, cls)
            chosen = chosen or expl
            if expl.predicted == cls:
                chosen = expl
                break
        if chosen is not None:
            written[cls] = write_png(out / f"gradcam_{cls}.png", png_bytes(side_by_side(chosen)))
    log.info("Grad-CAM: %d overlays in %s (layer %s)", len(written), out, explainer.layer_name)
    return written
