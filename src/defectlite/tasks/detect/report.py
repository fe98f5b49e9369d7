"""Report figures and markdown of a detection evaluation: PR curves, confusion matrix, an image grid with boxes.

Every input comes from :func:`defectlite.tasks.detect.metrics.detection_metrics` (``metrics``) or follows its
conventions: boxes ``(n, 4)`` float ``x1, y1, x2, y2`` in the pixels of the image they are drawn on. Files are written
atomically (``defectlite.utils.atomic_write``) with matplotlib's Agg backend.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from defectlite.evaluate.report import pct, pyplot, save_figure, write_confusion

# file names the run report links to (relative to the run folder)
PR_PNG = "pr_curves.png"
CONFUSION_STEM = "confusion_det"
GRID_PNG = "det_grid.png"
BACKGROUND = "background"


def write_pr_curves(metrics: dict[str, Any], classes: Sequence[str], png_path: Path) -> Path:
    """Plot the per-class precision-recall curves at IoU 0.5 and their mean (whose area is mAP@0.5).

    The curves are COCO's interpolated precision on its 101-point recall grid (``metrics["pr_curves"]``); classes
    without ground truth have none and are named in the title.

    Args:
        metrics: the dict of ``detection_metrics``.
        classes: class names (K), the order of the legend.
        png_path: the PNG to write.

    Raises:
        KeyError: ``metrics`` lacks ``pr_curves`` or ``per_class`` entries of ``classes``.
    """
    pr = metrics["pr_curves"]
    recall = np.asarray(pr["recall"])
    plt = pyplot()
    fig, ax = plt.subplots(figsize=(6.4, 4.8))
    curves, missing = [], []
    for i, c in enumerate(classes):
        precision = pr["precision"][c]
        if precision is None:
            missing.append(c)
            continue
        curves.append(precision)
        ap50 = metrics["per_class"][c]["ap50"]
        ax.plot(recall, precision, lw=1.2, color=_colour(plt, i), label=f"{c} {ap50:.3f}")
    if curves:
        ax.plot(recall, np.mean(curves, axis=0), lw=3, color="black", label=f"all classes {metrics['map50']:.3f}")
    ax.set_xlim(0, 1)
    ax.set_ylim(0, 1.02)
    ax.set_xlabel("recall")
    ax.set_ylabel("precision (interpolated)")
    title = f"precision-recall at IoU {pr['iou']:g} (legend: AP@{pr['iou']:g})"
    if missing:
        title += f"\nno ground truth: {', '.join(missing)}"
    ax.set_title(title, fontsize=10)
    ax.grid(alpha=0.3)
    ax.legend(loc="lower left", fontsize=8)
    fig.tight_layout()
    save_figure(fig, png_path, dpi=120)
    return Path(png_path)


def write_det_confusion(confusion: Sequence[Sequence[int]], classes: Sequence[str], stem: Path) -> list[Path]:
    """Write the (K + 1) x (K + 1) detection confusion matrix: counts and normalised by true row, PNG + CSV each.

    Files: ``<stem>.png/.csv`` (counts) and ``<stem>_norm.png/.csv`` (each true row divided by its sum; the
    background row — false alarms — by the number of false alarms).

    Args:
        confusion: ``metrics["confusion"]``, rows = true class, columns = predicted, background last.
        classes: class names (K).
        stem: path without suffix.

    Raises:
        ValueError: ``confusion`` is not (K + 1) x (K + 1).
    """
    k = len(classes)
    if len(confusion) != k + 1 or any(len(r) != k + 1 for r in confusion):
        raise ValueError(f"expected a {k + 1} x {k + 1} confusion matrix (classes + background)")
    labels = [*classes, BACKGROUND]
    stem = Path(stem)
    norm = stem.with_name(stem.name + "_norm")
    write_confusion(confusion, labels, stem, "detections (counts)")
    write_confusion(confusion, labels, norm, "detections (fraction of true row)", normalize=True)
    return [stem.with_suffix(s) for s in (".png", ".csv")] + [norm.with_suffix(s) for s in (".png", ".csv")]


def write_det_grid(
    images: Sequence[np.ndarray],
    preds: Sequence[Any],
    gts: Sequence[tuple[np.ndarray, np.ndarray]],
    classes: Sequence[str],
    png_path: Path,
    max_images: int = 12,
    *,
    conf: float = 0.25,
) -> Path:
    """Draw true boxes (green, dashed, class below) and predictions (a colour per class, class and score) on a grid.

    Args:
        images: uint8 images, each ``(C, H, W)`` with C = 1 or 3, ``(H, W, 3)`` or ``(H, W)``; an array whose first
            dimension is 1 or 3 is read as channels first.
        preds: per image, detections with ``.boxes`` (n, 4) xyxy pixels, ``.scores`` (n,), ``.labels`` (n,).
        gts: per image ``(boxes (m, 4) xyxy pixels, labels (m,))``. Boxes are in the pixels of the image given.
        classes: class names (K).
        png_path: the PNG to write.
        max_images: the first this many images are drawn, 4 per row.
        conf: predicted boxes scoring below this are not drawn.

    Raises:
        ValueError: ``images``, ``preds`` and ``gts`` differ in length or are empty; an image of another shape or dtype.
    """
    if not (len(images) == len(preds) == len(gts)) or len(images) == 0:
        raise ValueError(
            f"need as many images, predictions and ground truths (> 0), got {len(images)}, {len(preds)}, {len(gts)}"
        )
    n = min(len(images), max_images)
    cols = min(4, n)
    rows = math.ceil(n / cols)
    plt = pyplot()
    from matplotlib.patches import Rectangle

    fig, axes = plt.subplots(rows, cols, figsize=(3.2 * cols, 3.2 * rows), squeeze=False)
    for ax in axes.ravel():
        ax.axis("off")
    for i in range(n):
        ax = axes.ravel()[i]
        img = _hwc(images[i], i)
        ax.imshow(img[:, :, 0] if img.shape[2] == 1 else img, cmap="gray", vmin=0, vmax=255)
        g_boxes, g_labels = gts[i]
        for (x1, y1, x2, y2), label in zip(np.asarray(g_boxes, dtype=float).reshape(-1, 4), np.asarray(g_labels)):
            ax.add_patch(Rectangle((x1, y1), x2 - x1, y2 - y1, fill=False, ec="lime", lw=1.0, ls="--"))
            ax.text(x1, y2, classes[int(label)], color="lime", fontsize=6, va="top")
        det = preds[i]
        boxes = np.asarray(det.boxes, dtype=float).reshape(-1, 4)
        for (x1, y1, x2, y2), s, label in zip(boxes, np.asarray(det.scores), np.asarray(det.labels)):
            if s < conf:
                continue
            colour = _colour(plt, int(label))
            ax.add_patch(Rectangle((x1, y1), x2 - x1, y2 - y1, fill=False, ec=colour, lw=1.5))
            ax.text(
                x1,
                y1,
                f"{classes[int(label)]} {s:.2f}",
                color="white",
                fontsize=6,
                va="bottom",
                bbox={"facecolor": colour, "edgecolor": "none", "pad": 1, "alpha": 0.8},
            )
        ax.set_title(f"image {i}", fontsize=8)
    fig.suptitle(f"green dashed: true boxes; coloured: predictions scoring >= {conf:g}", fontsize=9)
    fig.tight_layout()
    save_figure(fig, png_path, dpi=110)
    return Path(png_path)


def render_det_markdown(
    metrics: dict[str, Any],
    classes: Sequence[str],
    *,
    pr_png: str = PR_PNG,
    confusion_stem: str = CONFUSION_STEM,
    grid_png: str = GRID_PNG,
) -> list[str]:
    """Markdown lines of the detection section of a run report (``report.md``), ending with an empty line.

    Args:
        metrics: the dict of ``detection_metrics``.
        classes: class names (K), the order of the table.
        pr_png, confusion_stem, grid_png: file names the section links to, relative to the report.
    """
    ev = metrics["evaluator"]
    lines = [
        "## Detection",
        "",
        f"- mAP@0.5: {pct(metrics['map50'])}",
        f"- mAP@0.5:0.95: {pct(metrics['map'])}",
        f"- mAP@0.75: {pct(metrics['map75'])}",
        "",
        f"{metrics['n_images']} images, {metrics['n_gt']} true boxes, {metrics['n_pred']} predicted boxes. "
        f"COCO bbox protocol ({ev['name']} {ev['version']}): AP = 101-point interpolated precision, at most "
        f"{ev['max_dets']} detections per image and class; a class without true boxes has no AP (—) and is left out "
        "of the mean.",
        "",
        "| class | AP@0.5 | AP@0.5:0.95 | true boxes | predicted boxes |",
        "|---|---|---|---|---|",
    ]
    for c in classes:
        m = metrics["per_class"][c]
        lines.append(f"| {c} | {pct(m['ap50'])} | {pct(m['ap'])} | {m['n_gt']} | {m['n_pred']} |")
    lines += [
        "",
        f"![precision-recall curves at IoU 0.5]({pr_png})",
        "",
        f"Confusion matrix (detections scoring >= {metrics['confusion_conf']:g}, matched one-to-one to true boxes at "
        f"IoU >= {metrics['confusion_iou']:g}; background row = false alarms, background column = missed boxes): "
        f"`{confusion_stem}.png`, `{confusion_stem}.csv` (counts), `{confusion_stem}_norm.png`, "
        f"`{confusion_stem}_norm.csv` (fraction of each true row).",
        "",
        f"![predicted and true boxes]({grid_png})",
        "",
    ]
    return lines


def _hwc(img: np.ndarray, i: int) -> np.ndarray:
    a = np.asarray(img)
    if a.ndim == 2:
        a = a[:, :, None]
    elif a.ndim == 3 and a.shape[0] in (1, 3):
        a = np.moveaxis(a, 0, -1)
    if a.ndim != 3 or a.shape[2] not in (1, 3) or a.dtype != np.uint8:
        raise ValueError(
            f"image {i}: expected uint8 (C, H, W) with C 1 or 3, (H, W, 3) or (H, W), got {a.dtype} {np.shape(img)}"
        )
    return a


def _colour(plt, k: int):
    """Class k's colour (the same in the PR curves and the grid): tab10 without its green, kept for true boxes."""
    palette = [c for i, c in enumerate(plt.get_cmap("tab10").colors) if i != 2]
    return palette[k % len(palette)]
