"""The classification runtime: logits of an exported classifier -> class names and probabilities (NumPy)."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from defectlite.errors import CheckpointError, DataError
from defectlite.tasks.base import number_option

UNCERTAIN = "uncertain"  # the answer below the confidence threshold: send the part to a person


@dataclass(frozen=True)
class Prediction:
    """The class of one image.

    Attributes:
        label: predicted class name, or ``"uncertain"`` when its probability is below the threshold asked for
            (``min_confidence``).
        index: index of the most probable class in ``Predictor.classes`` (also when uncertain).
        probability: softmax probability of that class, in [0, 1] (calibrated when the model was).
        probabilities: class name -> probability (sums to 1).
        uncertain: True when the answer was withheld (``label == "uncertain"``).
    """

    label: str
    index: int
    probability: float
    probabilities: dict[str, float]
    uncertain: bool = False

    def top(self, k: int = 3) -> list[tuple[str, float]]:
        """The ``k`` most probable classes with their probabilities."""
        return sorted(self.probabilities.items(), key=lambda kv: -kv[1])[:k]


def softmax(logits: np.ndarray) -> np.ndarray:
    """Row-wise softmax of (N, K) logits."""
    z = logits - logits.max(axis=1, keepdims=True)
    e = np.exp(z)
    return e / e.sum(axis=1, keepdims=True)


def min_confidence(value: Any, meta: dict[str, Any]) -> float | None:
    """The confidence threshold an option asks for: None (accept every answer), a number in [0, 1], or
    ``"recommended"``: the one the run chose on validation (ONNX metadata ``min_confidence``).

    Raises:
        ConfigError: not a number in [0, 1], or ``recommended`` for a model exported without one.
    """
    from defectlite.errors import ConfigError

    if value is None:
        return None
    if value == "recommended":
        if "min_confidence" not in meta:
            raise ConfigError("this model has no recommended confidence threshold (it was exported uncalibrated)")
        return float(meta["min_confidence"])
    try:
        v = float(value)
    except (TypeError, ValueError):
        raise ConfigError(f"min_confidence must be a number in [0, 1] or 'recommended', got {value!r}") from None
    if not 0.0 <= v <= 1.0:
        raise ConfigError(f"min_confidence must be in [0, 1], got {v}")
    return v


class ClassifyRuntime:
    """Logits (N, K) -> one :class:`Prediction` per image."""

    name = "classify"
    columns: tuple[str, ...] = ("class", "probability", "top")  # top: only filled when uncertain
    options: tuple[str, ...] = ("min_confidence",)  # a number in [0, 1], or "recommended" (the model's own)
    eval_options: dict[str, Any] = {}
    score_key = "accuracy"  # the headline metric of :meth:`score` (prune / quantise tables)
    secondary_key = "mcc"  # beside it in prune / compare tables
    view = "labels"  # the page shows class probabilities

    def option(self, key: str, text: Any) -> Any:
        """``min_confidence``: a probability in [0, 1], or ``recommended`` (the model's own, from its metadata).

        Raises:
            ConfigError: another key, or a value that is neither.
        """
        return number_option(self, key, text, words=("recommended",), bounds=(0.0, 1.0))

    def check(self, meta: dict[str, Any], outputs: Sequence[Any]) -> None:
        """Refuse a class list that does not match the model's number of outputs.

        Raises:
            CheckpointError: the metadata lists another number of classes than the model has logits.
        """
        k = outputs[0].shape[-1] if outputs and outputs[0].shape else None
        if isinstance(k, int) and k != len(meta["classes"]):
            raise CheckpointError(f"the metadata names {len(meta['classes'])} classes, the model has {k} outputs")

    def postprocess(
        self, outputs: Sequence[np.ndarray], meta: dict[str, Any], sizes: Sequence[tuple[int, int]], **options: Any
    ) -> list[Prediction]:
        """Softmax of the logits ``outputs[0]`` (N, K), one prediction per row; ``uncertain`` below
        ``min_confidence``."""
        classes = meta["classes"]
        floor = min_confidence(options.get("min_confidence"), meta)
        out = []
        for p in softmax(np.asarray(outputs[0], dtype=np.float64)):
            i = int(p.argmax())
            probs = {c: float(v) for c, v in zip(classes, p)}
            unsure = floor is not None and p[i] < floor
            out.append(Prediction(UNCERTAIN if unsure else classes[i], i, float(p[i]), probs, bool(unsure)))
        return out

    def as_dict(self, result: Prediction, meta: dict[str, Any]) -> dict[str, Any]:
        """JSON form: class, its index, probability, all probabilities."""
        return {
            "class": result.label,
            "index": result.index,
            "probability": result.probability,
            "probabilities": result.probabilities,
            "uncertain": result.uncertain,
            "top": [{"class": c, "probability": p} for c, p in result.top()],
        }

    def as_rows(self, result: Prediction, meta: dict[str, Any]) -> list[dict[str, str]]:
        """One row: class (``uncertain`` below the threshold), probability, and the best class when uncertain."""
        row = {"class": result.label, "probability": f"{result.probability:.6f}"}
        if result.uncertain:
            row["top"] = " ".join(f"{c}:{p:.3f}" for c, p in result.top())
        return [row]

    def draw(self, source: Any, result: Prediction, meta: dict[str, Any]):
        """The image (RGB, own size) with its class and probability written in the top-left corner."""
        from PIL import ImageDraw

        from defectlite.data.transforms import decode

        img = decode(source).convert("RGB")
        draw = ImageDraw.Draw(img)
        text = f"{result.label} {result.probability:.2f}"
        box = draw.textbbox((2, 2), text)
        draw.rectangle((box[0] - 2, box[1] - 2, box[2] + 2, box[3] + 2), fill=(0, 0, 0))
        draw.text((2, 2), text, fill=(255, 255, 0))
        return img

    # -- scoring labelled data (``defectlite val``, the run's test split) ----------------------------------
    def read_labelled(self, root: Path, meta: dict[str, Any], *, format: str = "auto", split: str | None = None,
                      skip_bad: bool = False) -> tuple[list[Path], np.ndarray, list[tuple[str, str]]]:  # fmt: skip
        """The images of a labelled folder (any classification layout) or CSV file (columns ``path``, ``class``;
        paths relative to the file), their class indices in the model's class list, and no bad label files (a
        class label is a folder or a CSV cell; unreadable images are left out, under ``skip_bad``, when read).

        Raises:
            DataError: unreadable folder or file, no images, or classes the model does not know.
        """
        from defectlite.data.readers import read_labelled_files

        paths, names = read_labelled_files(root, format, split=split)
        unknown = sorted(set(names) - set(meta["classes"]))
        if unknown:
            known = ", ".join(meta["classes"])
            raise DataError(f"{root}: class(es) {', '.join(unknown)} are not known to the model (it knows {known})")
        index = {c: i for i, c in enumerate(meta["classes"])}
        return paths, np.array([index[n] for n in names], dtype=np.int64), []

    def score(self, results: Sequence[Prediction], truths: np.ndarray, meta: dict[str, Any]) -> dict[str, Any]:
        """Accuracy, MCC, macro / per-class precision, recall, F1 and the confusion matrix of ``results``; ECE (15
        bins) and, for a model with a recommended threshold, the coverage and accuracy of the images it accepts."""
        from defectlite.tasks.classify.calibration import ece, selective
        from defectlite.tasks.classify.metrics import classification_metrics

        out = classification_metrics(truths, [r.index for r in results], meta["classes"])
        probs = np.array([[r.probabilities[c] for c in meta["classes"]] for r in results])
        out["ece"] = ece(probs, np.asarray(truths))
        if "min_confidence" in meta:
            out["operating_point"] = selective(probs, np.asarray(truths), float(meta["min_confidence"]))
        return out

    def headline(self, metrics: dict[str, Any]) -> str:
        """``accuracy 99.44 %, MCC 99.33 % on 180 images``."""
        return f"accuracy {100 * metrics['accuracy']:.2f} %, MCC {100 * metrics['mcc']:.2f} % on {metrics['n']} images"

    def summary(self, metrics: dict[str, Any]) -> list[str]:
        """A short per-class table for the terminal."""
        lines = [self.headline(metrics) + f", ECE {metrics['ece']:.4f}"]
        op = metrics.get("operating_point")
        if op:
            acc = f"{100 * op['accuracy']:.2f} %" if op["accepted"] else "—"
            share = f"{100 * op['coverage']:.1f} %"
            lines.append(f"at the recommended p >= {op['threshold']:.4f}: {share} accepted, {acc} of them right")
        lines.append(f"{'class':<24}{'precision':>10}{'recall':>10}{'F1':>10}{'support':>9}")
        for c, m in metrics["per_class"].items():
            lines.append(f"{c:<24}{m['precision']:>10.4f}{m['recall']:>10.4f}{m['f1']:>10.4f}{m['support']:>9}")
        return lines

    def write_figures(self, metrics: dict[str, Any], meta: dict[str, Any], out_dir: Path, stem: str) -> dict[str, str]:
        """Confusion matrices, counts and row-normalised, as PNG and CSV: ``<stem>.*`` and ``<stem>_norm.*``."""
        from defectlite.tasks.classify.report import write_confusion_pair

        return write_confusion_pair(metrics["confusion"], meta["classes"], Path(out_dir) / stem, meta.get("model", ""))

    def report_lines(self, test: dict[str, Any], test_all: dict[str, dict[str, Any]]) -> list[str]:
        """The test section of ``report.md``: every evaluated model, then per class for the deployed one."""
        from defectlite.tasks.classify.report import classification_lines

        return classification_lines(test, test_all)
