"""Anchor boxes clustered from the training boxes, and how well a set of anchors fits them (NumPy only).

Source: the YOLOv4 pruning paper, §2.1.2 Steps 1-6 and Eq. 1-2 (K-means++ on box widths and heights
with ``distance = 1 - IoU``); the IoU of two boxes aligned at a common corner is YOLO9000's
"dimension clusters" (Redmon & Farhadi 2017, §2); the ratio test of :func:`anchor_fit` is
YOLOv5's ``utils/autoanchor.py`` (best possible recall).
"""

from __future__ import annotations

import numpy as np

from defectlite.errors import ConfigError, DataError


def wh_iou(wh: np.ndarray, anchors: np.ndarray) -> np.ndarray:
    """IoU of boxes and anchors given as sizes, aligned at a common corner.

    Args:
        wh: (n, 2) widths and heights in pixels.
        anchors: (k, 2) widths and heights in pixels.

    Returns:
        float64 (n, k): ``min(w) * min(h) / (w1 * h1 + w2 * h2 - min(w) * min(h))``.
    """
    wh, anchors = np.asarray(wh, np.float64), np.asarray(anchors, np.float64)
    inter = np.minimum(wh[:, None, 0], anchors[None, :, 0]) * np.minimum(wh[:, None, 1], anchors[None, :, 1])
    return inter / (wh[:, None].prod(2) + anchors[None].prod(2) - inter)


def _check_wh(wh: np.ndarray, name: str = "wh") -> np.ndarray:
    a = np.asarray(wh, np.float64)
    if a.ndim != 2 or a.shape[1] != 2 or not len(a):
        raise DataError(f"{name} must be a non-empty (n, 2) array of widths and heights, got shape {a.shape}")
    if not np.isfinite(a).all() or (a <= 0).any():
        raise DataError(f"{name} holds {int((~np.isfinite(a) | (a <= 0)).any(1).sum())} box size(s) that are not > 0")
    return a


def kmeans_anchors(wh: np.ndarray, k: int = 9, seed: int = 0, *, iters: int = 300) -> np.ndarray:
    """Cluster box sizes into ``k`` anchors with K-means++ seeding and the ``1 - IoU`` distance.

    Steps (paper §2.1.2): (1) a random box is the first centre; (2-3) each next centre is drawn with
    probability ``D(x)^2 / sum D(x)^2``, ``D(x)`` the distance to the nearest centre so far; (4-5) every
    box joins its nearest centre (Eq. 1) and each centre becomes the mean of its boxes (Eq. 2);
    (6) repeat until no box changes cluster, at most ``iters`` rounds. The paper's Step 2 says
    "Euclidean distance"; seeding here uses the clustering distance ``1 - IoU`` (Eq. 1) so both steps
    agree on what "far" means (large and small boxes alike). A cluster left empty keeps its centre.

    Args:
        wh: (n, 2) box widths and heights, in input pixels (scale them to the input size first).
        k: number of anchors (9 = 3 per output level).
        seed: seed of ``numpy.random.default_rng``; the same seed and data give the same anchors.
        iters: at most this many assignment / update rounds.

    Returns:
        float32 (k, 2) anchor widths and heights, sorted by area (ascending).

    Raises:
        ConfigError: ``k`` or ``iters`` below 1.
        DataError: ``wh`` is not (n, 2) positive sizes, or holds fewer than ``k`` distinct sizes.
    """
    if int(k) < 1 or int(iters) < 1:
        raise ConfigError(f"kmeans_anchors needs k >= 1 and iters >= 1, got k={k}, iters={iters}")
    wh = _check_wh(wh)
    if len(np.unique(wh, axis=0)) < k:
        raise DataError(f"{len(np.unique(wh, axis=0))} distinct box sizes cannot make {k} anchors")
    rng = np.random.default_rng(seed)
    centres = [wh[rng.integers(len(wh))]]
    nearest = 1.0 - wh_iou(wh, np.array(centres))[:, 0]
    while len(centres) < k:
        p = nearest**2
        centres.append(wh[rng.choice(len(wh), p=p / p.sum())])
        nearest = np.minimum(nearest, 1.0 - wh_iou(wh, centres[-1][None])[:, 0])
    c = np.array(centres)
    assign = np.full(len(wh), -1)
    for _ in range(int(iters)):
        new = wh_iou(wh, c).argmax(1)  # nearest centre = largest IoU
        if np.array_equal(new, assign):
            break
        assign = new
        for j in range(k):
            if (assign == j).any():
                c[j] = wh[assign == j].mean(0)
    order = np.lexsort((c[:, 0], c.prod(1)))
    return c[order].astype(np.float32)


def anchor_fit(wh: np.ndarray, anchors: np.ndarray, ratio_thr: float = 4.0) -> dict[str, float]:
    """How well ``anchors`` fit the boxes ``wh`` (both in the same pixels).

    Args:
        wh: (n, 2) box widths and heights.
        anchors: (k, 2) anchor widths and heights.
        ratio_thr: a box matches an anchor when both ``w / w_a`` and ``h / h_a`` lie in
            ``(1 / ratio_thr, ratio_thr)`` (YOLOv5's ``anchor_t``, the assignment rule of its loss).

    Returns:
        ``mean_best_iou``: mean over boxes of the IoU with the best anchor (corner-aligned, what
        :func:`kmeans_anchors` maximises); ``coverage``: share of boxes matched by at least one
        anchor under the ratio rule — the best anchor by that rule has both ratios within
        ``ratio_thr`` (YOLOv5's "best possible recall"); ``coverage_iou50``: share of boxes whose
        best IoU is >= 0.5; ``anchors_per_box``: mean number of anchors matching a box under the
        ratio rule (YOLOv5's "anchors above threshold").

    Raises:
        DataError: ``wh`` or ``anchors`` are not (n, 2) positive sizes.
        ConfigError: ``ratio_thr`` <= 1.
    """
    if not ratio_thr > 1:
        raise ConfigError(f"ratio_thr must be > 1, got {ratio_thr}")
    wh, anchors = _check_wh(wh), _check_wh(anchors, "anchors")
    best_iou = wh_iou(wh, anchors).max(1)
    r = wh[:, None] / anchors[None]
    worst_side = np.minimum(r, 1 / r).min(2)  # (n, k) in (0, 1]: 1 = same size
    matched = worst_side > 1 / ratio_thr
    return {
        "mean_best_iou": float(best_iou.mean()),
        "coverage": float(matched.any(1).mean()),
        "coverage_iou50": float((best_iou >= 0.5).mean()),
        "anchors_per_box": float(matched.sum(1).mean()),
    }
