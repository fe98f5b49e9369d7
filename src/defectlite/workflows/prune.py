"""Compress a trained run: channel pruning, layer pruning, fine-tuning with / without distillation, INT8.

The YOLOv4 pruning paper's recipe (yolov4-pruning-distillation-detection.md, §2.2.3-2.2.4, Table 5),
applied to a run's best student::

    original -> channel-pruned (global BN-gamma threshold) -> layer-pruned (lowest mean-gamma blocks)
             -> fine-tuned (CE)          \\
             -> fine-tuned (KD from the original, Eq. 15) -> INT8 (ONNX Runtime static quantisation)

Every model is exported to ONNX and parity-checked, and the table of params, size, MACs, ONNX
Runtime latency / throughput and accuracy goes to ``<run>/<out>/prune_report.md`` and ``.json``.
Model selection (the fine-tuned checkpoints) uses the validation split; test is read for the table.
"""

from __future__ import annotations

import copy
import dataclasses
import logging
from pathlib import Path
from typing import Any

from torch import nn

from defectlite.checkpoint import load_checkpoint, save_checkpoint
from defectlite.compress.layer_prune import prune_layers
from defectlite.compress.prune import channel_counts, prune_channels
from defectlite.compress.quantize import quantize_onnx
from defectlite.compress.reparam import reparameterize
from defectlite.data.transforms import normalize
from defectlite.evaluate.onnx_eval import evaluate_onnx, onnx_cost
from defectlite.evaluate.report import write_gamma_plot
from defectlite.pipeline import export_and_check, load_data, load_run_config, train_stage
from defectlite.utils import atomic_write_json, atomic_write_text

log = logging.getLogger(__name__)


def prune_run(
    run_dir: Path,
    *,
    ratio: float = 0.9,
    layers: int = 0,
    finetune_epochs: int = 10,
    distill: bool = True,
    lr: float = 0.01,
    threads: int = 1,
    out_name: str | None = None,
    progress: bool = True,
) -> dict[str, Any]:
    """Prune a run's best student and fine-tune it; write a Table-5-like report. Resumable.

    Args:
        run_dir: a finished ``defectlite train`` run (ideally trained with ``--set student.sparsity=...``).
        ratio: share of channels to remove globally (paper: 0.9).
        layers: number of residual blocks to remove after channel pruning (0 = none).
        finetune_epochs: epochs of each fine-tuning (CE, and KD when ``distill``).
        distill: also fine-tune with distillation from the unpruned model (Eq. 15: soft targets at
            temperature T weighted by alpha against the labels, T and alpha from the run's recipe).
        lr: peak learning rate of fine-tuning.
        threads: ONNX Runtime threads for the batch-1 latency.

    Returns:
        The report dict (also written to ``<run>/<out_name>/prune_report.json``).
    """
    run_dir = Path(run_dir)
    cfg = load_run_config(run_dir)
    out = run_dir / (out_name or f"prune-r{ratio:g}-l{layers}")
    out.mkdir(parents=True, exist_ok=True)
    data = load_data(cfg, run_dir, progress=False)
    original, card = load_checkpoint(run_dir / "student" / "best")
    h, w = cfg.data.input_size
    shape = (1, cfg.data.channels, h, w)
    rows: dict[str, dict[str, Any]] = {}

    def record(name: str, model: nn.Module, mcard: dict[str, Any]) -> None:
        save_checkpoint(out / name, model, mcard)
        onnx_path = out / f"{name}.onnx"
        parity = export_and_check(onnx_path, model, mcard, data.subset("val")[0][:32])
        rows[name] = {
            **evaluate_onnx(onnx_path, data, mcard),
            **onnx_cost(onnx_path, model, shape, threads, 64),
            "parity_max_abs_diff": parity["max_abs_diff"],
        }
        log.info("%s: %s", name, rows[name])

    record("original", original, card)
    before = channel_counts(original)
    pruned = copy.deepcopy(original)
    history = prune_channels(pruned, shape, ratio)
    pcard = {
        **card,
        "transforms": [*card.get("transforms", []), {"prune_channels": history, "input_shape": list(shape)}],
    }
    record("channel_pruned", pruned, pcard)
    after = channel_counts(pruned)
    if layers > 0:
        dropped = prune_layers(pruned, shape, layers)
        pcard = {**pcard, "transforms": [*pcard["transforms"], {"drop_blocks": dropped}]}
        record("layer_pruned", pruned, pcard)
    stage = dataclasses.replace(
        cfg.student,
        sparsity=0.0,
        optim=dataclasses.replace(cfg.student.optim, epochs=finetune_epochs, lr=lr, warmup_epochs=0.0, ema_decay=0.0),
    )
    teacher = reparameterize(original)
    for name, t in (("finetuned", None), ("finetuned_kd", teacher if distill else None)):
        if name == "finetuned_kd" and not distill:
            continue
        tuned = copy.deepcopy(pruned)
        train_stage(stage, f"{out.name}/{name}_train", cfg, data, run_dir, t, progress, model=tuned, card=pcard)
        best, bcard = load_checkpoint(out / f"{name}_train" / "best")
        record(name, best, bcard)
    last = "finetuned_kd" if distill else "finetuned"
    int8 = quantize_onnx(
        out / f"{last}.onnx",
        out / f"{last}_int8.onnx",
        normalize(data.subset("train")[0][:256], card["mean"], card["std"]),
    )
    rows[f"{last}_int8"] = {
        **evaluate_onnx(int8, data, card),
        **onnx_cost(int8, None, shape, threads, 64),
        "params": rows[last]["params"],
        "macs": rows[last]["macs"],
    }
    gamma_png = None
    if (run_dir / "student" / "gammas.npz").is_file():
        gamma_png = write_gamma_plot(run_dir / "student" / "gammas.npz", out / "gammas.png")
    report = {
        "run": str(run_dir),
        "model": card["model"],
        "ratio": ratio,
        "layers": layers,
        "finetune_epochs": finetune_epochs,
        "distill": distill,
        "kd": dataclasses.asdict(cfg.kd),
        "input_shape": list(shape),
        "rows": rows,
        "channels_before": before,
        "channels_after": after,
        "gamma_plot": str(gamma_png) if gamma_png else None,
    }
    atomic_write_json(out / "prune_report.json", report)
    atomic_write_text(out / "prune_report.md", render_prune_report(report))
    return report


def render_prune_report(r: dict[str, Any]) -> str:
    """Markdown version of the pruning table (like Table 5 of the YOLOv4 pruning paper)."""
    base = r["rows"]["original"]
    lines = [
        f"# Pruning `{r['model']}`: channel ratio {r['ratio']}, {r['layers']} residual blocks removed",
        "",
        f"Fine-tuning: {r['finetune_epochs']} epochs each; distillation T = {r['kd']['temperature']}, "
        f"alpha = {r['kd']['alpha']}. Input {r['input_shape']}. Latency: ONNX Runtime batch 1, median of 200 runs "
        f"after 20 warm-up, {base['threads_b1']} thread; throughput at batch 64 with {base['threads_throughput']} "
        "threads; all rows measured in the same run.",
        "",
        "| model | params | size MB | MACs (M) | ORT b1 ms (p95) | speed-up | img/s b64 | val acc | test acc |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for name, x in r["rows"].items():
        lines.append(
            f"| {name} | {x['params']:,} ({100 * (1 - x['params'] / base['params']):.1f} % removed) | "
            f"{x['onnx_mb']:.3f} | {x['macs'] / 1e6:.1f} | {x['ort_b1_ms']:.3f} ({x['ort_b1_p95_ms']:.3f}) | "
            f"{base['ort_b1_ms'] / x['ort_b1_ms']:.2f}x | {x['ort_throughput']:,.0f} | "
            f"{100 * x['val_accuracy']:.2f} % | {100 * x['test_accuracy']:.2f} % |"
        )
    lines += ["", "Channels per conv (before -> after channel pruning):", ""]
    lines += [f"- `{k}`: {v} -> {r['channels_after'].get(k, v)}" for k, v in r["channels_before"].items()]
    if r.get("gamma_plot"):
        lines += ["", f"BN |gamma| histograms over sparsity training: `{Path(r['gamma_plot']).name}`"]
    return "\n".join(lines) + "\n"
