"""A run, end to end: data -> teacher -> distilled student -> re-parameterise -> test -> profile -> ONNX -> report.

A run folder holds::

    config.yaml          the resolved recipe
    splits.csv           the split (reused by every later command on the run)
    teacher/             best.*, last.*, metrics.csv   (when the recipe has a teacher)
    student/             best.*, last.*, metrics.csv
    model.safetensors    the deployed (re-parameterised) student, with model.json (its card)
    model.onnx           the same in ONNX, with metadata
    report.md, report.json, confusion_test.png, confusion_test.csv

Every stage resumes: finished stages are skipped, an interrupted one continues from ``last``.
"""

from __future__ import annotations

import logging
import os
import time
from pathlib import Path
from typing import Any

import torch
from torch import nn

from defectlite.checkpoint import load_checkpoint, save_checkpoint
from defectlite.compress.reparam import reparameterize
from defectlite.compress.sparsity import GammaRecorder, SparsityObjective
from defectlite.data import SplitData, prepare, resolve_data_path
from defectlite.data.augment import train_augment
from defectlite.data.transforms import normalize
from defectlite.deploy.export import PARITY_TOL, check_parity, export_onnx
from defectlite.errors import CheckpointError, ConfigError
from defectlite.evaluate.metrics import classification_metrics
from defectlite.evaluate.profile import (
    count_macs,
    count_params,
    file_size_mb,
    machine,
    ort_timing,
    torch_timing,
)
from defectlite.evaluate.report import write_confusion, write_report
from defectlite.models import create_model
from defectlite.train.config import RecipeCfg, StageCfg, dump_recipe, load_recipe
from defectlite.train.ensemble import PseudoLabel
from defectlite.train.loop import FitResult, fit, predict_logits
from defectlite.train.objectives import CrossEntropy, LogitDistill
from defectlite.utils import atomic_write_text, seed_everything

log = logging.getLogger(__name__)


def load_data(cfg: RecipeCfg, run_dir: Path, progress: bool = True) -> SplitData:
    """Read, split (or re-read ``splits.csv``) and decode the recipe's data for ``run_dir``."""
    d = cfg.data
    return prepare(
        resolve_data_path(d.path),
        size=d.input_size,
        channels=d.channels,
        format=d.format,
        ratios=d.split,
        seed=cfg.seed,
        splits_csv=run_dir / "splits.csv",
        train_fraction=d.train_fraction,
        drop_leaks=d.drop_leaks,
        skip_bad=d.skip_bad,
        progress=progress,
    )


def base_card(cfg: RecipeCfg, data: SplitData) -> dict[str, Any]:
    """Card fields every checkpoint of the run shares (classes, input, normalisation)."""
    mean, std = data.norm_stats()
    return {
        "classes": data.classes,
        "num_classes": len(data.classes),
        "in_chans": cfg.data.channels,
        "input_size": list(cfg.data.input_size),
        "mean": mean,
        "std": std,
        "recipe": cfg.name,
        "seed": cfg.seed,
    }


def train_stage(
    stage: StageCfg,
    name: str,
    cfg: RecipeCfg,
    data: SplitData,
    run_dir: Path,
    teacher: nn.Module | None = None,
    progress: bool = True,
    *,
    model: nn.Module | None = None,
    card: dict[str, Any] | None = None,
    seed: int | None = None,
    hard_alpha: float | None = None,
) -> FitResult:
    """Train one model of the run into ``run_dir/name``: cross-entropy, or distilled from ``teacher``,
    plus the BN-gamma L1 penalty when ``stage.sparsity > 0`` (|gamma| recorded per epoch in
    ``gammas.npz``).

    Args:
        model, card: start from this model (e.g. a pruned one) described by this card, instead of a
            fresh ``stage.model``.
        seed: initialisation, batch-order and augmentation seed (default: the recipe's).
        hard_alpha: learn from the teacher's hard pseudo-labels (mixed with the true labels by this
            weight) instead of its soft targets.
    """
    card = card or {**base_card(cfg, data), "model": stage.model, "model_kwargs": stage.model_kwargs}
    seed = cfg.seed if seed is None else seed
    seed_everything(seed)
    if model is None:
        model = create_model(stage.model, len(data.classes), cfg.data.channels, **stage.model_kwargs)
    ls = stage.optim.label_smoothing
    if teacher is None:
        objective = CrossEntropy(ls)
    elif hard_alpha is not None:
        objective = PseudoLabel(teacher, hard_alpha, label_smoothing=ls)
    else:
        objective = LogitDistill(teacher, cfg.kd.temperature, cfg.kd.alpha, label_smoothing=ls)
    hook = None
    if stage.sparsity > 0:
        objective = SparsityObjective(objective, model, stage.sparsity)
        hook = GammaRecorder(run_dir / name / "gammas.npz", model)
    return fit(
        model,
        data.subset("train"),
        data.subset("val"),
        objective,
        stage.optim,
        run_dir / name,
        norm=(card["mean"], card["std"]),
        augment=train_augment(**vars(stage.augment)),
        seed=seed,
        card=card,
        desc=name,
        progress=progress,
        device=cfg.device,
        on_epoch_end=hook,
    )


def resolve_teacher(path: Path) -> Path:
    """The checkpoint stem a ``--teacher`` argument names: a stem, or a run folder's teacher/student best.

    Raises:
        CheckpointError: nothing usable there.
    """
    p = Path(path)
    for cand in (p, p / "teacher" / "best", p / "student" / "best"):
        if cand.with_suffix(".json").is_file() or (cand.suffix == ".json" and cand.is_file()):
            return cand.with_suffix("") if cand.suffix == ".json" else cand
    raise CheckpointError(f"no teacher checkpoint in {p} (expected {p}/teacher/best.json or {p}/student/best.json)")


def stage_summary(stage: StageCfg, fit_result: FitResult) -> dict[str, Any]:
    return {
        "model": stage.model,
        "epochs": stage.optim.epochs,
        "best_epoch": fit_result.best_epoch,
        "best_val_acc": fit_result.best_val_acc,
        "best_val_loss": fit_result.best_val_loss,
        "train_minutes": fit_result.train_seconds / 60,
        "amp": fit_result.amp,
    }


def save_run_config(cfg: RecipeCfg, run_dir: Path) -> None:
    """Write ``config.yaml``; refuse to mix a different recipe into an existing run.

    Raises:
        ConfigError: ``run_dir`` holds a run of another config (resume it with ``--resume``).
    """
    path = run_dir / "config.yaml"
    text = dump_recipe(cfg)
    if path.is_file() and path.read_text() != text:
        raise ConfigError(
            f"{run_dir} already holds a run with a different config; resume it with `defectlite train --resume "
            f"{run_dir}` or choose another --out"
        )
    run_dir.mkdir(parents=True, exist_ok=True)
    atomic_write_text(path, text)


def load_run_config(run_dir: Path) -> RecipeCfg:
    """The resolved recipe of an existing run.

    Raises:
        CheckpointError: ``run_dir`` is not a run folder.
    """
    path = Path(run_dir) / "config.yaml"
    if not path.is_file():
        raise CheckpointError(f"{run_dir} is not a defectlite run folder (no config.yaml)")
    return load_recipe(path)


def train_run(
    cfg: RecipeCfg,
    run_dir: Path,
    *,
    teacher_path: Path | None = None,
    teacher_ensemble: Path | None = None,
    progress: bool = True,
) -> dict[str, Any]:
    """Run the whole recipe into ``run_dir`` (resuming whatever is already there) and return the report.

    With ``cfg.ensemble.members = N`` (or ``teacher_ensemble``, a run holding ``member*/``), N members
    are trained (or loaded) and the student is distilled from their mean or focal ensemble.

    Raises:
        DataError, ConfigError, CheckpointError: bad data, recipe or teacher checkpoint.
    """
    run_dir = Path(run_dir)
    save_run_config(cfg, run_dir)
    if cfg.threads:  # 0 keeps PyTorch's default: all cores, or $OMP_NUM_THREADS
        torch.set_num_threads(cfg.threads)
    t0 = time.perf_counter()
    data = load_data(cfg, run_dir, progress)
    log.info("data: %s, classes %s, split %s", data.root, data.classes, data.counts())
    stages: dict[str, Any] = {}
    teacher, hard_alpha, deploy_stage = None, None, "student"
    ens = cfg.ensemble
    if ens.members > 0 or teacher_ensemble is not None:
        from defectlite.workflows.ensemble import ensemble_teacher, train_members

        if teacher_ensemble is None:
            stages.update(train_members(cfg, data, run_dir, progress))
        teacher = ensemble_teacher(teacher_ensemble or run_dir, ens.combine, ens.k, data.classes)
        hard_alpha = ens.hard_alpha if ens.targets == "hard" else None
        if not ens.distill:
            teacher, deploy_stage = None, "member0"
    elif teacher_path is not None:
        teacher, tcard = load_checkpoint(resolve_teacher(teacher_path))
        if tcard["classes"] != data.classes:
            raise CheckpointError(
                f"teacher {teacher_path} was trained on classes {tcard['classes']}, not {data.classes}"
            )
    elif cfg.teacher is not None:
        res = train_stage(cfg.teacher, "teacher", cfg, data, run_dir, progress=progress)
        stages["teacher"] = stage_summary(cfg.teacher, res)
        teacher, _ = load_checkpoint(run_dir / "teacher" / "best")
    if teacher is not None:
        teacher = reparameterize(teacher)
    if deploy_stage == "student":
        res = train_stage(cfg.student, "student", cfg, data, run_dir, teacher, progress, hard_alpha=hard_alpha)
        stages["student"] = stage_summary(cfg.student, res)
    report = finish_run(run_dir, cfg, data, stages, deploy_stage)
    report["gradcam"] = gradcam_per_class(run_dir)
    report["wall_minutes"] = (time.perf_counter() - t0) / 60
    write_report(run_dir, report)
    return report


def gradcam_per_class(run_dir: Path) -> dict[str, str]:
    """One Grad-CAM overlay per class for the report (file names in ``run_dir``); an explanation that
    fails is logged and left out, it never costs the run."""
    from defectlite.evaluate.explain import explain_per_class

    try:
        return {c: p.name for c, p in explain_per_class(run_dir).items()}
    except Exception as e:  # noqa: BLE001 - explanations are a report extra
        log.warning("Grad-CAM overlays skipped: %s", e)
        return {}


def finish_run(
    run_dir: Path, cfg: RecipeCfg, data: SplitData, stages: dict[str, Any], deploy_stage: str = "student"
) -> dict[str, Any]:
    """Re-parameterise the best deployed model (the student), evaluate every trained model and ensemble on
    test (once), export, profile; return the report."""
    student, card = load_checkpoint(run_dir / deploy_stage / "best")
    deployed = reparameterize(student)
    dcard = {**card, "reparameterized": True, "source": f"{deploy_stage}/best"}
    save_checkpoint(run_dir / "model", deployed, dcard)
    x_test, y_test = data.subset("test")
    mean, std = card["mean"], card["std"]
    test_all = {}
    for name in ("teacher", "student"):
        ck = run_dir / name / "best"
        if not ck.with_suffix(".json").is_file():
            continue
        model = deployed if name == deploy_stage else reparameterize(load_checkpoint(ck)[0])
        pred = predict_logits(model, x_test, mean, std).argmax(1)
        test_all[name] = classification_metrics(y_test, pred, data.classes)
    if stages.keys() & {f"member{i}" for i in range(cfg.ensemble.members)}:
        from defectlite.workflows.ensemble import evaluate_members

        test_all.update(evaluate_members(run_dir, cfg, data))
    test = test_all["student" if deploy_stage == "student" else "member0"]
    write_confusion(test["confusion"], data.classes, run_dir / "confusion_test", f"{cfg.student.model}, test split")
    export = export_and_check(run_dir / "model.onnx", student, dcard, data.subset("val")[0][:64])
    profile = profile_model(student, deployed, run_dir, cfg)
    return {
        "recipe": cfg.name,
        "seed": cfg.seed,
        "data": {
            "root": str(data.root),
            "format": data.format,
            "classes": data.classes,
            "counts": data.counts(),
            "leaks": len(data.leaks),
            "dropped_leaks": data.dropped_leaks,
            "leaked": [vars(leak) for leak in data.leaks],
            "skipped": data.skipped,
        },
        "stages": stages,
        "test": test,
        "test_all": test_all,
        "profile": profile,
        "export": export,
        "paper": cfg.paper,
        "machine": machine(),
    }


def export_and_check(onnx_path: Path, model: nn.Module, card: dict[str, Any], images) -> dict[str, Any]:
    """Write ``onnx_path`` and compare ONNX Runtime with PyTorch on ``images`` (uint8 (N, C, H, W)).

    Raises:
        CheckpointError: the ONNX output differs from PyTorch by more than 1e-4.
    """
    export_onnx(model, card, onnx_path)
    diff = check_parity(model, onnx_path, images, card)
    x = torch.from_numpy(normalize(images, card["mean"], card["std"]))
    with torch.no_grad():
        reparam_diff = float((model.eval()(x) - reparameterize(model)(x)).abs().max())
    if diff > PARITY_TOL:
        raise CheckpointError(f"{onnx_path}: ONNX Runtime differs from PyTorch by {diff:.2e} (> {PARITY_TOL:.0e})")
    return {
        "path": str(onnx_path),
        "max_abs_diff": diff,
        "tolerance": PARITY_TOL,
        "reparam_max_abs_diff": reparam_diff,
        "images": len(images),
    }


def profile_model(train_form: nn.Module, deployed: nn.Module, run_dir: Path, cfg: RecipeCfg) -> dict[str, Any]:
    """Params, MACs, sizes and latency (PyTorch eager and ONNX Runtime, batch 1 and batch N)."""
    p = cfg.profile
    h, w = cfg.data.input_size
    one = (1, cfg.data.channels, h, w)
    many = (p.throughput_batch, cfg.data.channels, h, w)
    cores = os.cpu_count() or 1
    onnx_path = run_dir / "model.onnx"
    timings = [
        torch_timing(deployed, one, threads=p.threads, warmup=p.warmup, runs=p.runs),
        ort_timing(onnx_path, one, threads=p.threads, warmup=p.warmup, runs=p.runs),
        torch_timing(deployed, many, threads=cores, warmup=2, runs=p.throughput_runs),
        ort_timing(onnx_path, many, threads=cores, warmup=2, runs=p.throughput_runs),
    ]
    return {
        "params_train": count_params(train_form),
        "params_deployed": count_params(deployed),
        "macs": count_macs(deployed, one),
        "input_shape": list(one),
        "onnx_mb": file_size_mb(onnx_path),
        "weights_mb": file_size_mb(run_dir / "model.safetensors"),
        "timings": [t.as_dict() for t in timings],
    }


def export_run(run_dir: Path, out: Path | None = None) -> dict[str, Any]:
    """Re-export a run's best student (``defectlite export``): ``model.safetensors`` and ONNX, parity checked.

    Args:
        run_dir: a run folder with ``student/best``.
        out: the .onnx to write (default ``<run>/model.onnx``).
    """
    run_dir = Path(run_dir)
    cfg = load_run_config(run_dir)
    data = load_data(cfg, run_dir, progress=False)
    student, card = load_checkpoint(run_dir / "student" / "best")
    dcard = {**card, "reparameterized": True, "source": "student/best"}
    save_checkpoint(run_dir / "model", reparameterize(student), dcard)
    return export_and_check(Path(out or run_dir / "model.onnx"), student, dcard, data.subset("val")[0][:64])
