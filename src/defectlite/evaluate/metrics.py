"""Classification metrics (scikit-learn): accuracy, MCC, macro and per-class precision / recall / F1."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np


def classification_metrics(y_true: Sequence[int], y_pred: Sequence[int], classes: Sequence[str]) -> dict:
    """Metrics of one evaluated split.

    Args:
        y_true, y_pred: class indices (N,).
        classes: class names (K); indices refer to it.

    Returns:
        dict with ``n``, ``accuracy``, ``mcc`` (multi-class Matthews correlation, Gorodkin 2004),
        ``macro_precision``, ``macro_recall``, ``macro_f1``, ``per_class`` (name -> precision, recall,
        f1, support) and ``confusion`` (K x K list, rows = true class, columns = predicted).
        Fractions are in [0, 1].

    Raises:
        ValueError: the two sequences differ in length or are empty.
    """
    from sklearn.metrics import confusion_matrix, matthews_corrcoef, precision_recall_fscore_support

    y_true, y_pred = np.asarray(y_true), np.asarray(y_pred)
    if len(y_true) != len(y_pred) or len(y_true) == 0:
        raise ValueError(f"need equally long, non-empty label arrays, got {len(y_true)} and {len(y_pred)}")
    labels = list(range(len(classes)))
    p, r, f, s = precision_recall_fscore_support(y_true, y_pred, labels=labels, zero_division=0)
    mp, mr, mf, _ = precision_recall_fscore_support(y_true, y_pred, labels=labels, average="macro", zero_division=0)
    return {
        "n": int(len(y_true)),
        "accuracy": float((y_true == y_pred).mean()),
        "mcc": float(matthews_corrcoef(y_true, y_pred)),
        "macro_precision": float(mp),
        "macro_recall": float(mr),
        "macro_f1": float(mf),
        "per_class": {
            c: {"precision": float(p[i]), "recall": float(r[i]), "f1": float(f[i]), "support": int(s[i])}
            for i, c in enumerate(classes)
        },
        "confusion": confusion_matrix(y_true, y_pred, labels=labels).tolist(),
    }
