"""The detection runtime: raw outputs of an exported detector -> boxes, and scoring of labelled boxes (NumPy).

Decoding and NMS are :func:`defectlite.tasks.detect.decode.postprocess` (the one implementation, also used by
validation during training); mAP is :func:`defectlite.tasks.detect.metrics.detection_metrics` (COCO protocol,
faster-coco-eval). A detector's ground truth is ``(boxes (m, 4) xyxy in the image's own pixels, labels (m,),
(H, W))`` per image.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from defectlite.errors import CheckpointError, DataError
from defectlite.evaluate.report import pct
from defectlite.tasks.base import number_option
from defectlite.tasks.detect.decode import Detections, postprocess

BoxTruth = tuple[np.ndarray, np.ndarray, tuple[int, int]]  # boxes (M, 4) in pixels, labels (M,), image (H, W)
MAX_DET_CAP = 1000  # most boxes one image's answer may ask for (max_det): 32 images x 1000 boxes bound a request
EVAL_CONF, EVAL_IOU = 0.001, 0.6  # mAP is computed over nearly every box (COCO / Ultralytics val convention)


class DetectRuntime:
    """Raw outputs (N, P, 5 + K) -> one :class:`Detections` per image, boxes in original pixels.

    Options (``Predictor(path, conf=..., iou=...)``): ``conf`` (lowest score kept, default the model's
    ``score_threshold``), ``iou`` (NMS threshold, default its ``iou_threshold``), ``max_det``.
    """

    name = "detect"
    columns: tuple[str, ...] = ("class", "score", "x1", "y1", "x2", "y2")
    options: tuple[str, ...] = ("conf", "iou", "max_det")
    eval_options = {"conf": EVAL_CONF, "iou": EVAL_IOU}  # what val and the run's test scoring use
    score_key = "map50"
    secondary_key = "map"  # mAP@0.5:0.95 beside mAP@0.5 in prune / compare tables
    view = "boxes"  # the page draws boxes

    def option(self, key: str, text: Any) -> Any:
        """``conf`` and ``iou`` are numbers in [0, 1], ``max_det`` a whole number from 1 to :data:`MAX_DET_CAP` (the
        service's work and answer size are bounded by it).

        Raises:
            ConfigError: another key, or a value of another kind or out of its range.
        """
        if key == "max_det":
            return number_option(self, key, text, integer=True, bounds=(1, MAX_DET_CAP))
        return number_option(self, key, text, bounds=(0.0, 1.0))

    def check(self, meta: dict[str, Any], outputs: Sequence[Any]) -> None:
        """Refuse metadata without anchors / strides, or whose classes do not fit the output width.

        Raises:
            CheckpointError: naming the field.
        """
        for key in ("anchors", "strides"):
            if key not in meta:
                raise CheckpointError(f"detector metadata lacks {key!r}")
        anchors = np.asarray(meta["anchors"], dtype=np.float64).reshape(-1, 2)
        if len(anchors) % max(len(meta["strides"]), 1) or not np.isfinite(anchors).all() or (anchors <= 0).any():
            raise CheckpointError(
                f"detector metadata 'anchors' must be positive [w, h] per stride, got {meta['anchors']}"
            )
        width = outputs[0].shape[-1] if outputs and outputs[0].shape else None
        if isinstance(width, int) and width != 5 + len(meta["classes"]):
            raise CheckpointError(f"the metadata names {len(meta['classes'])} classes, the model outputs {width - 5}")

    def postprocess(
        self, outputs: Sequence[np.ndarray], meta: dict[str, Any], sizes: Sequence[tuple[int, int]], **options: Any
    ) -> list[Detections]:
        """Decode + NMS (``conf``, ``iou``, ``max_det``), boxes scaled to each image's ``sizes`` (H, W)."""
        conf = options.get("conf", meta.get("score_threshold", 0.25))
        iou = options.get("iou", meta.get("iou_threshold", 0.45))
        return postprocess(outputs[0], meta, conf, iou, sizes, max_det=int(options.get("max_det", 300)))

    def as_dict(self, result: Detections, meta: dict[str, Any]) -> dict[str, Any]:
        """JSON form: ``{"boxes": [{"class", "index", "score", "box": [x1, y1, x2, y2]}, ...]}`` (pixels)."""
        return {
            "boxes": [
                {
                    "class": meta["classes"][int(k)],
                    "index": int(k),
                    "score": float(s),
                    "box": [round(float(v), 2) for v in b],
                }
                for b, s, k in zip(result.boxes, result.scores, result.labels)
            ]  # fmt: skip
        }

    def as_rows(self, result: Detections, meta: dict[str, Any]) -> list[dict[str, str]]:
        """One row per box: class, score, x1 y1 x2 y2 (pixels of the original image)."""
        return [
            {"class": meta["classes"][int(k)], "score": f"{s:.4f}", "x1": f"{b[0]:.1f}", "y1": f"{b[1]:.1f}",
             "x2": f"{b[2]:.1f}", "y2": f"{b[3]:.1f}"}
            for b, s, k in zip(result.boxes, result.scores, result.labels)
        ]  # fmt: skip

    def draw(self, source: Any, result: Detections, meta: dict[str, Any]):
        """The image (RGB, own size) with each box outlined and labelled with its class and score."""
        from PIL import ImageDraw

        from defectlite.data.transforms import decode

        img = decode(source).convert("RGB")
        draw = ImageDraw.Draw(img)
        for b, s, k in zip(result.boxes, result.scores, result.labels):
            colour = _PALETTE[int(k) % len(_PALETTE)]
            draw.rectangle([float(v) for v in b], outline=colour, width=2)
            draw.text((float(b[0]) + 2, float(b[1]) + 1), f"{meta['classes'][int(k)]} {s:.2f}", fill=colour)
        return img

    # -- scoring labelled data -------------------------------------------------------------------------------
    def read_labelled(self, root: Path, meta: dict[str, Any], *, format: str = "auto", split: str | None = None,
                      skip_bad: bool = False) -> tuple[list[Path], list[BoxTruth], list[tuple[str, str]]]:  # fmt: skip
        """The images of a labelled detection folder (VOC, YOLO or COCO), their true boxes in the model's class
        order, and the ``(file, reason)`` of bad label files left out under ``skip_bad``.

        Raises:
            DataError: unreadable folder, no images, boxes of classes the model does not know, a bad box or label
                file (without ``skip_bad``).
        """
        from defectlite.tasks.detect.readers import read_detection

        index = read_detection(root, format, skip_bad=skip_bad, classes=meta["classes"])
        samples = [s for s in index.samples if split is None or s.split == split]
        if split is not None and not samples:
            raise DataError(f"{root}: no images in split {split!r}")
        truths = [(s.boxes, s.labels, (s.height, s.width)) for s in samples]
        return [s.path for s in samples], truths, [(str(f), why) for f, why in index.skipped]

    def score(self, results: Sequence[Detections], truths: Sequence[Any], meta: dict[str, Any]) -> dict[str, Any]:
        """mAP@0.5, mAP@0.5:0.95, per-class AP, PR curves and the detection confusion matrix."""
        from defectlite.tasks.detect.metrics import detection_metrics

        gts = [(b, y) for b, y, _ in truths]
        return detection_metrics(list(results), gts, meta["classes"], [s for _, _, s in truths])

    def headline(self, metrics: dict[str, Any]) -> str:
        """``mAP@0.5 71.20 %, mAP@0.5:0.95 35.10 % on 180 images``."""
        return f"mAP@0.5 {pct(metrics['map50'])}, mAP@0.5:0.95 {pct(metrics['map'])} on {metrics['n_images']} images"

    def summary(self, metrics: dict[str, Any]) -> list[str]:
        """A short per-class AP table for the terminal."""
        lines = [self.headline(metrics), f"{'class':<24}{'AP@0.5':>10}{'AP@.5:.95':>11}{'boxes':>8}"]
        for c, m in metrics["per_class"].items():
            lines.append(f"{c:<24}{pct(m['ap50']):>10}{pct(m['ap']):>11}{m['n_gt']:>8}")
        return lines

    def write_figures(self, metrics: dict[str, Any], meta: dict[str, Any], out_dir: Path, stem: str) -> dict[str, str]:
        """PR curves and the detection confusion matrix (counts and normalised, PNG + CSV)."""
        from defectlite.tasks.detect.report import PR_PNG, write_det_confusion, write_pr_curves

        out_dir = Path(out_dir)
        pr = write_pr_curves(metrics, meta["classes"], out_dir / PR_PNG)
        confusion = write_det_confusion(metrics["confusion"], meta["classes"], out_dir / stem)
        return {"pr_curves": pr.name, "confusion": [p.name for p in confusion]}

    def report_lines(self, test: dict[str, Any], test_all: dict[str, dict[str, Any]]) -> list[str]:
        """The test section of ``report.md``: mAP of every evaluated model, then per class for the deployed one."""
        from defectlite.tasks.detect.report import render_det_markdown

        lines = ["## Test split", "", "| model | mAP@0.5 | mAP@0.5:0.95 |", "|---|---|---|"]
        lines += [f"| {name} | {pct(m['map50'])} | {pct(m['map'])} |" for name, m in test_all.items()]
        classes = list(test["per_class"])
        return [*lines, "", *render_det_markdown(test, classes, confusion_stem="confusion_test")]


_PALETTE = [(230, 25, 75), (60, 180, 75), (255, 225, 25), (0, 130, 200), (245, 130, 48), (145, 30, 180),
            (70, 240, 240), (240, 50, 230), (210, 245, 60), (250, 190, 212)]  # fmt: skip
