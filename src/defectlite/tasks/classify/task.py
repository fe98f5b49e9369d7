"""The ``classify`` task: one label per image (NEU-CLS, casting, TIG weld pools).

Data: the folder / NEU / TIG readers, stratified 8:1:1 splits, the decoded uint8 cache
(:func:`defectlite.data.prepare`). Objectives: cross-entropy, logit distillation (Xie & Shen 2022,
Eq. 11-13), hard pseudo-labels of an ensemble (WeldNet paper, Algorithm 1). Selection on validation
accuracy. Scoring, decoding and the report's test section: :class:`defectlite.tasks.classify.runtime.ClassifyRuntime`.
"""

from __future__ import annotations

from collections.abc import Iterable
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from defectlite.data import SplitData, prepare, resolve_data_path
from defectlite.data.augment import train_augment
from defectlite.data.dataset import ArrayDataset
from defectlite.data.readers import FORMATS
from defectlite.data.transforms import normalize
from defectlite.errors import ConfigError
from defectlite.tasks.base import Task
from defectlite.tasks.classify.ensemble import Ensemble, PseudoLabel
from defectlite.tasks.classify.objectives import CrossEntropy, LogitDistill
from defectlite.train.device import autocast
from defectlite.train.distributed import loader

CLASSIFY_AUGMENT = ("hflip", "vflip", "rotate_deg", "brightness", "contrast", "erasing", "crop")


def clean_batches(images: np.ndarray, mean, std, device, batch_size: int = 128) -> Iterable[Tensor]:
    """Normalised, un-augmented batches (n, C, H, W) of uint8 images (evaluation, BN recalibration)."""
    for i in range(0, len(images), batch_size):
        yield torch.from_numpy(normalize(images[i : i + batch_size], mean, std)).to(device)


@torch.no_grad()
def predict_logits(model: nn.Module, images: np.ndarray, mean, std, *, batch_size: int = 128, amp: str = "off"):
    """Logits (N, K) float32 of uint8 images (N, C, H, W), in eval mode, in batches."""
    model.eval()
    device = next(model.parameters()).device
    out = []
    for x in clean_batches(images, mean, std, device, batch_size):
        with autocast(amp, device):
            out.append(model(x).float().cpu())
    return torch.cat(out).numpy() if out else np.zeros((0, 0), np.float32)


def _mixup(optim, num_classes: int):
    """timm's Mixup / CutMix on normalised batches (casting paper §3), or None when both alphas are 0."""
    if optim.mixup_alpha <= 0 and optim.cutmix_alpha <= 0:
        return None
    from timm.data import Mixup

    # label smoothing stays with the objective, so it is applied once
    return Mixup(mixup_alpha=optim.mixup_alpha, cutmix_alpha=optim.cutmix_alpha, prob=optim.mix_prob,
                 label_smoothing=0.0, num_classes=num_classes)  # fmt: skip


class ClassifyStageData:
    """In-memory uint8 images for the loop (:class:`defectlite.train.loop.StageData`): augmented, shuffled
    batches; Mixup / CutMix into soft targets when the stage asks; validation accuracy and cross-entropy.

    Args:
        train, val: (uint8 images (n, C, H, W), int64 labels (n,)).
        norm: (mean, std) per channel in [0, 1] units.
        augment: :class:`~defectlite.data.augment.BatchAugment` of uint8 (N, C, H, W) batches, or None.
        mixup: timm ``Mixup`` or None.
    """

    score_name = "val_acc"

    def __init__(self, train, val, norm, augment=None, mixup=None) -> None:
        self.dataset = ArrayDataset(*train)
        self.augment = augment
        self.val = val
        self.mean, self.std = norm
        self.mixup = mixup
        self.train_size = len(self.dataset)
        self._train_images = train[0]

    def start_epoch(self, epoch: int, epochs: int) -> None:
        pass

    def batches(self, batch_size: int, generator: torch.Generator, shard: tuple[int, int] = (0, 1)):
        return loader(self.dataset, batch_size, generator, shard, self.augment.collate if self.augment else None)

    def inputs(self, batch, device):
        xb, yb = batch
        x, y = torch.from_numpy(normalize(xb, self.mean, self.std)).to(device), yb.to(device)
        target = y
        if self.mixup is not None:
            x, target = self.mixup(x, y)  # soft targets (N, K)
        return x, target, y

    def batch_stats(self, outputs: Tensor, truth: Tensor) -> dict[str, float]:
        return {"train_acc": float((outputs.argmax(1) == truth).sum())}  # against the true labels

    def validate(self, model: nn.Module, amp: str) -> dict[str, float]:
        x, y = self.val
        if not len(y):
            return {"val_loss": float("nan"), "val_acc": float("nan")}
        logits = predict_logits(model, x, self.mean, self.std, amp=amp)
        loss = F.cross_entropy(torch.from_numpy(logits), torch.from_numpy(y)).item()
        return {"val_loss": loss, "val_acc": float((logits.argmax(1) == y).mean())}

    def clean_batches(self, device) -> Iterable[Tensor]:
        return clean_batches(self._train_images, self.mean, self.std, device)


class ClassifyTask(Task):
    """Image classification (see the module docstring)."""

    name = "classify"
    formats = FORMATS

    def load_data(self, cfg, run, progress: bool = True) -> SplitData:
        return prepare(
            resolve_data_path(cfg.data.path), format=cfg.data.format, **self.split_options(cfg, run, progress)
        )

    def check_config(self, cfg) -> None:
        """Besides the base checks: no detection-only augmentation (it would be ignored silently).

        Raises:
            ConfigError: naming the stage.
        """
        super().check_config(cfg)
        for where, stage in self.stages_of(cfg):
            a = stage.augment if stage is not None else None
            if a is not None and (a.rot90 or a.scale or a.translate or a.mosaic or a.close_mosaic):
                raise ConfigError(f"{where}.augment: rot90, scale, translate and mosaic are detection augmentations")

    def objective(self, stage, cfg, teacher: nn.Module | None, card=None, *, hard_alpha: float | None = None):
        """Cross-entropy; logit distillation from ``teacher``; or its hard pseudo-labels (``hard_alpha``)."""
        ls = stage.optim.label_smoothing
        if teacher is None:
            return CrossEntropy(ls)
        if hard_alpha is not None:
            return PseudoLabel(teacher, hard_alpha, label_smoothing=ls)
        return LogitDistill(teacher, cfg.kd.temperature, cfg.kd.alpha, label_smoothing=ls)

    def stage_data(self, stage, cfg, data: SplitData, card: dict[str, Any]) -> ClassifyStageData:
        train = data.subset("train")
        num_classes = len(data.classes)
        return ClassifyStageData(
            train,
            data.subset("val"),
            (card["mean"], card["std"]),
            augment=train_augment(**{k: getattr(stage.augment, k) for k in CLASSIFY_AUGMENT}),
            mixup=_mixup(stage.optim, num_classes),
        )

    def split_truth(self, data: SplitData, split: str):
        images, labels = data.subset(split)
        h, w = images.shape[-2:]
        return images, labels, [(h, w)] * len(images)

    def calibrate(self, model: nn.Module, data: SplitData, card: dict[str, Any], cfg, out_dir: Path) -> dict | None:
        """Temperature scaling fitted on validation (NLL), folded into ``model``'s output layer; ECE / NLL before
        and after on val and test, the confidence threshold reaching ``calibration.target_accuracy`` on
        validation with its coverage on test, a reliability diagram and a risk-coverage curve.

        Returns:
            The ``calibration`` entry of the deployed card and report (None when switched off or impossible).
        """
        import logging

        from defectlite.compress.reparam import reparameterize
        from defectlite.errors import CheckpointError
        from defectlite.tasks.classify import calibration as cal
        from defectlite.tasks.classify.temperature import fold_temperature

        c = cfg.calibration
        (xv, yv), (xt, yt) = data.subset("val"), data.subset("test")
        if not c.temperature or not len(yv):
            return None
        mean, std = card["mean"], card["std"]
        fused = reparameterize(model)
        lv, lt = (predict_logits(fused, x, mean, std) for x in (xv, xt))
        t = cal.fit_temperature(lv, yv)
        try:
            fold_temperature(model, t, torch.from_numpy(normalize(xv[:32], mean, std)))
        except CheckpointError as e:
            logging.getLogger(__name__).warning("calibration skipped: %s", e)
            return None
        pv, pt = cal.softmax(lv / t), cal.softmax(lt / t)
        threshold = cal.choose_threshold(pv, yv, c.target_accuracy)
        out = {
            "method": "temperature scaling (Guo et al. 2017), NLL on the validation split",
            "temperature": t,
            "val": cal.calibration_summary(lv, yv, t),
            "test": cal.calibration_summary(lt, yt, t) if len(yt) else None,
            "operating_point": {
                "target_accuracy": c.target_accuracy,
                "threshold": threshold,
                "val": cal.selective(pv, yv, threshold),
                "test": cal.selective(pt, yt, threshold),
            },
        }
        out_dir = Path(out_dir)
        curves = {"val before": (cal.softmax(lv), yv), "val after": (pv, yv)}
        if len(yt):
            curves |= {"test before": (cal.softmax(lt), yt), "test after": (pt, yt)}
        rel = cal.write_reliability(curves, out_dir / "reliability.png")
        rc = {"val": cal.risk_coverage(pv, yv)} | ({"test": cal.risk_coverage(pt, yt)} if len(yt) else {})
        mark = out["operating_point"]["test"]
        marks = [{"coverage": mark["coverage"], "risk": 1 - mark["accuracy"], "label": f"p >= {threshold:.3f}"}]
        rcp = cal.write_risk_coverage(rc, out_dir / "risk_coverage.png", marks if mark["accepted"] else ())
        out["figures"] = {"reliability": rel.name, "risk_coverage": rcp.name}
        return out

    def export_metadata(self, card: dict[str, Any]) -> dict[str, Any]:
        """The calibration temperature and the recommended confidence threshold (``min_confidence``)."""
        c = card.get("calibration")
        if not c:
            return {}
        op = c["operating_point"]
        return {"temperature": c["temperature"], "min_confidence": op["threshold"],
                "target_accuracy": op["target_accuracy"]}  # fmt: skip

    def report_lines(self, report: dict[str, Any]) -> list[str]:
        """The test section, calibration and the recommended operating point, the confusion matrices and Grad-CAM."""
        from defectlite.tasks.classify.calibration import calibration_lines
        from defectlite.tasks.classify.report import figure_lines

        lines = super().report_lines(report)
        cal = report.get("calibration")
        if cal and cal.get("test"):
            lines += calibration_lines(cal)
        return [*lines, *figure_lines(report.get("figures", {}))]

    def ensemble_teacher(self, member_stems: list[Path], method: str, k: float, classes: list[str]) -> Ensemble:
        """The frozen, re-parameterised ensemble of the given member checkpoints (WeldNet paper Eq. 2).

        Raises:
            CheckpointError: no members, or members trained on other classes.
        """
        from defectlite.compress.reparam import reparameterize
        from defectlite.compress.restore import load_checkpoint
        from defectlite.errors import CheckpointError

        if not member_stems:
            raise CheckpointError("no ensemble members (member<i>/best.json) to distil from")
        members = []
        for stem in member_stems:
            model, card = load_checkpoint(stem)
            if card["classes"] != list(classes):
                raise CheckpointError(f"{stem} was trained on classes {card['classes']}, not {list(classes)}")
            members.append(reparameterize(model))
        return Ensemble(members, method, k)

    def ensemble_options(self, ensemble) -> dict[str, Any]:
        """Hard targets (``ensemble.targets: hard``): the student learns the ensemble's pseudo-labels mixed with the
        true labels at ``hard_alpha`` (WeldNet paper, Algorithm 1)."""
        return {"hard_alpha": ensemble.hard_alpha} if ensemble.targets == "hard" else {}

    def evaluate_ensemble(self, ensemble: Ensemble, data: SplitData, card: dict[str, Any]) -> dict[str, dict]:
        """Test metrics of the mean and the focal combination of ``ensemble``'s members (same members)."""
        out = {}
        for method in ("mean", "focal"):
            combined = Ensemble(list(ensemble.members), method, ensemble.k)
            out[f"{method}_ensemble"] = self.evaluate(combined, data, "test", card)
        return out

    def figures(self, run, report: dict[str, Any], data: SplitData) -> dict[str, Any]:
        """Confusion matrices of the deployed model (counts and normalised) and Grad-CAM per class."""
        meta = {"classes": data.classes, "model": report.get("model", "")}
        out: dict[str, Any] = {
            "confusion": self.runtime.write_figures(report["test"], meta, run.root, "confusion_test")
        }
        out["gradcam"] = _gradcam_per_class(run.root)
        return out

    def paper_values(self, report: dict[str, Any]) -> dict[str, str]:
        """This run's values for the keys a recipe's ``paper`` table may hold."""
        test, prof = report["test"], report["profile"]
        b1 = next((t for t in prof["timings"] if t["batch"] == 1 and t["runtime"].startswith("onnxruntime")), None)
        teacher = report["test_all"].get("teacher")
        return {
            "accuracy": f"{100 * test['accuracy']:.2f} %",
            "mcc": f"{100 * test['mcc']:.2f} %",
            "teacher_accuracy": f"{100 * teacher['accuracy']:.2f} %" if teacher else "—",
            "params": f"{prof['params_deployed']:,}",
            "compute": f"{prof['macs'] / 1e6:.1f} M MACs",
            "latency": f"{b1['median_ms']:.3f} ms (ORT, {b1['threads']} thread)" if b1 else "—",
        }


def _gradcam_per_class(run_dir: Path) -> dict[str, str]:
    """One Grad-CAM figure per class for the report (file names); a failure is logged, never costs the run."""
    import logging

    from defectlite.tasks.classify.explain import explain_per_class

    try:
        return {c: p.name for c, p in explain_per_class(run_dir).items()}
    except Exception as e:  # noqa: BLE001 - explanations are a report extra
        logging.getLogger(__name__).warning("Grad-CAM overlays skipped: %s", e)
        return {}
