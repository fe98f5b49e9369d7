"""Training orchestration: the teacher (none, trained, a checkpoint, an ensemble of members), the student, each
stage resumable; the run started, continued, or its ensemble members trained alone.

Every stage resumes: a finished stage returns at once, an interrupted one continues from its last epoch. Under
``torchrun`` every rank trains (data-parallel, :mod:`defectlite.train.distributed`); rank 0 alone deploys and
reports (:mod:`defectlite.pipeline.reporting`).
"""

from __future__ import annotations

import dataclasses
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import nn

from defectlite.checkpoint import read_card, save_checkpoint
from defectlite.compress.reparam import reparameterize
from defectlite.compress.restore import load_checkpoint
from defectlite.compress.sparsity import GammaRecorder, SparsityObjective
from defectlite.errors import CheckpointError, ConfigError
from defectlite.pipeline.context import RunContext, check_eval_splits, open_context
from defectlite.runs import STATISTICS, Run, StageFiles, TeacherSource, create_run, is_run, open_run
from defectlite.tasks import get_task
from defectlite.tasks.base import Card
from defectlite.train import distributed as dist
from defectlite.train.config import RecipeCfg, StageCfg
from defectlite.train.loop import FitResult, fit, read_history, write_history
from defectlite.utils import seed_everything


def train_stage(
    ctx: RunContext,
    name: str,
    stage: StageCfg,
    *,
    teacher: nn.Module | None = None,
    seed: int | None = None,
    model: nn.Module | None = None,
    model_card: Card | None = None,
    **objective_options: Any,
) -> FitResult:
    """Train one model of the run into ``RUN/<name>``: the task's objective (distilled from ``teacher`` when
    given), plus the BN-gamma L1 penalty when ``stage.sparsity > 0`` (|gamma| per epoch in ``gammas.npz``); or,
    for a task that fits the stage from statistics (:meth:`~defectlite.tasks.base.Task.fit_statistics`), that.

    Args:
        seed: initialisation, batch-order and augmentation seed (default: the recipe's).
        model, model_card: start from this model (e.g. a pruned one) described by this card, instead of a fresh
            ``stage.model``.
        objective_options: passed to the task's objective (classification: ``hard_alpha`` for pseudo-labels).
    """
    cfg, task, files = ctx.cfg, ctx.task, ctx.run.stage(name)
    seed = cfg.seed if seed is None else seed
    seed_everything(seed)  # the same initialisation on every rank (DDP also broadcasts rank 0's weights)
    if model is None:
        model, model_card = task.build_model(stage, ctx.card, ctx.data)
    objective = task.objective(stage, cfg, teacher, model_card, **objective_options)
    hook = None
    if stage.sparsity > 0:
        objective = SparsityObjective(objective, model, stage.sparsity)
        hook = GammaRecorder(files.gammas, model)
    stage_data = task.stage_data(stage, cfg, ctx.data, model_card)
    if _fitted_from_statistics(files):  # finished earlier: nothing to fit again
        return _statistics_result(files, stage_data.score_name)
    t0 = time.perf_counter()
    fitted = task.fit_statistics(model, stage_data, stage)
    if fitted is not None:
        row = {"epoch": 0, **fitted, "epoch_s": time.perf_counter() - t0}
        if dist.world().main:
            files.root.mkdir(parents=True, exist_ok=True)
            write_history(files.metrics, [row])
            save_checkpoint(files.best, model, {**model_card, **fitted, "fitted": STATISTICS})  # the commit point
        dist.barrier()
        return _statistics_result(files, stage_data.score_name)
    return fit(
        model,
        stage_data,
        objective,
        stage.optim,
        files,
        seed=seed,
        card=model_card,
        desc=name,
        progress=ctx.progress,
        device=cfg.device,
        on_epoch_end=hook,
        save_period=cfg.save_period,
    )


def _fitted_from_statistics(files: StageFiles) -> bool:
    """Whether the stage was fitted from statistics (its best card says so; a loop stage's never does)."""
    return files.best_card.is_file() and read_card(files.best_card).get("fitted") == STATISTICS


def _statistics_result(files: StageFiles, score_name: str) -> FitResult:
    """The FitResult of a stage fitted from statistics (its one ``metrics.csv`` row)."""
    row = read_history(files.metrics)[0]
    nan = float("nan")
    return FitResult(files.root, 0, row.get(score_name, nan), row.get("val_loss", nan), row.get("epoch_s", 0.0),
                     score_name, [row])  # fmt: skip


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
    if is_run(p):
        run = open_run(p)
        for stage in (run.deployed_stage, "teacher"):
            if run.has_best(stage):
                return run.best(stage)
    for cand in (p, p.with_suffix("")):
        if cand.with_suffix(".json").is_file() and cand.with_suffix(".safetensors").is_file():
            return cand.with_suffix("")
    raise CheckpointError(f"no teacher checkpoint in {p} (give a run folder or a checkpoint's .json / .safetensors)")


# -- the teacher ----------------------------------------------------------------------------------------------
def teacher_source(run: Run, cfg: RecipeCfg) -> TeacherSource:
    """Where the student's teacher comes from, as one value: ``ensemble`` (another run's members, given),
    ``checkpoint`` (given), ``members`` (the ensemble this run trains), ``trained`` (the recipe's teacher stage)
    or ``none``."""
    given = run.teacher
    if given is not None and given.kind in ("ensemble", "checkpoint"):
        return given
    if cfg.ensemble.members > 0:
        return TeacherSource("members")
    return TeacherSource("trained") if cfg.teacher is not None else TeacherSource("none")


@dataclass
class Teacher:
    """The student's frozen, re-parameterised teacher and what it implies.

    Attributes:
        module: the teacher, or None (nothing to distil from, or an ensemble used only to train members).
        options: the objective options it implies (``hard_alpha`` for ensemble pseudo-labels).
        stages: report summaries of the stages trained for it (teacher, member<i>).
    """

    module: nn.Module | None = None
    options: dict[str, Any] = field(default_factory=dict)
    stages: dict[str, Any] = field(default_factory=dict)


def build_teacher(ctx: RunContext, source: TeacherSource) -> Teacher:
    """Train (or resume) and load the teacher ``source`` names.

    Raises:
        CheckpointError: a checkpoint or ensemble trained on other classes, or no members to distil from.
    """
    cfg, task, ens = ctx.cfg, ctx.task, ctx.cfg.ensemble
    if source.kind in ("members", "ensemble"):
        stages: dict[str, Any] = {}
        if source.kind == "members":
            stages = _train_members(ctx, range(ens.members))
            members = ctx.run
        else:
            members = open_run(source.path)
        ensemble = task.ensemble_teacher([members.best(m) for m in members.members()], ens.combine, ens.k,
                                         ctx.data.classes)  # fmt: skip
        return Teacher(ensemble if ens.distill else None, task.ensemble_options(ens), stages)
    if source.kind == "checkpoint":
        teacher, tcard = load_checkpoint(source.path)
        if tcard["classes"] != list(ctx.data.classes):
            raise CheckpointError(
                f"teacher {source.path} was trained on classes {tcard['classes']}, not {ctx.data.classes}"
            )
        return Teacher(reparameterize(teacher))
    if source.kind == "trained":
        res = train_stage(ctx, "teacher", cfg.teacher)
        return Teacher(reparameterize(load_checkpoint(ctx.run.best("teacher"))[0]), {},
                       {"teacher": stage_summary(cfg.teacher, res)})  # fmt: skip
    return Teacher()


def _train_members(ctx: RunContext, indices) -> dict[str, Any]:
    """Train (or resume) ensemble members ``indices``: member i in ``RUN/member<i>`` with seed 1000 seed + i (its
    own initialisation, batch order and augmentation; WeldNet paper, Algorithm 1)."""
    member, out = ctx.cfg.ensemble.member or ctx.cfg.student, {}
    for i in indices:
        res = train_stage(ctx, f"member{i}", member, seed=1000 * ctx.cfg.seed + i)
        out[f"member{i}"] = stage_summary(member, res)
    return out


def train_members(run: Run, members: list[int], progress: bool = True) -> dict[str, Any]:
    """Train only the given ensemble members of ``run`` (``defectlite train --members 0,2``); the run is distilled
    later, by ``--resume`` once every member is there (or ``--teacher-ensemble RUN`` from another run).

    Raises:
        ConfigError: the recipe has no ensemble, or an index is not below ``ensemble.members``.
    """
    cfg = run.config()
    n = cfg.ensemble.members
    if not n or not members or max(members) >= n:
        raise ConfigError(f"--members {members}: the run's recipe trains {n} ensemble members (0 .. {n - 1})")
    return _train_members(open_context(run, progress=progress), members)


# -- a whole run ------------------------------------------------------------------------------------------------
def train_run(
    cfg: RecipeCfg,
    run_dir: Path,
    *,
    teacher: TeacherSource | None = None,
    progress: bool = True,
    argv: list[str] | None = None,
    jobs: int | None = None,
    nproc: int | None = None,
    verbose: bool = False,
) -> dict[str, Any] | None:
    """Start (or continue) the run of ``cfg`` in ``run_dir``; returns the report.

    Args:
        teacher: distil from this checkpoint or ensemble run instead of the recipe's own teacher stage.
        argv: the command line, recorded in ``run.json``.
        jobs: train the ensemble members this many at a time, in separate processes (cores split between them).
        nproc: train data-parallel in this many processes on this machine (``torchrun --standalone``).
        verbose: debug messages from the torchrun processes too.

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
    return resume_run(run or open_run(run_dir), progress=progress, jobs=jobs, nproc=nproc, verbose=verbose)


def resume_run(
    run: Run, progress: bool = True, *, jobs: int | None = None, nproc: int | None = None, verbose: bool = False
) -> dict[str, Any] | None:
    """Run (or finish) everything ``run``'s config and manifest say, resuming whatever is already there.

    Under ``torchrun`` every rank trains (data-parallel, :mod:`defectlite.train.distributed`); rank 0 alone
    deploys, evaluates, exports and reports, and the other ranks return None.

    Args:
        jobs: first train the ensemble members this many at a time
            (:func:`~defectlite.pipeline.parallel.train_members_in_parallel`).
        nproc: run this under ``torchrun`` in ``nproc`` processes and return the report rank 0 wrote
            (:func:`~defectlite.pipeline.parallel.run_under_torchrun`).
    """
    from defectlite.pipeline import parallel
    from defectlite.pipeline.reporting import finish_run

    if jobs and ((nproc or 1) > 1 or dist.under_torchrun()):
        raise ConfigError(
            "--jobs trains members in separate single processes; it does not combine with --nproc / torchrun "
            "(train the members data-parallel with --members I,J --nproc N instead)"
        )
    if nproc is not None and nproc > 1 and not dist.under_torchrun():
        return parallel.run_under_torchrun(run, nproc, progress=progress, verbose=verbose)
    if jobs:
        parallel.train_members_in_parallel(run, jobs)
    cfg = run.config()
    w = dist.init_from_env(cfg.device)
    if cfg.threads:  # 0 keeps PyTorch's default: all cores, or $OMP_NUM_THREADS (torchrun / --nproc set it)
        torch.set_num_threads(cfg.threads)
    t0 = time.perf_counter()
    if not w.main:
        dist.barrier()  # rank 0 reads, splits and caches the data first; the others reuse its splits.csv and cache
    ctx = dataclasses.replace(open_context(run, progress=progress and w.main), progress=progress)
    if w.main:
        dist.barrier()
    check_eval_splits(ctx)
    teacher = build_teacher(ctx, teacher_source(run, cfg))
    stages = dict(teacher.stages)
    if run.deployed_stage == "student":
        res = train_stage(ctx, "student", cfg.student, teacher=teacher.module, **teacher.options)
        stages["student"] = stage_summary(cfg.student, res)
    if not w.main:
        return None
    return finish_run(ctx, stages, started=t0)
