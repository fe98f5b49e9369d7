"""The classification runtime: logits of an exported classifier -> class names and probabilities (NumPy)."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from defectlite.errors import CheckpointError, DataError


@dataclass(frozen=True)
class Prediction:
    """The class of one image.

    Attributes:
        label: predicted class name.
        index: its index in ``Predictor.classes``.
        probability: softmax probability of that class, in [0, 1].
        probabilities: class name -> probability (sums to 1).
    """

    label: str
    index: int
    probability: float
    probabilities: dict[str, float]


def softmax(logits: np.ndarray) -> np.ndarray:
    """Row-wise softmax of (N, K) logits."""
    z = logits - logits.max(axis=1, keepdims=True)
    e = np.exp(z)
    return e / e.sum(axis=1, keepdims=True)


class ClassifyRuntime:
    """Logits (N, K) -> one :class:`Prediction` per image."""

    name = "classify"
    options: tuple[str, ...] = ()
    eval_options: dict[str, Any] = {}
    score_key = "accuracy"  # the headline metric of :meth:`score` (prune / quantise tables)

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
        """Softmax of the logits ``outputs[0]`` (N, K), one prediction per row."""
        classes = meta["classes"]
        out = []
        for p in softmax(np.asarray(outputs[0], dtype=np.float64)):
            i = int(p.argmax())
            out.append(Prediction(classes[i], i, float(p[i]), {c: float(v) for c, v in zip(classes, p)}))
        return out

    def as_dict(self, result: Prediction, meta: dict[str, Any]) -> dict[str, Any]:
        """JSON form: class, its index, probability, all probabilities."""
        return {
            "class": result.label,
            "index": result.index,
            "probability": result.probability,
            "probabilities": result.probabilities,
        }

    def as_rows(self, result: Prediction, meta: dict[str, Any]) -> list[dict[str, str]]:
        """One row: class and probability."""
        return [{"class": result.label, "probability": f"{result.probability:.6f}"}]

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
    def read_labelled(
        self, root: Path, meta: dict[str, Any], *, format: str = "auto", split: str | None = None
    ) -> tuple[list[Path], np.ndarray]:
        """The images of a labelled folder (any classification layout) or CSV file (columns ``path``, ``class``;
        paths relative to the file) and their class indices in the model's class list.

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
        return paths, np.array([index[n] for n in names], dtype=np.int64)

    def score(self, results: Sequence[Prediction], truths: np.ndarray, meta: dict[str, Any]) -> dict[str, Any]:
        """Accuracy, MCC, macro / per-class precision, recall, F1 and the confusion matrix of ``results``."""
        from defectlite.evaluate.metrics import classification_metrics

        return classification_metrics(truths, [r.index for r in results], meta["classes"])

    def headline(self, metrics: dict[str, Any]) -> str:
        """``accuracy 99.44 %, MCC 99.33 % on 180 images``."""
        return f"accuracy {100 * metrics['accuracy']:.2f} %, MCC {100 * metrics['mcc']:.2f} % on {metrics['n']} images"

    def summary(self, metrics: dict[str, Any]) -> list[str]:
        """A short per-class table for the terminal."""
        lines = [self.headline(metrics), f"{'class':<24}{'precision':>10}{'recall':>10}{'F1':>10}{'support':>9}"]
        for c, m in metrics["per_class"].items():
            lines.append(f"{c:<24}{m['precision']:>10.4f}{m['recall']:>10.4f}{m['f1']:>10.4f}{m['support']:>9}")
        return lines

    def write_figures(self, metrics: dict[str, Any], meta: dict[str, Any], out_dir: Path, stem: str) -> dict[str, str]:
        """Confusion matrices, counts and row-normalised, as PNG and CSV: ``<stem>.*`` and ``<stem>_norm.*``."""
        from defectlite.evaluate.report import write_confusion_pair

        return write_confusion_pair(metrics["confusion"], meta["classes"], Path(out_dir) / stem, meta.get("model", ""))

    def report_lines(self, test: dict[str, Any], test_all: dict[str, dict[str, Any]]) -> list[str]:
        """The test section of ``report.md``: every evaluated model, then per class for the deployed one."""
        from defectlite.evaluate.report import classification_lines

        return classification_lines(test, test_all)
