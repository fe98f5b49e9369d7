"""Decoding of YOLO detector outputs and non-maximum suppression, in NumPy only (no torch).

The one implementation used by the ONNX Predictor at run time and by validation during training
(``postprocess(flatten_outputs(model(x)).numpy(), meta)``). Input: the raw tensor the exported
model outputs, (N, P, 5 + K) with rows ordered (level, anchor, y, x) (see
:func:`defectlite.models.yolo.flatten_outputs`), and the ONNX metadata ``meta`` with ``anchors``
(9 ``[w, h]`` or (3, 3, 2), input pixels), ``strides`` (8, 16, 32), ``input_size`` (H, W) and
``classes``.

Decoding (YOLOv5's parametrisation, shared with :func:`defectlite.tasks.detect.loss.decode_cells`):
``centre = (2 sigmoid(t_xy) - 0.5 + cell) * stride``, ``size = (2 sigmoid(t_wh))^2 * anchor``,
objectness and class probabilities are sigmoids, a box's score is objectness x class probability
(paper §2.2.2: confidence and class probability of each grid cell's B boxes).
"""

from __future__ import annotations

import functools
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from defectlite.errors import CheckpointError, ConfigError, DataError

MAX_CANDIDATES = 30_000  # boxes entering NMS per image, highest scores first (YOLOv5's max_nms)


@dataclass(frozen=True)
class Detections:
    """The detections of one image, highest score first.

    Attributes:
        boxes: float32 (n, 4) ``x1, y1, x2, y2`` in the ORIGINAL image's pixels.
        scores: float32 (n,) objectness x class probability.
        labels: int64 (n,) indices into ``meta["classes"]``.
    """

    boxes: np.ndarray
    scores: np.ndarray
    labels: np.ndarray


def _sigmoid(x: np.ndarray) -> np.ndarray:
    return (0.5 * (np.tanh(0.5 * x) + 1)).astype(np.float32)  # no overflow for large |x|


def decode(
    raw: np.ndarray, anchors: Any, strides: Sequence[int], input_size: Sequence[int]
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Raw outputs to boxes, objectness and class probabilities.

    Args:
        raw: (N, P, 5 + K), P = sum over strides s of A * (H / s) * (W / s).
        anchors: (L * A, 2) or (L, A, 2) ``[w, h]`` in input pixels, one group of A per stride.
        strides: L strides in pixels.
        input_size: (H, W) of the model input in pixels.

    Returns:
        boxes float32 (N, P, 4) xyxy in input pixels (not clipped), objectness float32 (N, P),
        class probabilities float32 (N, P, K).

    Raises:
        DataError: ``raw`` is not 3-D or its P does not match anchors / strides / input size.
    """
    raw = np.asarray(raw, dtype=np.float32)
    cell, stride, anchor_wh = _grid(anchors, strides, input_size, raw.shape)
    return _decode_rows(raw, cell, stride, anchor_wh)


def _grid(
    anchors: Any, strides: Sequence[int], input_size: Sequence[int], raw_shape: tuple[int, ...]
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Each output row's cell ``(x, y)``, stride and anchor ``[w, h]``: float32 (P, 2), (P, 1), (P, 2).

    Raises:
        DataError: ``raw_shape`` is not (N, P, 5 + K) with the P of these anchors, strides and input size.
    """
    anchors = np.asarray(anchors, dtype=np.float32).reshape(len(strides), -1, 2)
    h, w = (int(v) for v in input_size)
    num_a = anchors.shape[1]
    expected = sum(num_a * (h // s) * (w // s) for s in strides)
    if len(raw_shape) != 3 or raw_shape[1] != expected or raw_shape[2] < 6:
        raise DataError(
            f"raw detector output {tuple(raw_shape)} does not match (N, {expected}, 5 + K) for input {h} x {w}, "
            f"strides {tuple(strides)} and {num_a} anchors per stride"
        )
    return _cached_grid(anchors.tobytes(), num_a, tuple(int(s) for s in strides), h, w)


@functools.lru_cache(maxsize=8)
def _cached_grid(anchors: bytes, num_a: int, strides: tuple[int, ...], h: int, w: int):
    anc_all = np.frombuffer(anchors, dtype=np.float32).reshape(len(strides), num_a, 2)
    cells, scale, anchor_wh = [], [], []  # per row (P): its cell (x, y), stride and anchor
    for s, anc in zip(strides, anc_all):
        ny, nx = h // s, w // s
        gy, gx = np.meshgrid(np.arange(ny), np.arange(nx), indexing="ij")
        cells.append(np.tile(np.stack((gx, gy), -1).reshape(-1, 2), (num_a, 1)))  # rows (anchor, y, x)
        scale.append(np.full((num_a * ny * nx, 1), s))
        anchor_wh.append(np.repeat(anc, ny * nx, axis=0))
    grid = tuple(np.concatenate(a).astype(np.float32) for a in (cells, scale, anchor_wh))
    for a in grid:
        a.setflags(write=False)  # one copy shared by every call
    return grid


def _decode_rows(
    raw: np.ndarray, cell: np.ndarray, stride: np.ndarray, anchor_wh: np.ndarray
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """:func:`decode` of rows (..., R, 5 + K) whose cells, strides and anchors are (R, 2), (R, 1), (R, 2)."""
    sig = _sigmoid(raw[..., :4])
    xy = (2 * sig[..., :2] - 0.5 + cell) * stride
    wh = (2 * sig[..., 2:4]) ** 2 * anchor_wh
    boxes = np.concatenate((xy - wh / 2, xy + wh / 2), -1).astype(np.float32)
    return boxes, _sigmoid(raw[..., 4]), _sigmoid(raw[..., 5:])


def box_iou(box: np.ndarray, boxes: np.ndarray) -> np.ndarray:
    """IoU of one xyxy box (4,) with each of ``boxes`` (n, 4) -> (n,) (paper Eq. 18)."""
    lt = np.maximum(box[:2], boxes[:, :2])
    rb = np.minimum(box[2:], boxes[:, 2:])
    inter = np.clip(rb - lt, 0, None).prod(1)
    area = (box[2:] - box[:2]).prod()
    areas = (boxes[:, 2:] - boxes[:, :2]).prod(1)
    return inter / np.maximum(area + areas - inter, 1e-9)


def nms(boxes: np.ndarray, scores: np.ndarray, iou: float, max_keep: int | None = None) -> np.ndarray:
    """Greedy non-maximum suppression (as ``torchvision.ops.nms``).

    Takes boxes in decreasing score order and drops every later box whose IoU with a kept one
    exceeds ``iou``; stops once ``max_keep`` boxes are kept (the later ones could only be dropped).

    Args:
        boxes: (n, 4) xyxy.
        scores: (n,).
        iou: IoU threshold in [0, 1].
        max_keep: keep at most this many (None: all that survive).

    Returns:
        int64 indices of the kept boxes, in decreasing score order.
    """
    boxes = np.asarray(boxes, dtype=np.float32)
    order = np.argsort(-np.asarray(scores), kind="stable")
    keep = []
    while order.size and (max_keep is None or len(keep) < max_keep):
        i = order[0]
        keep.append(i)
        rest = order[1:]
        order = rest[box_iou(boxes[i], boxes[rest]) <= iou]
    return np.asarray(keep, dtype=np.int64)


def _meta(meta: Mapping[str, Any]) -> tuple[np.ndarray, list[int], tuple[int, int]]:
    missing = {"anchors", "strides", "input_size", "classes"} - set(meta)
    if missing:
        raise CheckpointError(f"detector metadata lacks {sorted(missing)} (export the model with defectlite)")
    h, w = meta["input_size"]
    return np.asarray(meta["anchors"], np.float32), [int(s) for s in meta["strides"]], (int(h), int(w))


def postprocess(
    raw: np.ndarray,
    meta: Mapping[str, Any],
    conf: float = 0.25,
    iou: float = 0.45,
    orig_sizes: Sequence[Sequence[int]] | None = None,
    max_det: int = 300,
    agnostic: bool = False,
) -> list[Detections]:
    """Decode, keep scores above ``conf``, run class-aware NMS and scale to each original image.

    Each prediction keeps its best class (score = objectness x that class's probability); NMS runs
    per class unless ``agnostic``. Boxes are scaled by ``(W_orig / W_in, H_orig / H_in)`` (inputs
    are stretched, not letterboxed: ``defectlite.data.transforms.to_uint8``) and clipped to the image.

    Args:
        raw: (N, P, 5 + K) raw model output.
        meta: ``anchors``, ``strides``, ``input_size`` (H, W), ``classes``.
        conf: score threshold in [0, 1] (0.001 for mAP, 0.25 for display).
        iou: NMS IoU threshold in [0, 1].
        orig_sizes: N sizes (H, W) of the original images in pixels; None: boxes stay in input pixels.
        max_det: at most this many detections per image.
        agnostic: one NMS over all classes.

    Returns:
        N :class:`Detections`, boxes in original pixels.

    Raises:
        CheckpointError: ``meta`` lacks a key.
        ConfigError: ``conf`` or ``iou`` outside [0, 1], or ``max_det`` < 1.
        DataError: ``raw`` does not match ``meta``, its K differs from ``len(classes)``, or
            ``orig_sizes`` does not hold N positive (H, W) pairs.
    """
    if not (0 <= conf <= 1 and 0 <= iou <= 1 and max_det >= 1):
        raise ConfigError(f"need 0 <= conf <= 1, 0 <= iou <= 1, max_det >= 1; got {conf}, {iou}, {max_det}")
    anchors, strides, (h_in, w_in) = _meta(meta)
    raw = np.asarray(raw, dtype=np.float32)
    cell, stride, anchor_wh = _grid(anchors, strides, (h_in, w_in), raw.shape)
    if raw.shape[-1] - 5 != len(meta["classes"]):
        raise DataError(f"raw output has {raw.shape[-1] - 5} class scores, the metadata {len(meta['classes'])} classes")
    sizes = [(h_in, w_in)] * len(raw) if orig_sizes is None else [tuple(int(v) for v in s) for s in orig_sizes]
    if len(sizes) != len(raw) or any(len(s) != 2 or min(s) <= 0 for s in sizes):
        raise DataError(f"orig_sizes must hold {len(raw)} positive (H, W) pairs, got {orig_sizes!r}")
    out = []
    for r, (h, w) in zip(raw, sizes):
        rows = np.nonzero(_sigmoid(r[:, 4]) > conf)[0]  # score = objectness x class prob <= objectness: exact
        b, o, c = _decode_rows(r[rows], cell[rows], stride[rows], anchor_wh[rows])
        labels = c.argmax(1)
        scores = o * c[np.arange(len(c)), labels]
        idx = np.nonzero(scores > conf)[0]
        idx = idx[np.argsort(-scores[idx], kind="stable")[:MAX_CANDIDATES]]
        b, scores, labels = b[idx], scores[idx], labels[idx]
        shift = 0 if agnostic else labels[:, None] * (float(np.abs(b).max(initial=0)) * 2 + 1)
        keep = nms(b + shift, scores, iou, max_keep=max_det)
        scaled = b[keep] * np.array([w / w_in, h / h_in, w / w_in, h / h_in], np.float32)
        scaled = np.clip(scaled, 0, np.array([w, h, w, h], np.float32)).astype(np.float32)
        out.append(Detections(scaled, scores[keep].astype(np.float32), labels[keep].astype(np.int64)))
    return out
