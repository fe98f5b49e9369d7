"""Calibrated confidence and a reject option, in NumPy: temperature scaling, ECE / NLL, risk-coverage, the
operating point for a wanted accuracy on accepted images, and their figures.

- Temperature scaling (Guo et al., ICML 2017, "On Calibration of Modern Neural Networks", §4.2): one scalar
  T > 0 divides the logits, fitted by minimising the negative log-likelihood on the validation split; the
  argmax, hence accuracy, is unchanged. Chosen over histogram binning / isotonic regression because it has
  one parameter (180 validation images cannot fit more without overfitting) and folds into the network's last
  layer, so the deployed ONNX file itself outputs calibrated logits.
- ECE (expected calibration error, Naeini et al. 2015; Guo et al. Eq. 3): sum over 15 equal-width confidence
  bins of |accuracy - mean confidence| weighted by the bin's share of images.
- Risk-coverage (Geifman & El-Yaniv 2017): accept the images whose top probability is at least a threshold;
  coverage = share accepted, risk = error rate among them.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

ECE_BINS = 15


def softmax(logits: np.ndarray) -> np.ndarray:
    """Row-wise softmax of (N, K) logits, in float64."""
    z = np.asarray(logits, dtype=np.float64)
    z = z - z.max(axis=1, keepdims=True)
    e = np.exp(z)
    return e / e.sum(axis=1, keepdims=True)


def nll(logits: np.ndarray, labels: np.ndarray, temperature: float = 1.0) -> float:
    """Mean negative log-likelihood (nats) of ``labels`` (N,) under softmax(logits / T), logits (N, K)."""
    z = np.asarray(logits, dtype=np.float64) / temperature
    z = z - z.max(axis=1, keepdims=True)
    log_p = z - np.log(np.exp(z).sum(axis=1, keepdims=True))
    return float(-log_p[np.arange(len(labels)), labels].mean())


def ece(probs: np.ndarray, labels: np.ndarray, bins: int = ECE_BINS) -> float:
    """Expected calibration error of probabilities (N, K) against labels (N,), equal-width bins on (0, 1]."""
    conf, pred = probs.max(1), probs.argmax(1)
    correct = pred == labels
    edges = np.linspace(0.0, 1.0, bins + 1)
    total = 0.0
    for lo, hi in zip(edges[:-1], edges[1:]):
        inside = (conf > lo) & (conf <= hi)
        if inside.any():
            total += inside.mean() * abs(correct[inside].mean() - conf[inside].mean())
    return float(total)


def fit_temperature(logits: np.ndarray, labels: np.ndarray, *, lo: float = 0.05, hi: float = 20.0) -> float:
    """The T in [lo, hi] minimising :func:`nll` (golden-section search on log T; NLL is convex in 1/T).

    Raises:
        ValueError: no labels, or logits that are not finite.
    """
    logits, labels = np.asarray(logits, dtype=np.float64), np.asarray(labels)
    if not len(labels) or not np.isfinite(logits).all():
        raise ValueError("temperature scaling needs labelled, finite validation logits")
    a, b = math.log(lo), math.log(hi)
    g = (math.sqrt(5) - 1) / 2
    c, d = b - g * (b - a), a + g * (b - a)
    fc, fd = nll(logits, labels, math.exp(c)), nll(logits, labels, math.exp(d))
    for _ in range(80):  # the bracket shrinks by 0.618 per step: 80 steps reach float precision on log T
        if fc <= fd:
            b, d, fd = d, c, fc
            c = b - g * (b - a)
            fc = nll(logits, labels, math.exp(c))
        else:
            a, c, fc = c, d, fd
            d = a + g * (b - a)
            fd = nll(logits, labels, math.exp(d))
    return float(math.exp((a + b) / 2))


def risk_coverage(probs: np.ndarray, labels: np.ndarray) -> dict[str, list[float]]:
    """Accepting the k most confident images, k = 1..N: ``threshold`` (the k-th confidence), ``coverage`` (k / N)
    and ``risk`` (error rate of the k accepted), in decreasing threshold order."""
    conf = probs.max(1)
    order = np.argsort(-conf, kind="stable")
    wrong = (probs.argmax(1) != labels)[order]
    k = np.arange(1, len(order) + 1)
    return {"threshold": conf[order].tolist(), "coverage": (k / len(order)).tolist(),
            "risk": (np.cumsum(wrong) / k).tolist()}  # fmt: skip


def choose_threshold(probs: np.ndarray, labels: np.ndarray, target_accuracy: float) -> float:
    """The lowest confidence threshold whose accepted images reach ``target_accuracy`` (largest coverage);
    images at or above it are accepted. 1.0 + eps (accept nothing) when no threshold reaches the target.

    Raises:
        ValueError: ``target_accuracy`` outside (0, 1].
    """
    if not 0.0 < target_accuracy <= 1.0:
        raise ValueError(f"target accuracy must be in (0, 1], got {target_accuracy}")
    rc = risk_coverage(probs, labels)
    thr, risk = np.array(rc["threshold"]), np.array(rc["risk"])
    ok = np.flatnonzero((1 - risk >= target_accuracy - 1e-12) & np.append(thr[1:] < thr[:-1], True))
    return float(thr[ok[-1]]) if len(ok) else float(np.nextafter(1.0, 2.0))


def selective(probs: np.ndarray, labels: np.ndarray, threshold: float) -> dict[str, float]:
    """Coverage and accuracy of the images whose top probability is at least ``threshold``."""
    accepted = probs.max(1) >= threshold
    n = int(accepted.sum())
    acc = float((probs.argmax(1) == labels)[accepted].mean()) if n else float("nan")
    return {"threshold": float(threshold), "coverage": n / max(len(labels), 1), "accuracy": acc, "accepted": n}


def calibration_summary(logits: np.ndarray, labels: np.ndarray, temperature: float) -> dict[str, float]:
    """ECE and NLL before (T = 1) and after (T) temperature scaling, and the mean top-1 probability after."""
    before, after = softmax(logits), softmax(np.asarray(logits, dtype=np.float64) / temperature)
    return {
        "ece_before": ece(before, labels),
        "ece_after": ece(after, labels),
        "nll_before": nll(logits, labels),
        "nll_after": nll(logits, labels, temperature),
        "mean_confidence_before": float(before.max(1).mean()),
        "mean_confidence_after": float(after.max(1).mean()),
        "n": int(len(labels)),
    }


def write_reliability(curves: dict[str, tuple[np.ndarray, np.ndarray]], png_path: Path, bins: int = ECE_BINS) -> Path:
    """Reliability diagram: accuracy against mean confidence per bin, one line per entry of ``curves``
    (name -> (probs (N, K), labels (N,))), the diagonal for perfect calibration."""
    from defectlite.evaluate.report import pyplot, save_figure

    plt = pyplot()
    fig, ax = plt.subplots(figsize=(5, 5))
    ax.plot([0, 1], [0, 1], "k:", label="perfect")
    edges = np.linspace(0, 1, bins + 1)
    for name, (probs, labels) in curves.items():
        conf, correct = probs.max(1), probs.argmax(1) == labels
        xs, ys = [], []
        for lo, hi in zip(edges[:-1], edges[1:]):
            inside = (conf > lo) & (conf <= hi)
            if inside.any():
                xs.append(conf[inside].mean())
                ys.append(correct[inside].mean())
        ax.plot(xs, ys, "o-", label=f"{name} (ECE {ece(probs, labels):.3f})")
    ax.set_xlabel("mean confidence in bin")
    ax.set_ylabel("accuracy in bin")
    ax.set_xlim(0, 1)
    ax.set_ylim(0, 1.02)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    fig.tight_layout()
    return save_figure(fig, png_path)


def write_risk_coverage(curves: dict[str, dict[str, list[float]]], png_path: Path, marks: Sequence[dict] = ()) -> Path:
    """Risk-coverage curves (error rate of the accepted images against the share accepted), one per entry of
    ``curves`` (name -> :func:`risk_coverage`); ``marks`` are operating points ``{"coverage", "risk", "label"}``."""
    from defectlite.evaluate.report import pyplot, save_figure

    plt = pyplot()
    fig, ax = plt.subplots(figsize=(6, 4))
    for name, rc in curves.items():
        ax.plot(rc["coverage"], np.array(rc["risk"]) * 100, label=name)
    for m in marks:
        ax.plot(m["coverage"], 100 * m["risk"], "k*", markersize=10)
        ax.annotate(m["label"], (m["coverage"], 100 * m["risk"]), fontsize=7, xytext=(4, 4), textcoords="offset points")
    ax.set_xlabel("coverage (share of images accepted)")
    ax.set_ylabel("error rate of accepted images, %")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    fig.tight_layout()
    return save_figure(fig, png_path)


def calibration_lines(cal: dict[str, Any]) -> list[str]:
    """The calibration section of ``report.md``."""
    op = cal["operating_point"]
    lines = [
        "## Calibration and the reject option",
        "",
        f"Temperature scaling (Guo et al. 2017) fitted on the validation split by NLL: T = {cal['temperature']:.3f}, "
        "folded into the model's last layer (ONNX Runtime, `predict`, `serve` and INT8 see calibrated probabilities).",
        "",
        "| split | ECE before | ECE after | NLL before | NLL after | mean top-1 p before | after |",
        "|---|---|---|---|---|---|---|",
    ]
    for split in ("val", "test"):
        s = cal[split]
        lines.append(
            f"| {split} | {s['ece_before']:.4f} | {s['ece_after']:.4f} | {s['nll_before']:.4f} | {s['nll_after']:.4f} "
            f"| {s['mean_confidence_before']:.3f} | {s['mean_confidence_after']:.3f} |"
        )
    t, v = op["test"], op["val"]
    lines += [
        "",
        f"Recommended operating point (chosen on validation for {100 * op['target_accuracy']:.1f} % accuracy on "
        f"accepted parts): send to a human below p = {op['threshold']:.4f} "
        f"(`defectlite predict --min-confidence {op['threshold']:.4f}`). Validation: {100 * v['coverage']:.1f} % "
        f"accepted at {100 * v['accuracy']:.2f} %; test: {100 * t['coverage']:.1f} % accepted at "
        + (f"{100 * t['accuracy']:.2f} % accuracy." if t["accepted"] else "— (none accepted)."),
        "",
        "| reliability diagram | risk-coverage |",
        "|---|---|",
        f"| ![reliability]({cal['figures']['reliability']}) | ![risk-coverage]({cal['figures']['risk_coverage']}) |",
        "",
    ]
    return lines
