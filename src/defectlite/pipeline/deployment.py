"""Deployment of a trained model: calibrate and fuse it once, export it to ONNX with the task's outputs and metadata,
check ONNX Runtime against PyTorch, quantise it to INT8 (the one INT8 deployment of ``train``, ``prune`` and
``quantize``), and profile it.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from torch import nn

from defectlite.checkpoint import save_checkpoint
from defectlite.compress.reparam import reparameterize
from defectlite.compress.restore import load_checkpoint
from defectlite.cpus import available_cpus
from defectlite.deploy.onnx_export import PARITY_TOL, check_parity, export_onnx
from defectlite.errors import CheckpointError
from defectlite.evaluate.profile import count_macs, count_params, file_size_mb, ort_timing, torch_timing
from defectlite.onnx_file import read_metadata
from defectlite.pipeline.context import RunContext, open_context
from defectlite.runs import open_run
from defectlite.tasks.base import Card, Task, TaskData
from defectlite.train.config import ProfileCfg

log = logging.getLogger(__name__)


@dataclass
class Deployed:
    """A model ready to deploy, fused once.

    Attributes:
        train_form: the model as trained (calibrated in place), e.g. for parameter counts of the training form.
        fused: ``reparameterize(train_form)``: what is saved, exported, evaluated and profiled.
        card: its card (``reparameterized``, ``source``, ``calibration`` when calibrated).
    """

    train_form: nn.Module
    fused: nn.Module
    card: Card


def fuse(model: nn.Module, card: Card) -> Deployed:
    """Fuse ``model`` (a copy; the training form is kept) into its deployed form, once."""
    return Deployed(model, reparameterize(model), card)


def deploy_checkpoint(ctx: RunContext) -> Deployed:
    """Calibrate (the task's, on validation) and fuse the deployed stage's best checkpoint, and save it as
    ``RUN/model.*``."""
    run = ctx.run
    stage = run.deployed_stage
    model, card = load_checkpoint(run.best(stage))
    dcard = {**card, "reparameterized": True, "source": f"{stage}/best"}
    calibration = ctx.task.calibrate(model, ctx.data, card, ctx.cfg, run.root)  # folds into ``model`` in place
    if calibration:
        dcard["calibration"] = calibration
    deployed = fuse(model, dcard)
    save_checkpoint(run.deployed, deployed.fused, dcard)
    return deployed


def export_and_check(onnx_path: Path, model: Deployed, task: Task, images: np.ndarray) -> dict[str, Any]:
    """Write ``onnx_path`` (the task's outputs and metadata) and compare ONNX Runtime with PyTorch on ``images``
    (uint8 (N, C, H, W)); also the fused model against its training form.

    Raises:
        CheckpointError: the outputs differ by more than 1e-4, or are not finite (a diverged model).
    """
    card = model.card
    export_onnx(model.fused, card, onnx_path, wrap=task.export_module, extra=task.export_metadata(card),
                output_names=task.output_names(card), fused=True)  # fmt: skip
    diff = check_parity(model.fused, onnx_path, images, card, wrap=task.export_module, fused=True)
    if not diff <= PARITY_TOL:  # NaN fails too
        raise CheckpointError(f"{onnx_path}: ONNX Runtime differs from PyTorch by {diff:.2e} (> {PARITY_TOL:.0e})")
    reparam_diff = max(
        float(abs(a - b).max())
        for a, b in zip(task.outputs(model.train_form.eval(), images, card), task.outputs(model.fused, images, card))
    )
    return {
        "path": str(onnx_path),
        "max_abs_diff": diff,
        "tolerance": PARITY_TOL,
        "reparam_max_abs_diff": reparam_diff,
        "images": len(images),
    }


def quantize_and_score(
    fp32: Path,
    out: Path,
    task: Task,
    data: TaskData,
    *,
    calib_images: int,
    seed: int,
    min_reduction: int,
    method: str = "minmax",
    per_channel: bool = True,
    max_drop: float | None = None,
) -> dict[str, Any]:
    """Quantise ``fp32`` to INT8 (ONNX Runtime static QDQ, calibrated on ``calib_images`` training images drawn with
    ``seed``) and score both files on val and test with the task's headline metric. With ``max_drop``, ``out`` is
    kept only when the validation score drops by at most that much (the test split is scored for the report, never
    for the decision); without it, always. A failed quantisation leaves no file behind.

    Returns:
        ``{"deployed", "score_key", "val_drop", "max_drop", "fp32": {"val", "test"}, "int8": {"val", "test"},
        "path"}`` (``path``: the INT8 file's name, or None when it was not kept).
    """
    from defectlite.compress.int8 import calibration_subset, quantize_onnx
    from defectlite.data.transforms import normalize
    from defectlite.deploy.predictor import Predictor

    key = task.score_key
    meta = read_metadata(fp32)
    images = calibration_subset(task.split_truth(data, "train")[0], calib_images, seed)
    tmp = out.with_name(f".{out.name.removesuffix('.onnx')}.candidate.onnx")  # beside it: the same file system
    try:
        quantize_onnx(fp32, tmp, normalize(images, meta["mean"], meta["std"]), per_channel=per_channel, method=method,
                      min_reduction=min_reduction)  # fmt: skip
        scores = {}
        for name, onnx_path in (("fp32", fp32), ("int8", tmp)):
            p = Predictor.for_scoring(onnx_path)
            scores[name] = {s: p.score(*task.split_truth(data, s))[key] for s in ("val", "test")}
        drop = scores["fp32"]["val"] - scores["int8"]["val"]
        keep = max_drop is None or drop <= max_drop
        if keep:
            tmp.replace(out)
        else:
            log.info("INT8 not deployed: validation %s drops by %.4f (> %.4f)", key, drop, max_drop)
    finally:
        tmp.unlink(missing_ok=True)
    return {"deployed": keep, "score_key": key, "val_drop": drop, "max_drop": max_drop, **scores,
            "path": out.name if keep else None}  # fmt: skip


def deploy_int8(ctx: RunContext) -> dict[str, Any] | None:
    """The run's INT8 gate: ``RUN/model.int8.onnx`` (which ``predict`` and ``serve`` then run) when its validation
    score is within the task's tolerance (the recipe's ``int8.max_drop``) of ``model.onnx``'s; batch-1 latency of
    both when kept.

    Returns:
        What the report says (:func:`quantize_and_score` plus ``timings``), or None when switched off.
    """
    run, cfg, task = ctx.run, ctx.cfg, ctx.task
    run.int8.unlink(missing_ok=True)  # never leave a stale INT8 model beside a new float one
    if not cfg.int8.deploy:
        return None
    q = cfg.int8
    res = quantize_and_score(run.onnx, run.int8, task, ctx.data, calib_images=q.calib_images, seed=cfg.seed,
                             min_reduction=q.min_reduction, max_drop=task.int8_tolerance(cfg))  # fmt: skip
    h, w = cfg.data.input_size
    shape = (1, cfg.data.channels, h, w)
    p = cfg.profile
    res["timings"] = {
        name: ort_timing(path, shape, threads=p.threads, warmup=p.warmup, runs=p.runs).as_dict()
        for name, path in ((("fp32", run.onnx), ("int8", run.int8)) if res["deployed"] else ())
    }
    return res


def profile_model(
    model: Deployed, onnx_path: Path, weights: Path, input_shape: tuple[int, ...], p: ProfileCfg
) -> dict[str, Any]:
    """Params (training form and fused), MACs, sizes (MB) and latency (PyTorch eager and ONNX Runtime, batch 1 on
    ``p.threads`` threads and batch ``p.throughput_batch`` on every CPU the process may use).

    Args:
        input_shape: (1, C, H, W).
    """
    one = tuple(input_shape)
    many = (p.throughput_batch, *one[1:])
    cores = available_cpus()
    timings = [
        torch_timing(model.fused, one, threads=p.threads, warmup=p.warmup, runs=p.runs),
        ort_timing(onnx_path, one, threads=p.threads, warmup=p.warmup, runs=p.runs),
        torch_timing(model.fused, many, threads=cores, warmup=2, runs=p.throughput_runs),
        ort_timing(onnx_path, many, threads=cores, warmup=2, runs=p.throughput_runs),
    ]
    return {
        "params_train": count_params(model.train_form),
        "params_deployed": count_params(model.fused),
        "macs": count_macs(model.fused, one),
        "input_shape": list(one),
        "onnx_mb": file_size_mb(onnx_path),
        "weights_mb": file_size_mb(weights),
        "timings": [t.as_dict() for t in timings],
    }


def export_run(run_dir: Path, out: Path | None = None) -> dict[str, Any]:
    """Re-export a run's deployed model (``defectlite export``): ``model.safetensors`` and ONNX, parity checked.

    Args:
        run_dir: a run folder (its deployed stage, from ``run.json``, must have a best checkpoint).
        out: the .onnx to write (default ``<run>/model.onnx``, whose INT8 form is then made again by
            :func:`deploy_int8`, so ``predict`` never runs an INT8 model of an older export).

    Returns:
        What :func:`export_and_check` returns, with ``int8`` (what :func:`deploy_int8` returns) when the run's own
        ``model.onnx`` was written.
    """
    ctx = open_context(open_run(run_dir), progress=False)
    model = deploy_checkpoint(ctx)
    target = Path(out or ctx.run.onnx)
    res = export_and_check(target, model, ctx.task, ctx.task.split_truth(ctx.data, "val")[0][:64])
    if target.resolve() == ctx.run.onnx.resolve():
        res["int8"] = deploy_int8(ctx)
    return res
