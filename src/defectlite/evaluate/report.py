"""Run reports: ``report.json`` (everything measured) and ``report.md`` (for people), confusion matrices."""

from __future__ import annotations

import csv
import io
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from defectlite.runs import Run
from defectlite.utils import atomic_write, atomic_write_json, atomic_write_text


def pyplot():
    """``matplotlib.pyplot`` on the Agg backend (files only, no display), imported on first use."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def save_figure(fig: Any, path: Path, dpi: int = 110) -> Path:
    """Write a matplotlib figure as PNG atomically and close it."""
    atomic_write(path, lambda p: fig.savefig(p, dpi=dpi, format="png"))
    pyplot().close(fig)
    return Path(path)


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
    save_figure(fig, stem.with_suffix(".png"), dpi=120)


def pct(x: float | None) -> str:
    return "—" if x is None else f"{100 * x:.2f} %"


def _epochs(stage: dict) -> str:
    """A stage's epochs: ``N``, or ``run of planned`` when a time limit stopped it early."""
    run = stage.get("epochs_run", stage["epochs"])
    return str(run) if run == stage["epochs"] else f"{run} of {stage['epochs']} (time limit)"


def _num(x: float | int | None, unit: str = "", digits: int = 3) -> str:
    if x is None:
        return "—"
    if isinstance(x, int) or float(x).is_integer():
        return f"{int(x):,}{unit}"
    return f"{x:.{digits}g}{unit}"


def write_curves(histories: dict[str, list[dict[str, float]]], png_path: Path) -> Path | None:
    """Training curves of every stage from its ``metrics.csv`` rows: loss (train and val) on the left, the
    other metrics (train and val accuracy, mAP, ...) on the right, one colour per stage.

    Returns:
        ``png_path``, or None when no stage has a finished epoch.
    """
    histories = {k: v for k, v in histories.items() if v}
    if not histories:
        return None
    plt = pyplot()
    fig, (left, right) = plt.subplots(1, 2, figsize=(11, 4))
    skip = {"epoch", "lr", "epoch_s"}
    for i, (stage, rows) in enumerate(histories.items()):
        colour = f"C{i}"
        epochs = [r["epoch"] + 1 for r in rows]
        for key in [k for k in rows[0] if k not in skip]:
            ax = left if key.endswith("loss") else right
            style = "-" if key.startswith("val_") else "--"
            ax.plot(epochs, [r.get(key, float("nan")) for r in rows], style, color=colour, label=f"{stage} {key}")
    left.set_title("loss")
    right.set_title("metrics")
    for ax in (left, right):
        ax.set_xlabel("epoch")
        ax.grid(alpha=0.3)
        ax.legend(fontsize=7)
    fig.tight_layout()
    save_figure(fig, png_path, dpi=110)
    return png_path


def render_markdown(r: dict[str, Any], task_lines: Sequence[str] = ()) -> str:
    """The human-readable report of a run (``report.json`` holds the same and more).

    Args:
        r: the report dict the pipeline builds.
        task_lines: the task's own sections (test metrics and tables), placed after the data summary.
    """
    prof, data = r["profile"], r["data"]
    counts = data["counts"]
    lines = [
        f"# defectlite run: {r['recipe']} (task {r['task']}, seed {r['seed']})",
        "",
        f"Data: `{data['root']}` ({data['format']} layout), {len(data['classes'])} classes; "
        f"split train/val/test = {counts['train']}/{counts['val']}/{counts['test']} "
        f"(model selection on val only; test read once, at the end).",
    ]
    if data.get("leaks"):
        action = "left out of the evaluated split" if data.get("dropped_leaks") else "kept (--keep-leaks)"
        lines.append(
            f"Leak check: {data['leaks']} val/test images are byte-identical to earlier-split images: {action}."
        )
    else:
        lines.append("Leak check: no val/test image is byte-identical to a training image.")
    if data.get("skipped"):
        lines.append(f"Skipped unreadable images: {len(data['skipped'])} (listed in report.json).")
    lines += [f"**Warning:** {w}." for w in data.get("warnings", [])]
    lines += ["", *task_lines]
    if r.get("figures", {}).get("curves"):
        lines += ["## Training curves", "", f"![training curves]({r['figures']['curves']})", ""]
    lines += [
        "## Training",
        "",
        "| stage | model | epochs | best val score (epoch) | minutes | autocast |",
        "|---|---|---|---|---|---|",
    ]
    for name, s in r["stages"].items():
        score = f"{s['score_name']} {_num(s['best_val_score'], digits=4)}" if s.get("score_name") else "—"
        lines.append(
            f"| {name} | {s['model']} | {_epochs(s)} | {score} ({s['best_epoch'] + 1}) "
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
            f"`model.onnx`: ONNX Runtime vs PyTorch max |output difference| = {e['max_abs_diff']:.2e} "
            f"(tolerance {e['tolerance']:.0e}: {'pass' if e['max_abs_diff'] <= e['tolerance'] else 'FAIL'}); "
            f"fused vs training form {e['reparam_max_abs_diff']:.2e}.",
            "",
        ]
        lines += _int8_lines(r.get("int8"))
    if r.get("paper"):
        lines += _paper_table(r)
    return "\n".join(lines) + "\n"


def _int8_lines(q: dict[str, Any] | None) -> list[str]:
    if not q:
        return []
    k = q["score_key"]
    verdict = (
        f"deployed as `{q['path']}` (`predict` and `serve` run it; `--fp32` for the float model)"
        if q["deployed"]
        else f"not deployed: validation {k} drops by {100 * q['val_drop']:.2f} points (> {100 * q['max_drop']:.2f})"
    )
    lines = [
        f"INT8 (ONNX Runtime static QDQ, per channel): validation {k} {100 * q['fp32']['val']:.2f} -> "
        f"{100 * q['int8']['val']:.2f} %, test {100 * q['fp32']['test']:.2f} -> {100 * q['int8']['test']:.2f} %: "
        f"{verdict}.",
    ]
    if q.get("timings"):
        f, i = q["timings"]["fp32"], q["timings"]["int8"]
        lines.append(
            f"Batch-1 latency ({f['threads']} thread): {f['median_ms']:.3f} ms FP32, {i['median_ms']:.3f} ms INT8."
        )
    return [*lines, ""]


def _paper_table(r: dict[str, Any]) -> list[str]:
    """Paper vs this run, for the keys the recipe's ``paper`` gives and the task reports (``paper_values``)."""
    p, ours = r["paper"], r.get("paper_values", {})
    labels = {"source", "note"}
    out = [
        "## Paper vs this run",
        "",
        f"Paper: {p.get('source', '')}. {p.get('note', '')}".rstrip(),
        "",
        "| | paper | this run |",
        "|---|---|---|",
    ]
    for key, value in p.items():
        if key in labels:
            continue
        shown = (
            pct(value)
            if isinstance(value, float) and value <= 1
            else _num(value)
            if isinstance(value, (int, float))
            else value
        )
        out.append(f"| {key.replace('_', ' ')} | {shown} | {ours.get(key, '—')} |")
    return [*out, ""]


def write_report(run: Run, report: dict[str, Any], task_lines: Sequence[str] = ()) -> None:
    """Write the run's ``report.json`` and ``report.md`` (with the task's sections), atomically."""
    atomic_write_json(run.report_json, report)
    atomic_write_text(run.report_md, render_markdown(report, task_lines))


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
    save_figure(fig, png_path, dpi=110)
    return png_path
