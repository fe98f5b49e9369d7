"""A run, end to end: data -> teacher (trained, given, or an ensemble) -> student -> re-parameterise -> test ->
ONNX -> profile -> report. Orchestration only: the run folder is :mod:`defectlite.runs`' (its layout is
documented there), everything that depends on the task is the task's (:mod:`defectlite.tasks`).

Every stage resumes: finished stages return at once, an interrupted one continues from its last epoch, and
the deployment steps after training (fusing, test, export, profile, report) are recomputed from the
checkpoints, so a run killed at any point and resumed ends as an uninterrupted one.
"""

from __future__ import annotations

import logging
import time
from pathlib import Path
from typing import Any

import torch
from torch import nn

from defectlite.checkpoint import save_checkpoint
from defectlite.compress.reparam import reparameterize
from defectlite.compress.restore import load_checkpoint
from defectlite.compress.sparsity import GammaRecorder, SparsityObjective
from defectlite.cpus import available_cpus
from defectlite.deploy.onnx_export import PARITY_TOL, export_onnx
from defectlite.errors import CheckpointError, ConfigError, DataError
from defectlite.evaluate.profile import count_macs, count_params, file_size_mb, machine, ort_timing, torch_timing
from defectlite.evaluate.report import write_curves, write_report
from defectlite.runs import Run, TeacherSource, create_run, open_run
from defectlite.tasks import get_task
from defectlite.train import distributed as dist
from defectlite.train.config import RecipeCfg, StageCfg
from defectlite.train.loop import FitResult, fit, read_history
from defectlite.utils import seed_everything

log = logging.getLogger(__name__)


def train_stage(
    run: Run,
    name: str,
    stage: StageCfg,
    cfg: RecipeCfg,
    task: Any,
    data: Any,
    card: dict[str, Any],
    *,
    teacher: nn.Module | None = None,
    seed: int | None = None,
    model: nn.Module | None = None,
    model_card: dict[str, Any] | None = None,
    progress: bool = True,
    **objective_options: Any,
) -> FitResult:
    """Train one model of the run into ``RUN/<name>``: the task's objective (distilled from ``teacher`` when
    given), plus the BN-gamma L1 penalty when ``stage.sparsity > 0`` (|gamma| per epoch in ``gammas.npz``).

    Args:
        seed: initialisation, batch-order and augmentation seed (default: the recipe's).
        model, model_card: start from this model (e.g. a pruned one) described by this card, instead of a fresh
            ``stage.model``.
        objective_options: passed to ``task.objective`` (classification: ``hard_alpha`` for pseudo-labels).
    """
    seed = cfg.seed if seed is None else seed
    seed_everything(seed)  # the same initialisation on every rank (DDP also broadcasts rank 0's weights)
    if model is None:
        model, model_card = task.build_model(stage, card, data)
    objective = task.objective(stage, cfg, teacher, model_card, **objective_options)
    hook = None
    if stage.sparsity > 0:
        objective = SparsityObjective(objective, model, stage.sparsity)
        hook = GammaRecorder(run.stage_dir(name) / "gammas.npz", model)
    return fit(
        model,
        task.stage_data(stage, cfg, data, model_card),
        objective,
        stage.optim,
        run.stage_dir(name),
        seed=seed,
        card=model_card,
        desc=name,
        progress=progress,
        device=cfg.device,
        on_epoch_end=hook,
        save_period=cfg.save_period,
    )


def stage_summary(stage: StageCfg, fit_result: FitResult) -> dict[str, Any]:
    """What the report says of a trained stage."""
    return {
        "model": stage.model,
        "epochs": stage.optim.epochs,
        "epochs_run": len(fit_result.history),  # fewer than planned when a time limit stopped the stage
        "best_epoch": fit_result.best_epoch,
        "score_name": fit_result.score_name,
        "best_val_score": fit_result.best_score,
        "best_val_loss": fit_result.best_loss,
        "train_minutes": fit_result.train_seconds / 60,
        "amp": fit_result.amp,
    }


def resolve_teacher(path: str | Path) -> Path:
    """The checkpoint stem a ``--teacher`` argument names: a stem, or a run folder's deployed / teacher best.

    Raises:
        CheckpointError: nothing usable there.
    """
    p = Path(path)
    if p.is_dir() and (p / "config.yaml").is_file():
        run = open_run(p)
        for stage in (run.deployed_stage, "teacher"):
            if run.has_best(stage):
                return run.best(stage)
    for cand in (p, p.with_suffix("")):
        if cand.with_suffix(".json").is_file() and cand.with_suffix(".safetensors").is_file():
            return cand.with_suffix("")
    raise CheckpointError(f"no teacher checkpoint in {p} (give a run folder or a checkpoint's .json / .safetensors)")


def _train_members(run: Run, cfg: RecipeCfg, task: Any, data: Any, card: dict, indices, progress: bool) -> dict:
    """Train (or resume) ensemble members ``indices``: member i in ``RUN/member<i>`` with seed 1000 seed + i (its
    own initialisation, batch order and augmentation; WeldNet paper, Algorithm 1)."""
    member, out = cfg.ensemble.member or cfg.student, {}
    for i in indices:
        res = train_stage(run, f"member{i}", member, cfg, task, data, card, seed=1000 * cfg.seed + i, progress=progress)
        out[f"member{i}"] = stage_summary(member, res)
    return out


def train_members(run: Run, members: list[int], progress: bool = True) -> dict[str, Any]:
    """Train only the given ensemble members of ``run`` (``defectlite train --members 0,2``); the run is distilled
    later, by ``--resume`` once every member is there (or ``--teacher-ensemble RUN`` from another run).

    Raises:
        ConfigError: the recipe has no ensemble, or an index is not below ``ensemble.members``.
    """
    from defectlite.errors import ConfigError

    cfg = run.config()
    task = get_task(run.task)
    task.check_config(cfg)
    n = cfg.ensemble.members
    if not n or max(members) >= n:
        raise ConfigError(f"--members {members}: the run's recipe trains {n} ensemble members (0 .. {n - 1})")
    data = task.load_data(cfg, run, progress)
    return _train_members(run, cfg, task, data, task.card(cfg, data), members, progress)


def _teacher(run: Run, cfg: RecipeCfg, task: Any, data: Any, card: dict[str, Any], stages: dict, progress: bool):
    """The frozen, re-parameterised teacher of the student and the objective options it implies (or None)."""
    source, ens = run.teacher, cfg.ensemble
    options: dict[str, Any] = {}
    if ens.members > 0 or (source and source.kind == "ensemble"):
        if source is None or source.kind != "ensemble":
            stages |= _train_members(run, cfg, task, data, card, range(ens.members), progress)
            stems = [run.best(m) for m in run.members()]
        else:
            other = open_run(source.path)
            stems = [other.best(m) for m in other.members()]
        teacher = task.ensemble_teacher(stems, ens.combine, ens.k, data.classes)
        if ens.targets == "hard":
            options["hard_alpha"] = ens.hard_alpha
        return (teacher if ens.distill else None), options
    if source and source.kind == "checkpoint":
        teacher, tcard = load_checkpoint(source.path)
        if tcard["classes"] != list(data.classes):
            raise CheckpointError(
                f"teacher {source.path} was trained on classes {tcard['classes']}, not {data.classes}"
            )
        return reparameterize(teacher), options
    if cfg.teacher is not None:
        res = train_stage(run, "teacher", cfg.teacher, cfg, task, data, card, progress=progress)
        stages["teacher"] = stage_summary(cfg.teacher, res)
        return reparameterize(load_checkpoint(run.best("teacher"))[0]), options
    return None, options


def train_run(
    cfg: RecipeCfg,
    run_dir: Path,
    *,
    teacher: TeacherSource | None = None,
    progress: bool = True,
    argv: list[str] | None = None,
) -> dict[str, Any]:
    """Start (or continue) the run of ``cfg`` in ``run_dir``; returns the report.

    Args:
        teacher: distil from this checkpoint or ensemble run instead of the recipe's own teacher stage.
        argv: the command line, recorded in ``run.json``.

    Raises:
        DataError, ConfigError, CheckpointError, TrainingError: bad data, recipe, teacher (a checkpoint teacher
            for a recipe that trains an ensemble teacher is refused), or a diverged stage.
    """
    get_task(cfg.task).check_config(cfg)  # before anything is written or read
    if teacher is not None and teacher.kind == "checkpoint" and cfg.ensemble.members > 0:
        raise ConfigError(
            f"--teacher {teacher.path}: recipe {cfg.name!r} distils from an ensemble of {cfg.ensemble.members} "
            "members it trains; give --teacher-ensemble RUN for an ensemble already trained, or drop the members "
            "with --set ensemble.members=0 to distil from this checkpoint"
        )
    w = dist.init_from_env(cfg.device)
    run = create_run(run_dir, cfg, teacher=teacher, argv=argv) if w.main else None
    dist.barrier()
    return resume_run(run or open_run(run_dir), progress=progress)


def resume_run(run: Run, progress: bool = True) -> dict[str, Any] | None:
    """Run (or finish) everything ``run``'s config and manifest say, resuming whatever is already there.

    Under ``torchrun`` every rank trains (data-parallel, :mod:`defectlite.train.distributed`); rank 0 alone
    deploys, evaluates, exports and reports, and the other ranks return None.
    """
    cfg = run.config()
    task = get_task(run.task)
    task.check_config(cfg)
    w = dist.init_from_env(cfg.device)
    if cfg.threads:  # 0 keeps PyTorch's default: all cores, or $OMP_NUM_THREADS (torchrun / --nproc set it)
        torch.set_num_threads(cfg.threads)
    t0 = time.perf_counter()
    if not w.main:
        dist.barrier()  # rank 0 reads, splits and caches the data first; the others reuse its splits.csv and cache
    data = task.load_data(cfg, run, progress and w.main)
    if w.main:
        dist.barrier()
    counts = data.counts()
    log.info("data: %s, classes %s, split %s", data.root, data.classes, counts)
    empty = [s for s in ("val", "test") if not counts.get(s)]
    if empty:  # before any training: selection needs val, the report test
        raise DataError(
            f"{data.root}: the {' and '.join(empty)} split{'s are' if len(empty) > 1 else ' is'} empty ({counts}); "
            "a run selects its epoch on val and scores test: give each a share (data.split, now "
            f"{list(cfg.data.split)}) or more images"
        )
    card = task.card(cfg, data)
    stages: dict[str, Any] = {}
    teacher, options = _teacher(run, cfg, task, data, card, stages, progress)
    if run.deployed_stage == "student":
        res = train_stage(run, "student", cfg.student, cfg, task, data, card, teacher=teacher, progress=progress,
                          **options)  # fmt: skip
        stages["student"] = stage_summary(cfg.student, res)
    if not w.main:
        return None
    report = finish_run(run, cfg, task, data, card, stages)
    report["wall_minutes"] = (time.perf_counter() - t0) / 60
    write_report(run.root, report, task.report_lines(report))
    return report


def deploy_checkpoint(run: Run, cfg: RecipeCfg, task: Any, data: Any) -> tuple[nn.Module, dict[str, Any]]:
    """Calibrate (the task's, on validation) and fuse the deployed stage's best checkpoint into ``RUN/model.*``;
    returns (training-form model, card)."""
    stage = run.deployed_stage
    model, card = load_checkpoint(run.best(stage))
    dcard = {**card, "reparameterized": True, "source": f"{stage}/best"}
    calibration = task.calibrate(model, data, card, cfg, run.root)  # folds into ``model`` in place, or None
    if calibration:
        dcard["calibration"] = calibration
    save_checkpoint(run.deployed, reparameterize(model), dcard)
    return model, dcard


def finish_run(run: Run, cfg: RecipeCfg, task: Any, data: Any, card: dict[str, Any], stages: dict) -> dict[str, Any]:
    """Deploy, evaluate every trained model (and ensemble) on test once, export, profile; return the report."""
    model, dcard = deploy_checkpoint(run, cfg, task, data)
    deployed = reparameterize(model)
    test_all = {}
    for name in ("teacher", *run.members(), "student"):
        if name == run.deployed_stage:
            test_all[name] = task.evaluate(deployed, data, "test", dcard)
        elif run.has_best(name):
            net, ncard = load_checkpoint(run.best(name))
            test_all[name] = task.evaluate(reparameterize(net), data, "test", ncard)
    members = run.members()
    if members and cfg.ensemble.members:
        ensemble = task.ensemble_teacher([run.best(m) for m in members], cfg.ensemble.combine, cfg.ensemble.k,
                                         data.classes)  # fmt: skip
        test_all.update(task.evaluate_ensemble(ensemble, data, dcard))
    export = export_and_check(run.onnx, model, dcard, task, task.split_truth(data, "val")[0][:64])
    int8 = deploy_int8(run, cfg, task, data)
    report = {
        "task": task.name,
        "recipe": cfg.name,
        "seed": cfg.seed,
        "model": dcard["model"],
        "data": data_summary(data),
        "stages": stages,
        "test": test_all[run.deployed_stage],
        "test_all": test_all,
        "calibration": dcard.get("calibration"),
        "profile": profile_model(model, deployed, run, cfg),
        "export": export,
        "int8": int8,
        "paper": cfg.paper,
        "machine": machine(),
    }
    report["figures"] = task.figures(run.root, report, data)
    curves = write_curves({s: read_history(run.stage_dir(s) / "metrics.csv") for s in stages}, run.root / "curves.png")
    report["figures"]["curves"] = curves.name if curves else None
    report["paper_values"] = task.paper_values(report) if hasattr(task, "paper_values") else {}
    return report


def deploy_int8(run: Run, cfg: RecipeCfg, task: Any, data: Any) -> dict[str, Any] | None:
    """Quantise ``model.onnx`` to INT8 (QDQ, per channel, calibrated on training images) and keep it as
    ``model.int8.onnx`` (which ``predict`` and ``serve`` then run) only when its validation score is within
    ``int8.max_drop`` of the float model's; the test split is scored for the report, never for the decision.

    Returns:
        What the report says (scores, latency of both, deployed or why not), or None when switched off.
    """
    from defectlite.compress.int8 import calibration_subset, quantize_onnx
    from defectlite.data.transforms import normalize
    from defectlite.deploy.predictor import INT8_SUFFIX, Predictor

    path = run.root / f"model{INT8_SUFFIX}"
    path.unlink(missing_ok=True)  # never leave a stale INT8 model beside a new float one
    if not cfg.int8.deploy:
        return None
    key = task.runtime.score_key
    images = calibration_subset(task.split_truth(data, "train")[0], cfg.int8.calib_images, cfg.seed)
    meta = Predictor(run.onnx, fp32=True).meta
    tmp = run.root / ".model.int8.candidate.onnx"
    try:
        quantize_onnx(run.onnx, tmp, normalize(images, meta["mean"], meta["std"]),
                      min_reduction=cfg.int8.min_reduction)  # fmt: skip
        scores = {}
        for name, onnx_path in (("fp32", run.onnx), ("int8", tmp)):
            p = Predictor.for_scoring(onnx_path)
            scores[name] = {s: p.score(*task.split_truth(data, s))[key] for s in ("val", "test")}
        drop = scores["fp32"]["val"] - scores["int8"]["val"]
        keep = drop <= cfg.int8.max_drop
        if keep:
            tmp.replace(path)
        else:
            log.info("INT8 not deployed: validation %s drops by %.4f (> %.4f)", key, drop, cfg.int8.max_drop)
    finally:
        tmp.unlink(missing_ok=True)  # a failed quantisation leaves no half-written candidate behind
    h, w = cfg.data.input_size
    shape = (1, cfg.data.channels, h, w)
    timings, prof = {}, cfg.profile
    for name, onnx_path in (("fp32", run.onnx), ("int8", path)) if keep else ():
        timings[name] = ort_timing(onnx_path, shape, threads=prof.threads, warmup=prof.warmup, runs=prof.runs).as_dict()
    return {"deployed": keep, "score_key": key, "val_drop": drop, "max_drop": cfg.int8.max_drop, **scores,
            "timings": timings, "path": path.name if keep else None}  # fmt: skip


def data_summary(data: Any) -> dict[str, Any]:
    """What the report says of the data: where, which layout, classes, split counts, leaks, skipped files."""
    return {
        "root": str(data.root),
        "format": data.format,
        "classes": list(data.classes),
        "counts": data.counts(),
        "leaks": len(data.leaks),
        "dropped_leaks": data.dropped_leaks,
        "leaked": [vars(leak) for leak in data.leaks],
        "skipped": data.skipped,
        "warnings": list(getattr(data, "warnings", [])),
    }


def export_and_check(onnx_path: Path, model: nn.Module, card: dict[str, Any], task: Any, images) -> dict[str, Any]:
    """Write ``onnx_path`` (the task's outputs and metadata) and compare ONNX Runtime with PyTorch on ``images``
    (uint8 (N, C, H, W)).

    Raises:
        CheckpointError: the outputs differ by more than 1e-4, or are not finite (a diverged model).
    """
    export_onnx(model, card, onnx_path, wrap=task.export_module, extra=task.export_metadata(card))
    diff = task.parity(model, onnx_path, images, card)
    if not diff <= PARITY_TOL:  # NaN fails too
        raise CheckpointError(f"{onnx_path}: ONNX Runtime differs from PyTorch by {diff:.2e} (> {PARITY_TOL:.0e})")
    fused = reparameterize(model)
    reparam_diff = max(
        float(abs(a - b).max())
        for a, b in zip(task.outputs(model.eval(), images, card), task.outputs(fused, images, card))
    )
    return {
        "path": str(onnx_path),
        "max_abs_diff": diff,
        "tolerance": PARITY_TOL,
        "reparam_max_abs_diff": reparam_diff,
        "images": len(images),
    }


def profile_model(train_form: nn.Module, deployed: nn.Module, run: Run, cfg: RecipeCfg) -> dict[str, Any]:
    """Params, MACs, sizes and latency (PyTorch eager and ONNX Runtime, batch 1 and batch N)."""
    p = cfg.profile
    h, w = cfg.data.input_size
    one = (1, cfg.data.channels, h, w)
    many = (p.throughput_batch, cfg.data.channels, h, w)
    cores = available_cpus()
    timings = [
        torch_timing(deployed, one, threads=p.threads, warmup=p.warmup, runs=p.runs),
        ort_timing(run.onnx, one, threads=p.threads, warmup=p.warmup, runs=p.runs),
        torch_timing(deployed, many, threads=cores, warmup=2, runs=p.throughput_runs),
        ort_timing(run.onnx, many, threads=cores, warmup=2, runs=p.throughput_runs),
    ]
    return {
        "params_train": count_params(train_form),
        "params_deployed": count_params(deployed),
        "macs": count_macs(deployed, one),
        "input_shape": list(one),
        "onnx_mb": file_size_mb(run.onnx),
        "weights_mb": file_size_mb(run.deployed.with_suffix(".safetensors")),
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
    run = open_run(run_dir)
    cfg = run.config()
    task = get_task(run.task)
    data = task.load_data(cfg, run, progress=False)
    model, dcard = deploy_checkpoint(run, cfg, task, data)
    images = task.split_truth(data, "val")[0][:64]
    target = Path(out or run.onnx)
    res = export_and_check(target, model, dcard, task, images)
    if target.resolve() == run.onnx.resolve():
        res["int8"] = deploy_int8(run, cfg, task, data)
    return res
