"""The classification sections of a report: the test table, per-class metrics, confusion matrices, Grad-CAM
figures (inference half: no PyTorch)."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

from defectlite.evaluate.report import pct, write_confusion


def write_confusion_pair(
    confusion: Sequence[Sequence[int]], classes: Sequence[str], stem: Path, title: str = ""
) -> dict:
    """Counts and row-normalised confusion matrices: ``<stem>.png/.csv`` and ``<stem>_norm.png/.csv``.

    Returns:
        ``{"counts": "<stem>.png", "normalized": "<stem>_norm.png"}`` (file names).
    """
    stem = Path(stem)
    norm = stem.with_name(stem.name + "_norm")
    write_confusion(confusion, classes, stem, f"{title} (counts)".strip())
    write_confusion(confusion, classes, norm, f"{title} (share of each true class)".strip(), normalize=True)
    return {"counts": stem.with_suffix(".png").name, "normalized": norm.with_suffix(".png").name}


def classification_lines(test: dict[str, Any], test_all: dict[str, dict[str, Any]]) -> list[str]:
    """The test section of a classification run's ``report.md``."""
    lines = ["## Test split", "", "| model | accuracy | MCC | macro F1 |", "|---|---|---|---|"]
    for name, m in test_all.items():
        lines.append(f"| {name} | {pct(m['accuracy'])} | {pct(m['mcc'])} | {pct(m['macro_f1'])} |")
    lines += [
        "",
        "Per class (deployed model):",
        "",
        "| class | precision | recall | F1 | support |",
        "|---|---|---|---|---|",
    ]
    for c, m in test["per_class"].items():
        lines.append(f"| {c} | {pct(m['precision'])} | {pct(m['recall'])} | {pct(m['f1'])} | {m['support']} |")
    return [*lines, ""]


def figure_lines(figures: dict[str, Any]) -> list[str]:
    """The report's figure sections of a classification run: confusion matrices and Grad-CAM per class."""
    lines = []
    if "confusion" in figures:
        c = figures["confusion"]
        lines += ["Confusion matrix of the deployed model on test (counts | share of each true class):", ""]
        lines += [
            "| counts | normalised |",
            "|---|---|",
            f"| ![counts]({c['counts']}) | ![normalised]({c['normalized']}) |",
            "",
        ]
    if figures.get("gradcam"):
        cams = figures["gradcam"]
        lines += ["## Where the model looks", "", "Grad-CAM on one test image per class (image | overlay; a correctly "
                  "classified image where there is one):", ""]  # fmt: skip
        lines += [f"| {' | '.join(cams)} |", f"|{'---|' * len(cams)}"]
        lines += ["| " + " | ".join(f"![{c}]({png})" for c, png in cams.items()) + " |", ""]
    return lines
