"""Run reports: ``report.json`` (everything measured) and ``report.md`` (for people), confusion matrices."""

from __future__ import annotations

import csv
import io
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from defectlite.utils import atomic_write, atomic_write_json, atomic_write_text


def pyplot():
    """``matplotlib.pyplot`` on the Agg backend (files only, no display), imported on first use."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def write_confusion(
    confusion: Sequence[Sequence[int]], classes: Sequence[str], stem: Path, title: str = "", *, normalize: bool = False
) -> None:
    """Write ``<stem>.csv`` (rows = true, columns = predicted) and ``<stem>.png``.

    Args:
        confusion: K x K counts; ``classes`` (K) label both its rows and its columns (a detection matrix passes
            its classes plus "background").
        normalize: write each row divided by its sum (the fraction of that true class predicted as each column; a
            row without samples stays 0) instead of the counts.
    """
    if normalize:
        confusion = [[float(v) / (sum(r) or 1) for v in r] for r in confusion]
    fmt = "{:.4f}".format if normalize else str
    buf = io.StringIO()
    w = csv.writer(buf, lineterminator="\n")
    w.writerow(["true \\ predicted", *classes])
    for c, row in zip(classes, confusion):
        w.writerow([c, *(fmt(v) for v in row)])
    atomic_write_text(stem.with_suffix(".csv"), buf.getvalue())

    plt = pyplot()
    k = len(classes)
    fig, ax = plt.subplots(figsize=(1.2 + 0.8 * k, 1.0 + 0.7 * k))
    ax.imshow(confusion, cmap="Blues", **({"vmin": 0, "vmax": 1} if normalize else {}))
    peak = 1 if normalize else max(max(r) for r in confusion) or 1
    for i in range(k):
        for j in range(k):
            v = confusion[i][j]
            text = f"{v:.2f}" if normalize else str(v)
            ax.text(j, i, text, ha="center", va="center", color="white" if v > peak / 2 else "black")
    ax.set_xticks(range(k), classes, rotation=45, ha="right")
    ax.set_yticks(range(k), classes)
    ax.set_xlabel("predicted")
    ax.set_ylabel("true")
    ax.set_title(title)
    fig.tight_layout()
    atomic_write(stem.with_suffix(".png"), lambda p: fig.savefig(p, dpi=120, format="png"))
    plt.close(fig)


def _pct(x: float | None) -> str:
    return "—" if x is None else f"{100 * x:.2f} %"


def _num(x: float | int | None, unit: str = "", digits: int = 3) -> str:
    if x is None:
        return "—"
    if isinstance(x, int) or float(x).is_integer():
        return f"{int(x):,}{unit}"
    return f"{x:.{digits}g}{unit}"


def render_markdown(r: dict[str, Any]) -> str:
    """The human-readable report of a run (``report.json`` holds the same and more)."""
    test, prof, data = r["test"], r["profile"], r["data"]
    lines = [
        f"# defectlite run: {r['recipe']} (seed {r['seed']})",
        "",
        f"Data: `{data['root']}` ({data['format']} layout), {len(data['classes'])} classes; "
        f"split train/val/test = {data['counts']['train']}/{data['counts']['val']}/{data['counts']['test']} "
        f"(model selection on val only; test read once, at the end).",
    ]
    if data.get("leaks"):
        action = "dropped from the evaluated split" if data.get("dropped_leaks") else "kept (use --drop-leaks)"
        lines.append(
            f"Leak check: {data['leaks']} val/test images are byte-identical to earlier-split images: {action}."
        )
    else:
        lines.append("Leak check: no val/test image is byte-identical to a training image.")
    if data.get("skipped"):
        lines.append(f"Skipped unreadable images: {len(data['skipped'])} (listed in report.json).")
    lines += ["", "## Test split", "", "| model | accuracy | MCC | macro F1 |", "|---|---|---|---|"]
    for name, m in r["test_all"].items():
        lines.append(f"| {name} | {_pct(m['accuracy'])} | {_pct(m['mcc'])} | {_pct(m['macro_f1'])} |")
    lines += [
        "",
        "Per class (deployed student):",
        "",
        "| class | precision | recall | F1 | support |",
        "|---|---|---|---|---|",
    ]
    for c, m in test["per_class"].items():
        lines.append(f"| {c} | {_pct(m['precision'])} | {_pct(m['recall'])} | {_pct(m['f1'])} | {m['support']} |")
    lines += ["", "Confusion matrix: `confusion_test.png`, `confusion_test.csv`.", ""]
    lines += [
        "## Training",
        "",
        "| stage | model | epochs | best val acc (epoch) | minutes | autocast |",
        "|---|---|---|---|---|---|",
    ]
    for name, s in r["stages"].items():
        lines.append(
            f"| {name} | {s['model']} | {s['epochs']} | {_pct(s['best_val_acc'])} ({s['best_epoch'] + 1}) "
            f"| {s['train_minutes']:.1f} | {s.get('amp', '-')} |"
        )
    lines += ["", "## Cost", ""]
    lines += [
        f"- Parameters: {prof['params_train']:,} (training form), {prof['params_deployed']:,} (deployed, "
        "re-parameterised)",
        f"- Compute: {prof['macs'] / 1e6:.2f} M MACs = {2 * prof['macs'] / 1e6:.2f} M FLOPs per image at "
        f"{prof['input_shape'][1:]} (convolutions and linear layers)",
        f"- Size: {prof['onnx_mb']:.3f} MB ONNX, {prof['weights_mb']:.3f} MB safetensors (deployed)",
        "",
        "| runtime | threads | batch | median ms | p95 ms | images/s |",
        "|---|---|---|---|---|---|",
    ]
    for t in prof["timings"]:
        lines.append(
            f"| {t['runtime']} | {t['threads']} | {t['batch']} | {t['median_ms']:.3f} | {t['p95_ms']:.3f} | "
            f"{t['images_per_s']:,.0f} |"
        )
    lines += [
        "",
        f"Warm-up {prof['timings'][0]['warmup']} runs, then {prof['timings'][0]['runs']} timed runs (batch 1). "
        f"Machine: {r['machine']['cpu']}, torch {r['machine']['torch']}, onnxruntime {r['machine']['onnxruntime']}.",
        "",
    ]
    if r.get("export"):
        e = r["export"]
        lines += [
            "## Export",
            "",
            f"`model.onnx`: ONNX Runtime vs PyTorch max |logit difference| = {e['max_abs_diff']:.2e} "
            f"(tolerance {e['tolerance']:.0e}: {'pass' if e['max_abs_diff'] <= e['tolerance'] else 'FAIL'}); "
            f"fused vs training form {e['reparam_max_abs_diff']:.2e}.",
            "",
        ]
    if r.get("gradcam"):
        lines += [
            "## Where the model looks",
            "",
            "Grad-CAM on one test image per class (a correctly classified one where there is one):",
            "",
        ]
        lines += [f"| {' | '.join(r['gradcam'])} |", f"|{'---|' * len(r['gradcam'])}"]
        lines += ["| " + " | ".join(f"![{c}]({png})" for c, png in r["gradcam"].items()) + " |", ""]
    if r.get("paper"):
        lines += _paper_table(r)
    return "\n".join(lines) + "\n"


def _paper_table(r: dict[str, Any]) -> list[str]:
    p, test, prof = r["paper"], r["test"], r["profile"]
    b1 = next((t for t in prof["timings"] if t["batch"] == 1 and t["runtime"].startswith("onnxruntime")), None)
    teacher = r["test_all"].get("teacher")
    rows = [
        ("test accuracy", _pct(p.get("accuracy")), _pct(test["accuracy"])),
        ("test MCC", _pct(p.get("mcc")), _pct(test["mcc"])),
        ("teacher test accuracy", _pct(p.get("teacher_accuracy")), _pct(teacher["accuracy"]) if teacher else "—"),
        ("deployed params", _num(p.get("params")), f"{prof['params_deployed']:,}"),
        ("compute per image", p.get("compute", "—"), f"{prof['macs'] / 1e6:.1f} M MACs"),
        (
            "latency per image",
            p.get("latency", "—"),
            f"{b1['median_ms']:.3f} ms (ORT, {b1['threads']} thread)" if b1 else "—",
        ),
    ]
    out = [
        "## Paper vs this run",
        "",
        f"Paper: {p.get('source', '')}. {p.get('note', '')}".rstrip(),
        "",
        "| | paper | this run |",
        "|---|---|---|",
    ]
    out += [f"| {a} | {b} | {c} |" for a, b, c in rows]
    return [*out, ""]


def write_report(run_dir: Path, report: dict[str, Any]) -> None:
    """Write ``report.json`` and ``report.md`` into ``run_dir`` (atomically)."""
    atomic_write_json(run_dir / "report.json", report)
    atomic_write_text(run_dir / "report.md", render_markdown(report))


def write_gamma_plot(npz_path: Path, png_path: Path) -> Path:
    """Plot BN |gamma| histograms before and after sparsity training, and over the epochs (heat map).

    Args:
        npz_path: ``gammas.npz`` written by :class:`defectlite.compress.sparsity.GammaRecorder`.
        png_path: the PNG to write.
    """
    import numpy as np

    plt = pyplot()
    snaps = dict(np.load(npz_path))
    epochs = sorted(k for k in snaps if k.startswith("epoch_"))
    first, last = snaps.get("initial", snaps[epochs[0]]), snaps[epochs[-1]]
    top = float(max(first.max(), last.max(), 1e-6))
    bins = np.linspace(0, top, 61)
    fig, (a, b) = plt.subplots(1, 2, figsize=(11, 3.8))
    a.hist(first, bins=bins, alpha=0.6, label="before")
    a.hist(last, bins=bins, alpha=0.6, label=f"after ({len(epochs)} epochs)")
    a.set_xlabel("|gamma|")
    a.set_ylabel("channels")
    a.set_yscale("log")
    a.legend()
    grid = np.stack([np.histogram(snaps[k], bins=bins)[0] for k in epochs], axis=1)
    b.imshow(np.log1p(grid), aspect="auto", origin="lower", extent=(0, len(epochs), 0, top), cmap="magma")
    b.set_xlabel("epoch")
    b.set_ylabel("|gamma|")
    b.set_title("histogram over training (log count)")
    fig.tight_layout()
    atomic_write(png_path, lambda p: fig.savefig(p, dpi=110, format="png"))
    plt.close(fig)
    return png_path
