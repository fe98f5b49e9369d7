"""Compress a trained run: channel pruning, layer pruning, fine-tuning with / without distillation, INT8.

The YOLOv4 pruning paper's recipe (yolov4-pruning-distillation-detection.md, §2.2.3-2.2.4, Table 5),
applied to a run's deployed model (the best checkpoint of its deployed stage)::

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

from defectlite.checkpoint import save_checkpoint
from defectlite.compress.channel_prune import channel_counts, prune_channels
from defectlite.compress.layer_prune import no_blocks_message, prune_layers, residual_blocks
from defectlite.compress.reparam import reparameterize
from defectlite.compress.restore import load_checkpoint
from defectlite.errors import ConfigError
from defectlite.evaluate.profile import onnx_cost
from defectlite.evaluate.report import write_gamma_plot
from defectlite.pipeline import export_and_check, open_context, quantize_and_score, train_stage
from defectlite.pipeline.deployment import fuse
from defectlite.runs import open_run
from defectlite.tasks import get_task
from defectlite.tasks.base import Task
from defectlite.utils import atomic_write_json, atomic_write_text
from defectlite.workflows.validation import score_run_splits

log = logging.getLogger(__name__)


def prune_run(
    run_dir: Path,
    *,
    ratio: float = 0.9,
    layers: int = 0,
    round_to: int | None = None,
    finetune_epochs: int = 10,
    distill: bool = True,
    lr: float = 0.01,
    ema: bool = True,
    threads: int = 1,
    out_name: str | None = None,
    progress: bool = True,
) -> dict[str, Any]:
    """Prune a run's deployed model and fine-tune it; write a Table-5-like report. Resumable.

    Args:
        run_dir: a finished ``defectlite train`` run (ideally trained with ``--set student.sparsity=...``).
        ratio: share of channels to remove globally (paper: 0.9).
        layers: number of residual blocks to remove after channel pruning (0 = none).
        round_to: keep every pruned layer's channel count a multiple of this (e.g. 8, the AVX2 float32 width:
            a NEU detector at ratio 0.5 ran 2.89x instead of 2.50x faster than unpruned), or None. Torch-Pruning
            rounds the kept count down, so a layer whose target is below N is left whole: less may be removed
            than ``ratio`` asks (the report's "% removed" says how much was).
        finetune_epochs: epochs of each fine-tuning (CE, and KD when ``distill``).
        distill: also fine-tune with distillation from the unpruned model (Eq. 15: soft targets at
            temperature T weighted by alpha against the labels, T and alpha from the run's recipe).
        lr: peak learning rate of fine-tuning.
        ema: validate and select an exponential moving average of the weights during fine-tuning, with the
            decay of the run's deployed stage (timm ``ModelEmaV3`` with warm-up, so a 1-epoch fine-tune is not
            held back by it); False, or a stage trained without EMA, fine-tunes the raw weights. SWA is never
            used in fine-tuning.
        threads: ONNX Runtime threads for the batch-1 latency.

    Returns:
        The report dict (also written to ``<run>/<out_name>/prune_report.json``).

    Raises:
        ConfigError: ``layers`` exceeds the model's removable residual blocks (checked before any work),
            a ratio outside (0, 1) or ``round_to`` < 1.
    """
    run = open_run(run_dir)
    cfg, task = run.config(), get_task(run.task)
    task.check_config(cfg)
    original, card = load_checkpoint(run.best())
    h, w = cfg.data.input_size
    shape = (1, cfg.data.channels, h, w)
    if not 0.0 < ratio < 1.0:
        raise ConfigError(f"--ratio must be in (0, 1), got {ratio}")
    if round_to is not None and round_to < 1:
        raise ConfigError(f"--round-to must be >= 1, got {round_to}")
    if layers > 0 and layers > (have := len(residual_blocks(original, shape))):
        raise ConfigError(f"{card['model']}: {no_blocks_message(layers, have)}")
    out = run.root / (out_name or prune_folder(ratio, layers, round_to))
    if not out.resolve().is_relative_to(run.root.resolve()):
        raise ConfigError(f"--out {out_name}: the pruning report goes inside the run folder {run.root}")
    out.mkdir(parents=True, exist_ok=True)
    ctx = open_context(run, progress=False)
    ctx.progress = progress
    data = ctx.data
    val_images = task.split_truth(data, "val")[0][:32]
    rows: dict[str, dict[str, Any]] = {}

    def record(name: str, model: nn.Module, mcard: dict[str, Any]) -> None:
        save_checkpoint(out / name, model, mcard)
        onnx_path = out / f"{name}.onnx"
        deployed = fuse(model, mcard)
        parity = export_and_check(onnx_path, deployed, task, val_images)
        rows[name] = {
            **_split_scores(score_run_splits(onnx_path, task, data), task),
            **onnx_cost(onnx_path, deployed.fused, shape, threads, 64),
            "parity_max_abs_diff": parity["max_abs_diff"],
        }
        log.info("%s: %s", name, rows[name])

    record("original", original, card)
    before = channel_counts(original)
    pruned = copy.deepcopy(original)
    history = prune_channels(pruned, shape, ratio, round_to=round_to)
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
    deployed = cfg.student if run.deployed_stage == "student" else (cfg.ensemble.member or cfg.student)
    stage = dataclasses.replace(
        deployed,
        sparsity=0.0,
        optim=dataclasses.replace(
            deployed.optim,
            epochs=finetune_epochs,
            lr=lr,
            warmup_epochs=0.0,
            ema_decay=deployed.optim.ema_decay if ema else 0.0,
            swa_epochs=0,
        ),
    )
    teacher = reparameterize(original)
    for name, t in (("finetuned", None), ("finetuned_kd", teacher if distill else None)):
        if name == "finetuned_kd" and not distill:
            continue
        tuned = copy.deepcopy(pruned)
        stage_name = (out.resolve().relative_to(run.root.resolve()) / f"{name}_train").as_posix()
        train_stage(ctx, stage_name, stage, teacher=t, model=tuned, model_card=pcard)
        best, bcard = load_checkpoint(run.stage(stage_name).best)
        record(name, best, bcard)
    last = "finetuned_kd" if distill else "finetuned"
    int8 = out / f"{last}_int8.onnx"
    q = cfg.int8
    quantize_and_score(out / f"{last}.onnx", int8, task, data, calib_images=q.calib_images, seed=cfg.seed,
                       min_reduction=q.min_reduction)  # fmt: skip
    rows[f"{last}_int8"] = {
        **_split_scores(score_run_splits(int8, task, data), task),
        **onnx_cost(int8, None, shape, threads, 64),
        "params": rows[last]["params"],
        "macs": rows[last]["macs"],
    }
    gammas = run.stage(run.deployed_stage).gammas
    gamma_png = write_gamma_plot(gammas, out / "gammas.png") if gammas.is_file() else None
    report = {
        "run": str(run.root),
        "out": out.name,
        "task": task.name,
        "model": card["model"],
        "ratio": ratio,
        "layers": layers,
        "round_to": round_to,
        "finetune_epochs": finetune_epochs,
        "distill": distill,
        "ema_decay": stage.optim.ema_decay,
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


def prune_folder(ratio: float, layers: int, round_to: int | None = None) -> str:
    """The folder name of one pruning setting inside its run: ``prune-r<ratio>-l<layers>[-c<round_to>]``."""
    return f"prune-r{ratio:g}-l{layers}" + (f"-c{round_to}" if round_to else "")


def _split_scores(scores: dict[str, dict[str, Any]], task: Task) -> dict[str, Any]:
    """The headline metric of val and test as flat row fields (``val_score``, ``test_score``) and the task's second
    metric on test (``test_mcc`` of a classifier, ``test_map`` of a detector)."""
    key, second = task.score_key, task.runtime.secondary_key
    return {"score_name": key, "val_score": scores["val"][key], "test_score": scores["test"][key],
            f"test_{second}": scores["test"].get(second)}  # fmt: skip


def render_prune_report(r: dict[str, Any]) -> str:
    """Markdown version of the pruning table (like Table 5 of the YOLOv4 pruning paper)."""
    base = r["rows"]["original"]
    lines = [
        f"# Pruning `{r['model']}`: channel ratio {r['ratio']}, {r['layers']} residual blocks removed"
        + (f", channel counts multiples of {r['round_to']}" if r.get("round_to") else ""),
        "",
        f"Fine-tuning: {r['finetune_epochs']} epochs each"
        + (f", weight EMA (decay {r['ema_decay']})" if r.get("ema_decay") else "")
        + f"; distillation T = {r['kd']['temperature']}, "
        f"alpha = {r['kd']['alpha']}. Input {r['input_shape']}. Latency: ONNX Runtime batch 1, median of 200 runs "
        f"after 20 warm-up, {base['threads_b1']} thread; throughput at batch 64 with {base['threads_throughput']} "
        "threads; all rows measured in the same run.",
        "",
        f"| model | params | size MB | MACs (M) | ORT b1 ms (p95) | speed-up | img/s b64 | val {base['score_name']} "
        f"| test {base['score_name']} |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for name, x in r["rows"].items():
        lines.append(
            f"| {name} | {x['params']:,} ({100 * (1 - x['params'] / base['params']):.1f} % removed) | "
            f"{x['onnx_mb']:.3f} | {x['macs'] / 1e6:.1f} | {x['ort_b1_ms']:.3f} ({x['ort_b1_p95_ms']:.3f}) | "
            f"{base['ort_b1_ms'] / x['ort_b1_ms']:.2f}x | {x['ort_throughput']:,.0f} | "
            f"{100 * x['val_score']:.2f} % | {100 * x['test_score']:.2f} % |"
        )
    lines += ["", "Channels per conv (before -> after channel pruning):", ""]
    lines += [f"- `{k}`: {v} -> {r['channels_after'].get(k, v)}" for k, v in r["channels_before"].items()]
    if r.get("gamma_plot"):
        lines += ["", f"BN |gamma| histograms over sparsity training: `{Path(r['gamma_plot']).name}`"]
    return "\n".join(lines) + "\n"
