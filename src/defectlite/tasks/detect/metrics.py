"""Detection metrics: COCO bbox mAP (faster-coco-eval) and a detection confusion matrix with a background class.

Source: the COCO detection evaluation protocol (Lin et al. 2014, "Microsoft COCO", and cocodataset.org/#detection-eval):
AP per class = mean over 101 recall thresholds 0, 0.01, ..., 1 of the interpolated precision (the highest precision at
a recall >= the threshold), at IoU 0.5 (AP50), 0.75 (AP75) or averaged over IoU 0.5:0.05:0.95 (AP); mAP = mean over
the classes that have ground truth. The confusion matrix follows the idea of Ultralytics' ``ConfusionMatrix``
(reimplemented here, not copied): one-to-one class-agnostic matching by IoU, misses and false alarms in a background
row and column.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from typing import Any, Protocol

import numpy as np

from defectlite.errors import DataError

log = logging.getLogger(__name__)

MAX_DETS = 100  # COCO's maxDets: at most 100 highest-scoring detections per (image, class) pair are evaluated
EDGE_TOL_PX = 0.5  # how far (pixels) a box may reach past its image's border before it is an error (float rounding)


class DetectionsLike(Protocol):
    """What :func:`detection_metrics` reads from one image's detections (``tasks.detect.decode.Detections`` fits).

    Attributes:
        boxes: float (n, 4) ``x1, y1, x2, y2`` in the image's own pixels.
        scores: float (n,) confidence in [0, 1].
        labels: int (n,) indices into ``classes``.
    """

    boxes: np.ndarray
    scores: np.ndarray
    labels: np.ndarray


def detection_metrics(
    preds: Sequence[DetectionsLike],
    gts: Sequence[tuple[np.ndarray, np.ndarray]],
    classes: Sequence[str],
    image_sizes: Sequence[tuple[int, int]],
    *,
    iou_conf: float = 0.25,
    iou_match: float = 0.5,
) -> dict[str, Any]:
    """COCO bbox metrics, precision-recall curves and a detection confusion matrix of one evaluated split.

    Args:
        preds: one entry per image (N): detections with ``.boxes`` (n, 4) xyxy pixels, ``.scores`` (n,),
            ``.labels`` (n,) int; already filtered at a low score (0.001) by the caller, not filtered again here.
        gts: one ``(boxes (m, 4) xyxy pixels, labels (m,) int)`` per image; m may be 0 (an image without defects:
            its detections all count as false positives).
        classes: class names (K); label k is COCO category id k + 1.
        image_sizes: ``(H, W)`` per image in pixels, the frame of that image's boxes (the original image).
        iou_conf: score threshold of the detections that enter the confusion matrix (not used for mAP).
        iou_match: IoU a detection needs with a true box to be matched in the confusion matrix (>=).

    Returns:
        dict with ``map50``, ``map`` (IoU 0.5:0.95), ``map75`` (fractions, None when no class has ground truth),
        ``per_class`` (name -> ``ap50``, ``ap``, ``n_gt``, ``n_pred``; ``ap50``/``ap`` None for a class without
        ground truth, which COCO leaves out of the mean), ``pr_curves`` (``iou`` 0.5, ``recall`` the 101-point grid,
        ``precision`` name -> 101 interpolated precisions or None), ``confusion`` ((K + 1) x (K + 1) list of counts,
        rows = true class, columns = predicted, background last; detections scoring >= ``iou_conf``
        matched one-to-one to true boxes at IoU >= ``iou_match``, greedily by IoU, see :func:`_confusion_matrix`),
        ``confusion_conf``, ``confusion_iou``, ``n_images``, ``n_gt``, ``n_pred`` and ``evaluator`` (name, version,
        ``max_dets``).

    Raises:
        ValueError: ``preds``, ``gts`` and ``image_sizes`` differ in length or are empty; no classes; a threshold
            outside [0, 1].
        DataError: a box array that is not (n, 4) or not finite, labels outside ``[0, K)``, lengths of boxes, scores
            and labels that differ, a true box that is empty, or any box outside its image size.
    """
    import faster_coco_eval
    from faster_coco_eval import COCO, COCOeval_faster

    k = len(classes)
    images = _check_inputs(preds, gts, classes, image_sizes)
    for name, v in (("iou_conf", iou_conf), ("iou_match", iou_match)):
        if not 0.0 <= v <= 1.0:
            raise ValueError(f"{name} must lie in [0, 1], got {v}")

    coco_gt, coco_results = _to_coco(images, classes)
    gt_api = COCO(coco_gt)
    ev = COCOeval_faster(gt_api, gt_api.loadRes(coco_results), "bbox")
    ev.params.maxDets = [1, 10, MAX_DETS]
    ev.evaluate()
    ev.accumulate()
    p = ev.params
    # precision: (T IoU thresholds, R recall thresholds, K classes, A area ranges, M maxDets); -1 = class without gt
    precision = np.asarray(ev.eval["precision"])[:, :, :, p.areaRngLbl.index("all"), p.maxDets.index(MAX_DETS)]
    t50 = int(np.argmin(np.abs(np.asarray(p.iouThrs) - 0.5)))
    t75 = int(np.argmin(np.abs(np.asarray(p.iouThrs) - 0.75)))
    has_gt = precision[0, 0, :] > -1  # COCO marks every entry of a class without ground truth -1

    n_gt = np.bincount(np.concatenate([g[1] for _, g, _ in images]).astype(np.int64), minlength=k)
    n_pred = np.bincount(np.concatenate([d[2] for d, _, _ in images]).astype(np.int64), minlength=k)
    per_class = {
        c: {
            "ap50": float(precision[t50, :, i].mean()) if has_gt[i] else None,
            "ap": float(precision[:, :, i].mean()) if has_gt[i] else None,
            "n_gt": int(n_gt[i]),
            "n_pred": int(n_pred[i]),
        }
        for i, c in enumerate(classes)
    }
    confusion = _confusion_matrix([d for d, _, _ in images], [g for _, g, _ in images], k, conf=iou_conf, iou=iou_match)
    return {
        "map50": _mean_or_none(precision[t50][:, has_gt]),
        "map": _mean_or_none(precision[:, :, has_gt]),
        "map75": _mean_or_none(precision[t75][:, has_gt]),
        "per_class": per_class,
        "pr_curves": {
            "iou": float(p.iouThrs[t50]),
            "recall": [float(r) for r in p.recThrs],
            "precision": {
                c: [float(v) for v in precision[t50, :, i]] if has_gt[i] else None for i, c in enumerate(classes)
            },
        },
        "confusion": confusion.tolist(),
        "confusion_conf": float(iou_conf),
        "confusion_iou": float(iou_match),
        "n_images": len(images),
        "n_gt": int(n_gt.sum()),
        "n_pred": int(n_pred.sum()),
        "evaluator": {"name": "faster-coco-eval", "version": faster_coco_eval.__version__, "max_dets": MAX_DETS},
    }


def _confusion_matrix(
    preds: Sequence[tuple[np.ndarray, np.ndarray, np.ndarray]],
    gts: Sequence[tuple[np.ndarray, np.ndarray]],
    num_classes: int,
    *,
    conf: float = 0.25,
    iou: float = 0.5,
) -> np.ndarray:
    """Detection confusion matrix with a background class (index ``num_classes``).

    Per image, the detections scoring >= ``conf`` are matched one-to-one to the true boxes, class-agnostically and
    greedily by IoU: all (true, detection) pairs with IoU >= ``iou`` are taken in descending IoU order, a pair being
    kept when neither side is matched yet (ties: lower true index, then lower detection index). A matched pair counts
    at (true class, predicted class) — the diagonal or a class confusion; an unmatched true box at (true class,
    background) — a miss; an unmatched detection at (background, predicted class) — a false alarm (a duplicate
    included). (Ultralytics' ``ConfusionMatrix`` keeps each detection's best true box, then each true box's best
    detection; the two rules differ only when a detection's best box is taken and it overlaps a second one.)

    Args:
        preds: per image ``(boxes (n, 4) xyxy pixels, scores (n,), labels (n,))``, arrays checked by the caller.
        gts: per image ``(boxes (m, 4) xyxy pixels, labels (m,))``.
        num_classes: K.
        conf: score threshold of the detections that take part.
        iou: IoU threshold of a match.

    Returns:
        int64 (K + 1, K + 1): rows = true class, columns = predicted class, background last; the background-background
        cell stays 0.
    """
    bg = num_classes
    m = np.zeros((num_classes + 1, num_classes + 1), dtype=np.int64)
    for (p_boxes, p_scores, p_labels), (g_boxes, g_labels) in zip(preds, gts):
        keep = p_scores >= conf
        p_boxes, p_labels = p_boxes[keep], p_labels[keep]
        gt_of_det = _greedy_match(g_boxes, p_boxes, iou)
        matched = gt_of_det >= 0
        np.add.at(m, (g_labels[gt_of_det[matched]], p_labels[matched]), 1)
        np.add.at(m, (np.full(int((~matched).sum()), bg), p_labels[~matched]), 1)
        missed = np.ones(len(g_labels), dtype=bool)
        missed[gt_of_det[matched]] = False
        np.add.at(m, (g_labels[missed], np.full(int(missed.sum()), bg)), 1)
    return m


def box_iou(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """IoU of every pair of boxes: a (n, 4), b (m, 4) xyxy pixels -> (n, m); a box of zero area has IoU 0."""
    lt = np.maximum(a[:, None, :2], b[None, :, :2])
    rb = np.minimum(a[:, None, 2:], b[None, :, 2:])
    inter = np.prod(np.clip(rb - lt, 0, None), axis=2)
    area_a = np.prod(a[:, 2:] - a[:, :2], axis=1)
    area_b = np.prod(b[:, 2:] - b[:, :2], axis=1)
    union = area_a[:, None] + area_b[None, :] - inter
    return np.divide(inter, union, out=np.zeros_like(inter, dtype=np.float64), where=union > 0)


def _greedy_match(g_boxes: np.ndarray, p_boxes: np.ndarray, iou: float) -> np.ndarray:
    """Index of the true box matched to each detection (n,), -1 where none (see :func:`_confusion_matrix`)."""
    gt_of_det = np.full(len(p_boxes), -1, dtype=np.int64)
    if len(g_boxes) == 0 or len(p_boxes) == 0:
        return gt_of_det
    ious = box_iou(g_boxes, p_boxes)
    gi, dj = np.nonzero(ious >= iou)  # row-major: ties keep the lower true index, then the lower detection index
    order = np.argsort(-ious[gi, dj], kind="stable")
    gt_used = np.zeros(len(g_boxes), dtype=bool)
    for g, d in zip(gi[order], dj[order]):
        if not gt_used[g] and gt_of_det[d] < 0:
            gt_used[g] = True
            gt_of_det[d] = g
    return gt_of_det


def _mean_or_none(x: np.ndarray) -> float | None:
    return float(x.mean()) if x.size else None


Image = tuple[tuple[np.ndarray, np.ndarray, np.ndarray], tuple[np.ndarray, np.ndarray], tuple[int, int]]


def _check_inputs(preds, gts, classes, image_sizes) -> list[Image]:
    """Per image ``((boxes, scores, labels), (boxes, labels), (H, W))`` as float64 / int64 arrays, validated."""
    if not (len(preds) == len(gts) == len(image_sizes)):
        raise ValueError(
            f"need one prediction, ground truth and image size per image, got {len(preds)}, {len(gts)} and "
            f"{len(image_sizes)}"
        )
    if len(preds) == 0:
        raise ValueError("no images to evaluate")
    if len(classes) == 0:
        raise ValueError("no classes")
    out = []
    for i, (det, (g_boxes, g_labels), size) in enumerate(zip(preds, gts, image_sizes)):
        h, w = (int(v) for v in size)
        if h <= 0 or w <= 0:
            raise DataError(f"image {i}: size (H, W) = {tuple(size)} is not positive")
        p_boxes = _boxes(det.boxes, f"image {i} predicted boxes", h, w, allow_empty_area=True)
        p_scores = np.asarray(det.scores, dtype=np.float64).reshape(-1)
        p_labels = _labels(det.labels, f"image {i} predicted labels", len(classes))
        g_boxes = _boxes(g_boxes, f"image {i} true boxes", h, w, allow_empty_area=False)
        g_labels = _labels(g_labels, f"image {i} true labels", len(classes))
        if not (len(p_boxes) == len(p_scores) == len(p_labels)):
            raise DataError(
                f"image {i}: {len(p_boxes)} predicted boxes, {len(p_scores)} scores and {len(p_labels)} labels"
            )
        if not np.isfinite(p_scores).all():
            raise DataError(f"image {i}: predicted scores are not all finite")
        if len(g_boxes) != len(g_labels):
            raise DataError(f"image {i}: {len(g_boxes)} true boxes but {len(g_labels)} labels")
        out.append(((p_boxes, p_scores, p_labels), (g_boxes, g_labels), (h, w)))
    return out


def _boxes(x, what: str, h: int, w: int, *, allow_empty_area: bool) -> np.ndarray:
    a = np.asarray(x, dtype=np.float64)
    if a.size == 0:
        return a.reshape(0, 4)
    if a.ndim != 2 or a.shape[1] != 4:
        raise DataError(f"{what}: expected shape (n, 4) x1, y1, x2, y2, got {a.shape}")
    if not np.isfinite(a).all():
        raise DataError(f"{what}: not all finite")
    lo, hi = a[:, :2].min(initial=0), (a[:, [2, 3]] - np.array([w, h])).max(initial=0)
    if lo < -EDGE_TOL_PX or hi > EDGE_TOL_PX:
        raise DataError(
            f"{what}: boxes reach outside the image of W x H = {w} x {h} pixels (by {max(-lo, hi):.1f} px); boxes "
            "must be in the pixels of the image whose (H, W) is given"
        )
    wh = a[:, 2:] - a[:, :2]
    if (wh < 0).any() or (not allow_empty_area and (wh <= 0).any()):
        raise DataError(f"{what}: a box with x2 <= x1 or y2 <= y1 (expected x1, y1, x2, y2 corners)")
    return a


def _labels(x, what: str, k: int) -> np.ndarray:
    a = np.asarray(x).reshape(-1)
    if a.size and not np.issubdtype(a.dtype, np.integer):
        raise DataError(f"{what}: expected integer class indices, got dtype {a.dtype}")
    a = a.astype(np.int64)
    if a.size and (a.min() < 0 or a.max() >= k):
        raise DataError(f"{what}: class indices must lie in [0, {k}), got {a.min()}..{a.max()}")
    return a


def _to_coco(images: Sequence[Image], classes: Sequence[str]) -> tuple[dict, list[dict]]:
    """COCO ground truth (dict) and results (list) in memory: image ids 1..N, category ids 1..K, ann ids 1..M.

    Boxes become ``[x, y, w, h]`` in pixels, ``area = w * h``, ``iscrowd = 0``; ids start at 1 because COCOeval
    uses 0 for "unmatched".
    """
    gt: dict[str, list] = {
        "images": [{"id": i + 1, "width": w, "height": h} for i, (_, _, (h, w)) in enumerate(images)],
        "categories": [{"id": c + 1, "name": name} for c, name in enumerate(classes)],
        "annotations": [],
    }
    results: list[dict] = []
    for i, ((p_boxes, p_scores, p_labels), (g_boxes, g_labels), _) in enumerate(images):
        for box, label in zip(_xywh(g_boxes), g_labels):
            gt["annotations"].append(
                {
                    "id": len(gt["annotations"]) + 1,
                    "image_id": i + 1,
                    "category_id": int(label) + 1,
                    "bbox": box,
                    "area": box[2] * box[3],
                    "iscrowd": 0,
                }
            )
        for box, score, label in zip(_xywh(p_boxes), p_scores, p_labels):
            results.append({"image_id": i + 1, "category_id": int(label) + 1, "bbox": box, "score": float(score)})
    return gt, results


def _xywh(boxes: np.ndarray) -> list[list[float]]:
    return [[float(x1), float(y1), float(x2 - x1), float(y2 - y1)] for x1, y1, x2, y2 in boxes]
