"""The ``detect`` task: boxes and classes of the defects in an image (NEU-DET; YOLOv4 pruning paper).

Data: VOC / YOLO / COCO readers (:mod:`defectlite.tasks.detect.readers`), the same seeded 8:1:1 split (stratified by
each image's dominant class), decoded-image cache and leak check as classification; boxes move with the pixels
under flips, 90-degree rotations, zoom / shift and mosaic (:mod:`defectlite.tasks.detect.augment`), mosaic switched
off for the last ``augment.close_mosaic`` epochs. Anchors: K-means++ with the 1 - IoU distance on the training
boxes (paper §2.1.2), stored in the model card. Objective: CIoU + BCE objectness + BCE class with YOLOv5
assignment (:class:`~defectlite.tasks.detect.loss.DetectionLoss`), or its distillation from a teacher detector
(§2.2.4). Selection on validation mAP@0.5. Decoding, NMS and scoring: :mod:`defectlite.tasks.detect.runtime`.
"""

from __future__ import annotations

import math
from collections.abc import Iterable
from typing import Any

import numpy as np
import torch
from torch import Tensor, nn

from defectlite.data import resolve_data_path
from defectlite.data.transforms import normalize
from defectlite.errors import ConfigError
from defectlite.models.yolo import STRIDES, DetectorExport, flatten_outputs
from defectlite.tasks.base import Task
from defectlite.tasks.detect.anchors import anchor_fit, kmeans_anchors
from defectlite.tasks.detect.augment import DetAugment
from defectlite.tasks.detect.dataset import DetDataset, DetSplitData, collate, prepare_detection
from defectlite.tasks.detect.decode import postprocess
from defectlite.tasks.detect.loss import DetectionDistill, DetectionLoss, yolov5_gains
from defectlite.tasks.detect.readers import DET_FORMATS
from defectlite.tasks.detect.runtime import EVAL_CONF, EVAL_IOU
from defectlite.train.device import autocast
from defectlite.train.distributed import loader

SCORE_THRESHOLD, IOU_THRESHOLD, MAX_DET = 0.25, 0.45, 300  # the deployed model's defaults (ONNX metadata)


def _meta(card: dict[str, Any]) -> dict[str, Any]:
    return {
        "anchors": [list(map(float, a)) for a in card["model_kwargs"]["anchors"]],
        "strides": list(STRIDES),
        "input_size": list(card["input_size"]),
        "classes": list(card["classes"]),
    }


def _loss_args(meta: dict[str, Any]) -> tuple:
    return meta["anchors"], STRIDES, len(meta["classes"])


def _gains(meta: dict[str, Any]) -> dict[str, float]:
    return yolov5_gains(len(meta["classes"]), meta["input_size"], len(STRIDES))


class DetectStageData:
    """Boxes and images for the loop (:class:`defectlite.train.loop.StageData`): augmented (mosaic while
    ``mosaic`` is on) batches of ``(images uint8, targets (M, 6))``; validation mAP@0.5 and loss.

    Args:
        data: the run's decoded images and boxes (boxes in input pixels).
        norm: (mean, std) per channel in [0, 1] units.
        augment: the per-item augmentation (its ``mosaic_prob`` is the mosaic share of the first epochs).
        close_mosaic: epochs at the end trained without mosaic.
        card: the model's card (anchors, classes, input size).
    """

    score_name = "val_map50"
    log_terms = ("box", "obj", "cls")

    def __init__(self, data: DetSplitData, norm, augment: DetAugment, close_mosaic: int, card: dict[str, Any]):
        images, boxes, labels = data.det_subset("train")
        self.dataset = DetDataset(images, boxes, labels, augment)
        self.mosaic_prob, self.close_mosaic = augment.mosaic_prob, close_mosaic
        self.val = data.det_subset("val")
        self.mean, self.std = norm
        self.meta = _meta(card)
        self.loss = DetectionLoss(*_loss_args(self.meta), **_gains(self.meta))
        self.train_size = len(self.dataset)
        self._train_images = images

    def start_epoch(self, epoch: int, epochs: int) -> None:
        self.dataset.mosaic_prob = 0.0 if epoch >= epochs - self.close_mosaic else self.mosaic_prob

    def batches(self, batch_size: int, generator: torch.Generator, shard: tuple[int, int] = (0, 1)):
        return loader(self.dataset, batch_size, generator, shard, collate_fn=collate)

    def inputs(self, batch, device):
        images, targets = batch
        x = torch.from_numpy(normalize(images, self.mean, self.std)).to(device)
        targets = targets.to(device)
        return x, targets, targets

    def batch_stats(self, outputs, truth) -> dict[str, float]:
        return {}

    @torch.no_grad()
    def validate(self, model: nn.Module, amp: str) -> dict[str, float]:
        from defectlite.tasks.detect.metrics import detection_metrics

        images, boxes, labels = self.val
        if not len(images):
            return {"val_loss": math.nan, "val_map50": math.nan, "val_map": math.nan}
        model.eval()
        device = next(model.parameters()).device
        raw, loss_sum = [], 0.0
        for i in range(0, len(images), 32):
            x = torch.from_numpy(normalize(images[i : i + 32], self.mean, self.std)).to(device)
            with autocast(amp, device):
                maps = model(x)
            maps = [m.float() for m in maps]
            items = zip(torch.from_numpy(images[i : i + 32]), boxes[i : i + 32], labels[i : i + 32])
            targets = collate([(img, torch.from_numpy(b), torch.from_numpy(y)) for img, b, y in items])[1]
            loss_sum += float(self.loss.to(device)(maps, x, targets.to(device))["loss"]) * len(x)
            raw.append(flatten_outputs(maps).cpu().numpy())
        dets = postprocess(np.concatenate(raw), self.meta, EVAL_CONF, EVAL_IOU)
        h, w = images.shape[-2:]
        m = detection_metrics(dets, list(zip(boxes, labels)), self.meta["classes"], [(h, w)] * len(images))
        return {"val_loss": loss_sum / len(images), "val_map50": m["map50"] or 0.0, "val_map": m["map"] or 0.0}

    def clean_batches(self, device) -> Iterable[Tensor]:
        for i in range(0, len(self._train_images), 64):
            yield torch.from_numpy(normalize(self._train_images[i : i + 64], self.mean, self.std)).to(device)


class DetectTask(Task):
    """Object detection (see the module docstring)."""

    name = "detect"
    formats = DET_FORMATS

    def check_config(self, cfg) -> None:
        """Besides the base checks: input sizes multiples of 32 (stride 32), no classifier-only options.

        Raises:
            ConfigError: naming the field.
        """
        super().check_config(cfg)
        if any(s % 32 for s in cfg.data.input_size):
            raise ConfigError(f"data.input_size: a detector needs multiples of 32 pixels, got {cfg.data.input_size}")
        if cfg.ensemble.members:
            raise ConfigError("ensemble.members: ensembles are a classification recipe; a detector run has none")
        for where, stage in self.stages_of(cfg):
            if stage is None:
                continue
            a, o = stage.augment, stage.optim
            if a.rotate_deg or a.erasing or a.crop < 1 or o.mixup_alpha or o.cutmix_alpha:
                raise ConfigError(
                    f"{where}: rotate_deg, erasing, crop, mixup and cutmix do not move boxes; a detector uses rot90, "
                    "scale, translate and mosaic (set the others to 0 / 1)"
                )

    def load_data(self, cfg, run, progress: bool = True) -> DetSplitData:
        path, options = resolve_data_path(cfg.data.path), self.split_options(cfg, run, progress)
        return prepare_detection(path, format=cfg.data.format, **options)

    def card(self, cfg, data: DetSplitData) -> dict[str, Any]:
        """The base card plus K-means++ anchors of the training boxes (in input pixels) and their fit."""
        card = super().card(cfg, data)
        _, boxes, _ = data.det_subset("train")
        wh = np.concatenate([b[:, 2:] - b[:, :2] for b in boxes if len(b)] or [np.zeros((0, 2), np.float32)])
        anchors = kmeans_anchors(wh, 9, seed=cfg.seed)
        return {**card, "anchors": anchors.round(2).tolist(), "anchor_fit": anchor_fit(wh, anchors)}

    def build_model(self, stage, card, data) -> tuple[nn.Module, dict[str, Any]]:
        kwargs = {"anchors": card["anchors"], **stage.model_kwargs}
        from defectlite.models import create_model

        model = create_model(stage.model, card["num_classes"], card["in_chans"], **kwargs)
        return model, {**card, "model": stage.model, "model_kwargs": kwargs}

    def objective(self, stage, cfg, teacher: nn.Module | None, card=None, **options: Any) -> nn.Module:
        """Detection loss, or its distillation from ``teacher`` at ``kd.temperature`` / ``kd.alpha``."""
        meta = _meta(card)
        if teacher is None:
            return DetectionLoss(*_loss_args(meta), label_smoothing=stage.optim.label_smoothing, **_gains(meta))
        return DetectionDistill(teacher, *_loss_args(meta), cfg.kd.temperature, cfg.kd.alpha, **_gains(meta))

    def stage_data(self, stage, cfg, data: DetSplitData, card: dict[str, Any]) -> DetectStageData:
        a = stage.augment
        augment = DetAugment(
            hflip=0.5 if a.hflip else 0.0,
            vflip=0.5 if a.vflip else 0.0,
            rot90=a.rot90,
            scale=a.scale,
            translate=a.translate,
            brightness=a.brightness,
            contrast=a.contrast,
            mosaic_prob=a.mosaic,
        )
        return DetectStageData(data, (card["mean"], card["std"]), augment, a.close_mosaic, card)

    def split_truth(self, data: DetSplitData, split: str):
        """Images at the input size, true boxes in each image's ORIGINAL pixels (scored as ``val`` scores), sizes."""
        idx = np.flatnonzero(data.splits == split)
        h_in, w_in = data.images.shape[-2:]
        truths = []
        for i in idx:
            h, w = data.orig_sizes[i]
            scale = np.array([w / w_in, h / h_in, w / w_in, h / h_in], np.float32)
            truths.append((data.boxes[i] * scale, data.box_labels[i], (h, w)))
        return data.images[idx], truths, [data.orig_sizes[i] for i in idx]

    def export_module(self, model: nn.Module) -> nn.Module:
        """The detector with its three head maps flattened into one (N, P, 5 + K) array."""
        return DetectorExport(model)

    def output_names(self, card: dict[str, Any]) -> list[str]:
        """One output, ``raw``: (N, P, 5 + K) head outputs before decoding and NMS."""
        return ["raw"]

    def export_metadata(self, card: dict[str, Any]) -> dict[str, Any]:
        meta = _meta(card)
        return {
            "anchors": meta["anchors"],
            "strides": meta["strides"],
            "score_threshold": SCORE_THRESHOLD,
            "iou_threshold": IOU_THRESHOLD,
            "max_det": MAX_DET,
            "output": "raw (N, P, 5 + K) head outputs, decoded by defectlite.tasks.detect.decode",
        }

    def figures(self, run, report: dict[str, Any], data: DetSplitData) -> dict[str, Any]:
        """PR curves, the detection confusion matrix, and test images with predicted and true boxes."""
        from defectlite.deploy.predictor import Predictor
        from defectlite.tasks.detect.report import GRID_PNG, write_det_grid

        meta = {"classes": data.classes}
        out: dict[str, Any] = {
            "detection": self.runtime.write_figures(report["test"], meta, run.root, "confusion_test")
        }
        images, boxes, labels = data.det_subset("test")
        if len(images):
            p = Predictor(run.onnx)
            x = normalize(images[:12], p.meta["mean"], p.meta["std"])
            preds = p.answers(p.run(x), [tuple(images.shape[-2:])] * len(x))
            write_det_grid(list(images[:12]), preds, list(zip(boxes[:12], labels[:12])), data.classes,
                           run.root / GRID_PNG)  # fmt: skip
            out["grid"] = GRID_PNG
        return out

    def paper_values(self, report: dict[str, Any]) -> dict[str, str]:
        test, prof = report["test"], report["profile"]
        b1 = next((t for t in prof["timings"] if t["batch"] == 1 and t["runtime"].startswith("onnxruntime")), None)
        return {
            "map50": f"{100 * (test['map50'] or 0):.2f} %",
            "params": f"{prof['params_deployed']:,}",
            "size_mb": f"{prof['onnx_mb']:.2f} MB",
            "fps": f"{1e3 / b1['median_ms']:.0f} images/s (ORT, {b1['threads']} thread, no NMS)" if b1 else "—",
        }
