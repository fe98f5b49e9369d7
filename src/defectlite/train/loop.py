"""The training loop: plain PyTorch, task-agnostic, resumable exactly, selecting on the validation split only.

:func:`fit` runs epochs of :func:`train_epoch` (forward under bf16 autocast where the hardware has it,
``objective(...)["loss"]`` backward, optimizer step with a per-step learning rate, EMA update), then
validates the weights that would be kept (the EMA / SWA average when on) and commits the epoch
(:func:`commit_epoch`): ``metrics.csv``, then ``last.safetensors`` (the whole stage state:
:mod:`defectlite.train.state`), then ``best.*`` when the epoch was selected.

What is trained on comes from a :class:`StageData` that the task provides (batches, how a batch becomes
model input, validation metrics): classification and detection share this loop.

Model selection: the highest validation score (``StageData.score_name``: accuracy, mAP@0.5, ...); ties go
to the latest epoch. On a small validation split the score saturates (NEU: 100 % of 180 images from
about epoch 15 of 60), and among equal scores the later epoch is the more converged one (the cosine
schedule ends at its lowest learning rate); validation loss as a tie-break measured confidence, not
correctness, and picked early epochs under label smoothing and distillation (see
``benchmarks/results/selection.md``).

A non-finite loss stops training at once with :class:`~defectlite.errors.TrainingError` (stage, epoch,
step, value, a hint), leaving the last good state in place.
"""

from __future__ import annotations

import csv
import io
import logging
import math
import statistics
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

import torch
from torch import Tensor, nn
from tqdm.auto import tqdm

from defectlite.checkpoint import save_checkpoint
from defectlite.errors import TrainingError
from defectlite.train import distributed as dist
from defectlite.train.averaging import WeightAverage
from defectlite.train.config import OptimCfg
from defectlite.train.device import autocast, nhwc_unsafe_convs, resolve_amp, resolve_device, resolve_memory_format
from defectlite.train.optim import build_optimizer, lr_at, set_lr
from defectlite.train.state import Best, StageState, load_state, save_state, write_best
from defectlite.utils import atomic_write_text

log = logging.getLogger(__name__)


class StageData(Protocol):
    """What a stage trains and validates on; each task provides one (see ``defectlite.tasks``).

    Attributes:
        score_name: the validation metric selection maximises, a key of :meth:`validate`'s result.
        train_size: training images per epoch.
    """

    score_name: str
    train_size: int

    def batches(self, batch_size: int, generator: torch.Generator, shard: tuple[int, int] = (0, 1)) -> Iterable[Any]:
        """One epoch of training batches, in an order drawn from ``generator``; under DDP ``shard`` = (rank, world
        size) and each rank gets its chunk of every global batch (:func:`defectlite.train.distributed.loader`)."""

    def inputs(self, batch: Any, device: torch.device) -> tuple[Tensor, Any, Any]:
        """(model input (N, C, H, W) float, objective target, ground truth for :meth:`batch_stats`)."""

    def batch_stats(self, outputs: Any, truth: Any) -> dict[str, float]:
        """Training metrics of one batch as sums over its images (e.g. ``{"train_acc": correct}``)."""

    def validate(self, model: nn.Module, amp: str) -> dict[str, float]:
        """Validation metrics of ``model`` (eval mode): ``val_loss`` and ``score_name`` at least."""

    def clean_batches(self, device: torch.device) -> Iterable[Tensor]:
        """Un-augmented training inputs (SWA's batch-norm recalibration)."""

    def start_epoch(self, epoch: int, epochs: int) -> None:
        """Called before each epoch (e.g. mosaic switched off for the last epochs)."""


class StageFolder(Protocol):
    """The files of a stage folder the loop writes (:class:`defectlite.runs.StageFiles` is the one the run folder
    uses): ``root``; ``best`` (checkpoint stem of the selected epoch), ``last`` (the resume state), ``metrics``
    (CSV, a row per epoch), ``ddp`` (replica digests), ``epoch(i)`` (checkpoint stem of epoch i)."""

    root: Path
    best: Path
    last: Path
    metrics: Path
    ddp: Path

    def epoch(self, index: int) -> Path: ...


@dataclass
class FitResult:
    """What :func:`fit` leaves behind in the stage folder ``out_dir``: the best checkpoint, the training state and the
    per-epoch metrics (:class:`StageFolder`)."""

    out_dir: Path
    best_epoch: int
    best_score: float
    best_loss: float
    train_seconds: float
    score_name: str
    history: list[dict[str, float]] = field(default_factory=list)
    amp: str = "off"  # the resolved autocast mode the stage trained with (bf16 or off)


def read_history(path: Path) -> list[dict[str, float]]:
    """Rows of a stage's ``metrics.csv`` (empty when there is none)."""
    if not path.is_file():
        return []
    with path.open(newline="") as f:
        return [{k: float(v) for k, v in row.items()} for row in csv.DictReader(f)]


def write_history(path: Path, rows: list[dict[str, float]]) -> None:
    """Write a stage's ``metrics.csv`` (one row per epoch), atomically."""
    columns = list(dict.fromkeys(k for r in rows for k in r))
    buf = io.StringIO()
    w = csv.DictWriter(buf, fieldnames=columns, lineterminator="\n")
    w.writeheader()
    for r in rows:
        w.writerow({k: (f"{r[k]:.6g}" if isinstance(r.get(k), float) else r.get(k, "")) for k in columns})
    atomic_write_text(path, buf.getvalue())


def _check_finite(value: float, desc: str, epoch: int, step: int, cfg: OptimCfg, out_dir: Path) -> None:
    if dist.world().distributed:  # every rank stops together, or the others would wait in the next all-reduce
        value = float("nan") if dist.all_sum({"bad": 0.0 if math.isfinite(value) else 1.0})["bad"] else value
    if math.isfinite(value):
        return
    kept = f"epoch {epoch}" if epoch > 0 else "no epoch yet"
    raise TrainingError(
        f"{desc}: training diverged at epoch {epoch + 1}, step {step + 1}: loss = {value} (not finite). "
        f"The last good state ({kept}) stays in {out_dir}. Lower the stage's learning rate (optim.lr = {cfg.lr:g}), "
        "lengthen its warm-up (optim.warmup_epochs), or check the data for broken images."
    )


def train_epoch(
    model: nn.Module,
    objective: nn.Module,
    data: StageData,
    opt: torch.optim.Optimizer,
    averager: WeightAverage,
    cfg: OptimCfg,
    epoch: int,
    *,
    generator: torch.Generator,
    device: torch.device,
    amp: str,
    desc: str,
    out_dir: Path,
    progress: bool = True,
    memory_format: torch.memory_format = torch.contiguous_format,
) -> dict[str, float]:
    """One epoch of training; returns ``lr`` (the last step's), ``train_loss`` and the task's batch stats,
    averaged over the epoch's images. 4-D batches are made ``memory_format`` (the model's layout).

    Raises:
        TrainingError: the loss is not finite at some step.
    """
    model.train()
    objective.train()
    steps = max(data.train_size // cfg.batch_size, 1)
    sums: dict[str, float] = {"train_loss": 0.0}
    n_seen, lr = 0, cfg.lr
    w = dist.world()
    bar = tqdm(total=steps, desc=f"{desc} {epoch + 1}/{cfg.epochs}", disable=not progress, leave=False)
    for step, batch in enumerate(data.batches(cfg.batch_size, generator, (w.rank, w.size))):
        lr = lr_at(epoch + step / steps, cfg)
        set_lr(opt, lr)
        x, target, truth = data.inputs(batch, device)
        if x.dim() == 4:
            x = x.contiguous(memory_format=memory_format)  # a no-op for NCHW batches in NCHW training
        with autocast(amp, device):
            outputs = model(x)
            out = objective(outputs, x, target)
        loss = out["loss"]
        _check_finite(float(loss.detach()), desc, epoch, step, cfg, out_dir)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        averager.after_step(model, epoch * steps + step)
        n = len(x)
        n_seen += n
        sums["train_loss"] += float(loss.detach()) * n
        for k, v in data.batch_stats(outputs, truth).items():
            sums[k] = sums.get(k, 0.0) + v
        for k in getattr(data, "log_terms", ()):  # loss terms of the objective worth a column (detection: box, ...)
            sums[f"train_{k}"] = sums.get(f"train_{k}", 0.0) + float(out[k].detach()) * n
        bar.update()
        bar.set_postfix({k.removeprefix("train_"): f"{v / n_seen:.3f}" for k, v in sums.items()} | {"lr": f"{lr:.3g}"})
    bar.close()
    sums = dist.all_sum({**sums, "_n": float(n_seen)})  # the whole global batch's averages under DDP
    n_all = sums.pop("_n")
    return {"lr": lr, **{k: v / max(n_all, 1) for k, v in sums.items()}}


def _out_of_time(cfg: OptimCfg, state: StageState, history: list[dict[str, float]]) -> bool:
    """Whether one more epoch would take the stage's training seconds past ``cfg.time_limit_minutes``. The next
    epoch is estimated as the median of the epochs after the first (which is slower: kernel set-up, caches), or as
    the first while it is the only one; never before any epoch has run."""
    times = [h["epoch_s"] for h in history]
    if not cfg.time_limit_minutes or not times:
        return False
    return state.train_seconds + statistics.median(times[1:] or times) > cfg.time_limit_minutes * 60


def _weights_finite(model: nn.Module) -> bool:
    return all(bool(torch.isfinite(p).all()) for p in model.parameters())


def commit_epoch(
    files: StageFolder,
    *,
    model: nn.Module,
    eval_model: nn.Module,
    opt: torch.optim.Optimizer,
    averager: WeightAverage,
    generator: torch.Generator,
    state: StageState,
    history: list[dict[str, float]],
    card: dict[str, Any],
    improved: bool,
    best_weights: dict[str, Tensor],
    save_period: int = 0,
) -> dict[str, Tensor]:
    """Write the finished epoch: ``metrics.csv``, then the stage state (the commit point), then ``best.*`` (and
    ``epochs/epoch<k>.*``, the evaluated weights, every ``save_period`` epochs).

    Returns:
        The best weights (this epoch's evaluated weights when ``improved``).
    """
    if improved:
        best_weights = {k: v.detach().clone() for k, v in eval_model.state_dict().items()}
    if save_period and (state.epoch + 1) % save_period == 0:
        save_checkpoint(files.epoch(state.epoch), eval_model, {**card, **history[-1]})
    write_history(files.metrics, history)
    save_state(
        files.last,
        model=model,
        best_model=best_weights,
        optimizer=opt,
        average=averager.state(),
        generator=generator,
        state=state,
    )
    if improved:
        write_best(files.best, best_weights, card, state.best)
    return best_weights


def _check_replicas(model: nn.Module, files: StageFolder, w: dist.World) -> None:
    """After data-parallel training: every rank must hold the same parameters (recorded in ``ddp.json``).

    Raises:
        TrainingError: the ranks' parameters differ.
    """
    import json

    digests = dist.gather(dist.params_digest(model))
    if w.main:
        atomic_write_text(files.ddp, json.dumps({"world_size": w.size, "param_digests": digests}) + "\n")
    if len(set(digests)) > 1:
        raise TrainingError(f"data-parallel ranks ended with different parameters: {digests}")


def fit(
    model: nn.Module,
    data: StageData,
    objective: nn.Module,
    cfg: OptimCfg,
    files: StageFolder,
    *,
    seed: int = 0,
    card: dict[str, Any],
    desc: str = "train",
    progress: bool = True,
    device: str = "auto",
    on_epoch_end: Callable[[int, nn.Module], None] | None = None,
    save_period: int = 0,
) -> FitResult:
    """Train ``model`` for ``cfg.epochs`` and keep the epoch with the best validation score (ties: the latest).

    Resumes from ``files.last`` when present — weights, optimizer state, weight average,
    random generators, epoch, selection so far — so an interrupted stage finishes with the same weights as
    an uninterrupted one; returns at once when the stage already finished.

    Args:
        model: the network, (N, C, H, W) -> what ``objective`` takes.
        data: the task's training and validation data (:class:`StageData`).
        objective: ``objective(outputs, inputs, target) -> {"loss": scalar, ...}``.
        cfg: optimiser and schedule.
        files: the stage folder's files (:class:`defectlite.runs.StageFiles`: best, last, metrics, ...).
        seed: seeds the batch order (the caller seeds initialisation and augmentation).
        card: checkpoint card fields of ``best`` (model name, kwargs, classes, input size, ...).
        desc: stage name, for progress and errors.
        device: ``auto`` (CUDA if available, else CPU), ``cpu`` or ``cuda[:i]``.
        on_epoch_end: called as ``on_epoch_end(epoch, model)`` before each epoch is committed.
        save_period: > 0 also keeps the evaluated weights of every N-th epoch in ``epochs/`` (analysis of the
            selection; Ultralytics' ``save_period``).

    Raises:
        CheckpointError: a ``last`` state exists but does not fit ``model``.
        TrainingError: the loss or the weights stop being finite.
    """
    w = dist.world()
    dist.check_batch(cfg.batch_size)
    progress = progress and w.main
    files.root.mkdir(parents=True, exist_ok=True)
    dev = resolve_device(device)
    amp = resolve_amp(cfg.amp, dev)  # once, not per step
    memory_format = resolve_memory_format(model, cfg.channels_last, dev)
    if cfg.channels_last and memory_format != torch.channels_last:
        why = "oneDNN's NHWC backward is wrong for the 1x1 strided convs with few input channels (oneDNN#6035)"
        log.warning("%s: training in NCHW, not channels_last: %s: %s", desc, why, nhwc_unsafe_convs(model))
    model.to(dev, memory_format=memory_format)
    objective.to(dev)
    opt = build_optimizer(model, cfg)
    generator = torch.Generator().manual_seed(seed)
    averager = WeightAverage(model, cfg)
    state, best_weights = StageState(), {}
    if files.last.is_file():
        state, best_weights, average = load_state(files.last, model=model, optimizer=opt,
                                                  generator=generator)  # fmt: skip
        averager.load_state(average)
        if state.best.epoch >= 0 and w.main:
            write_best(files.best, best_weights, card, state.best)  # in step with the committed state
        if state.epoch + 1 < cfg.epochs:
            log.info("%s: resuming at epoch %d of %d", desc, state.epoch + 2, cfg.epochs)
    history = [h for h in read_history(files.metrics) if h["epoch"] <= state.epoch]
    train_model = dist.wrap(model, dev)  # DistributedDataParallel under torchrun, else the model itself
    for epoch in range(state.epoch + 1, cfg.epochs):
        if cfg.time_limit_minutes and dist.broadcast(_out_of_time(cfg, state, history)):
            log.warning("%s: stopped after %d of %d epochs: the next would end past the %.3g-min time limit", desc,
                        epoch, cfg.epochs, cfg.time_limit_minutes)  # fmt: skip
            break
        t0 = time.perf_counter()
        data.start_epoch(epoch, cfg.epochs)
        dist.seed_rank(seed, epoch)
        row: dict[str, float] = {"epoch": epoch}
        row |= train_epoch(train_model, objective, data, opt, averager, cfg, epoch, generator=generator, device=dev,
                           amp=amp, desc=desc, out_dir=files.root, progress=progress,
                           memory_format=memory_format)  # fmt: skip
        dist.average_buffers(model)
        averager.after_epoch(model, epoch, lambda: data.clean_batches(dev))
        eval_model = averager.eval_model(model, epoch)
        finite = 0.0 if _weights_finite(model) and _weights_finite(eval_model) else math.nan
        _check_finite(finite, desc, epoch, data.train_size // cfg.batch_size - 1, cfg, files.root)
        row = dist.broadcast(row | data.validate(eval_model, amp) if w.main else row)  # rank 0 validates
        row["epoch_s"] = time.perf_counter() - t0
        history.append(row)
        score = row[data.score_name]
        score = -math.inf if math.isnan(score) else score  # no validation images: every epoch ties, the last wins
        improved = score >= state.best.score
        if improved:
            state.best = Best(score, row.get("val_loss", math.nan), epoch)
        state.epoch, state.train_seconds = epoch, state.train_seconds + row["epoch_s"]
        if on_epoch_end is not None and w.main:
            on_epoch_end(epoch, model)
        if w.main:
            best_weights = commit_epoch(
                files, model=model, eval_model=eval_model, opt=opt, averager=averager, generator=generator,
                state=state, history=history, card=card, improved=improved, best_weights=best_weights,
                save_period=save_period,
            )  # fmt: skip
        dist.barrier()
        log.info(
            "%s epoch %d/%d: %s | %.1f s",
            desc,
            epoch + 1,
            cfg.epochs,
            " ".join(f"{k} {v:.4f}" for k, v in row.items() if k not in ("epoch", "lr", "epoch_s")),
            row["epoch_s"],
        )
    if w.distributed:
        _check_replicas(model, files, w)
    model.to(memory_format=torch.contiguous_format)  # callers (export, pruning) get the usual layout back
    b = state.best
    return FitResult(files.root, b.epoch, b.score, b.loss, state.train_seconds, data.score_name, history, amp)
