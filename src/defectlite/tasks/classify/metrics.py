"""Classification metrics in NumPy (no scikit-learn, so ``defectlite val`` runs on the base install): accuracy,
MCC, macro and per-class precision / recall / F1, confusion matrix (counts and row-normalised)."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np


def confusion_matrix(y_true: np.ndarray, y_pred: np.ndarray, k: int) -> np.ndarray:
    """Counts (K, K) int64: rows = true class, columns = predicted class."""
    return np.bincount(np.asarray(y_true) * k + np.asarray(y_pred), minlength=k * k).reshape(k, k)


def mcc(confusion: np.ndarray) -> float:
    """Multi-class Matthews correlation coefficient of a confusion matrix (Gorodkin 2004; equals
    scikit-learn's ``matthews_corrcoef``); 0 when undefined (one class predicted or present)."""
    c = np.asarray(confusion, dtype=np.float64)
    t, p = c.sum(1), c.sum(0)
    n, correct = c.sum(), np.trace(c)
    cov = correct * n - t @ p
    den = np.sqrt(n * n - p @ p) * np.sqrt(n * n - t @ t)
    return float(cov / den) if den > 0 else 0.0


def normalize_rows(confusion: Sequence[Sequence[float]]) -> list[list[float]]:
    """Each row divided by its sum (the share of a true class predicted as each class); empty rows stay 0."""
    c = np.asarray(confusion, dtype=np.float64)
    rows = c.sum(1, keepdims=True)
    return np.divide(c, rows, out=np.zeros_like(c), where=rows > 0).round(6).tolist()


def classification_metrics(y_true: Sequence[int], y_pred: Sequence[int], classes: Sequence[str]) -> dict:
    """Metrics of one evaluated split.

    Args:
        y_true, y_pred: class indices (N,).
        classes: class names (K); indices refer to it.

    Returns:
        dict with ``n``, ``accuracy``, ``mcc`` (multi-class Matthews correlation, Gorodkin 2004),
        ``macro_precision``, ``macro_recall``, ``macro_f1`` (unweighted means over the K classes; a class
        without predictions has precision 0), ``per_class`` (name -> precision, recall, f1, support),
        ``confusion`` (K x K counts, rows = true class, columns = predicted) and ``confusion_normalized``
        (rows divided by their sums). Fractions are in [0, 1].

    Raises:
        ValueError: the two sequences differ in length, are empty, or hold an index outside the classes.
    """
    y_true, y_pred = np.asarray(y_true, dtype=np.int64), np.asarray(y_pred, dtype=np.int64)
    k = len(classes)
    if len(y_true) != len(y_pred) or len(y_true) == 0:
        raise ValueError(f"need equally long, non-empty label arrays, got {len(y_true)} and {len(y_pred)}")
    if min(y_true.min(), y_pred.min()) < 0 or max(y_true.max(), y_pred.max()) >= k:
        raise ValueError(f"class indices must lie in [0, {k - 1}] for {k} classes")
    cm = confusion_matrix(y_true, y_pred, k)
    tp, support, predicted = np.diag(cm).astype(np.float64), cm.sum(1), cm.sum(0)
    precision = np.divide(tp, predicted, out=np.zeros(k), where=predicted > 0)
    recall = np.divide(tp, support, out=np.zeros(k), where=support > 0)
    denom = precision + recall
    f1 = np.divide(2 * precision * recall, denom, out=np.zeros(k), where=denom > 0)
    return {
        "n": int(len(y_true)),
        "accuracy": float((y_true == y_pred).mean()),
        "mcc": mcc(cm),
        "macro_precision": float(precision.mean()),
        "macro_recall": float(recall.mean()),
        "macro_f1": float(f1.mean()),
        "per_class": {
            c: {
                "precision": float(precision[i]),
                "recall": float(recall[i]),
                "f1": float(f1[i]),
                "support": int(support[i]),
            }
            for i, c in enumerate(classes)
        },  # fmt: skip
        "confusion": cm.tolist(),
        "confusion_normalized": normalize_rows(cm),
    }
