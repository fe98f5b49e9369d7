"""The training loop: plain PyTorch, one function, resumable, selecting on the validation split only.

Per epoch: shuffle (seeded by seed and epoch, so a resumed run draws the same batches), augment,
forward (bf16 autocast where the hardware has bf16, see ``resolve_amp``), ``objective(...)["loss"]``
backward, SGD step with a per-step learning rate; then evaluate on validation, append a row to
``metrics.csv`` and write the ``last`` checkpoint (and ``best`` when validation accuracy improves, ties broken by lower
validation loss) atomically. With ``ema_decay > 0`` or ``swa_epochs > 0`` the validated and
saved-as-best weights are an average of the trained ones (:mod:`defectlite.train.averaging`);
``mixup_alpha`` / ``cutmix_alpha`` mix batches (timm ``Mixup``) into soft targets.
"""

from __future__ import annotations

import contextlib
import csv
import io
import logging
import math
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.data import DataLoader
from tqdm.auto import tqdm

from defectlite.checkpoint import load_tensors, read_card, save_checkpoint, save_tensors
from defectlite.data.dataset import ArrayDataset
from defectlite.data.transforms import normalize
from defectlite.errors import CheckpointError
from defectlite.train.averaging import WeightAverage
from defectlite.train.config import OptimCfg
from defectlite.utils import atomic_write_text

log = logging.getLogger(__name__)
METRIC_COLUMNS = ["epoch", "lr", "train_loss", "train_acc", "val_loss", "val_acc", "epoch_s"]


def lr_at(epoch: float, cfg: OptimCfg) -> float:
    """Learning rate at a fractional epoch: linear warm-up from lr/10, then cosine or multi-step; constant
    ``swa_lr`` over the last ``swa_epochs`` epochs when SWA is on.

    Raises:
        ValueError: unknown ``cfg.schedule``.
    """
    if cfg.swa_epochs > 0 and epoch >= cfg.epochs - cfg.swa_epochs:
        return cfg.swa_lr
    if epoch < cfg.warmup_epochs:
        return cfg.lr * (0.1 + 0.9 * epoch / cfg.warmup_epochs)
    if cfg.schedule == "cosine":
        span = max(cfg.epochs - cfg.warmup_epochs, 1e-9)
        t = min((epoch - cfg.warmup_epochs) / span, 1.0)
        return cfg.min_lr + 0.5 * (cfg.lr - cfg.min_lr) * (1 + math.cos(math.pi * t))
    if cfg.schedule == "multistep":
        return cfg.lr * cfg.gamma ** sum(epoch >= m for m in cfg.milestones)
    raise ValueError(f"unknown schedule {cfg.schedule!r} (cosine or multistep)")


def resolve_device(device: str = "auto") -> torch.device:
    """``auto`` = CUDA when available, else CPU; otherwise the named device."""
    if device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(device)


def native_bf16(device: torch.device | str = "cpu") -> bool:
    """Whether ``device`` computes bf16 in hardware: CUDA with bf16 support, or a CPU with AVX512-BF16 or
    AMX. Without it PyTorch emulates bf16 and training is slower than in float32 (measured on an AVX2-only
    CPU, 2 threads: EG-RepVGG 2.2x, PDMSNet 2.6x slower per step at 64 x 1 x 160 x 160)."""
    device = torch.device(device)
    if device.type == "cuda":
        return torch.cuda.is_bf16_supported()
    return bool(torch.cpu._is_avx512_bf16_supported() or torch.cpu._is_amx_tile_supported())


def resolve_amp(amp: str, device: torch.device | str = "cpu") -> str:
    """``auto`` -> ``bf16`` where :func:`native_bf16`, else ``off``; ``bf16`` / ``off`` pass through.

    Raises:
        ValueError: an unknown mode.
    """
    if amp == "auto":
        return "bf16" if native_bf16(device) else "off"
    modes = {"bf16": "bf16", "off": "off", "none": "off", "fp32": "off"}
    if amp not in modes:
        raise ValueError(f"unknown amp mode {amp!r} (auto, bf16 or off)")
    return modes[amp]


def autocast(amp: str, device: torch.device | str = "cpu"):
    """Autocast context for ``amp`` (see :func:`resolve_amp`): bf16 autocast, or a no-op for ``off``.

    Raises:
        ValueError: an unknown mode.
    """
    if resolve_amp(amp, device) == "bf16":
        return torch.autocast(torch.device(device).type, dtype=torch.bfloat16)
    return contextlib.nullcontext()


@torch.no_grad()
def predict_logits(
    model: nn.Module, images: np.ndarray, mean, std, *, batch_size: int = 128, amp: str = "off"
) -> np.ndarray:
    """Logits (N, K) float32 of uint8 images (N, C, H, W), in eval mode, in batches."""
    model.eval()
    device = next(model.parameters()).device
    out = []
    for x in clean_batches(images, mean, std, device, batch_size):
        with autocast(amp, device):
            out.append(model(x).float().cpu())
    return torch.cat(out).numpy() if out else np.zeros((0, 0), np.float32)


def _mixup(cfg: OptimCfg, num_classes: int):
    """timm's Mixup / CutMix on normalised batches (casting paper §3), or None when both alphas are 0."""
    if cfg.mixup_alpha <= 0 and cfg.cutmix_alpha <= 0:
        return None
    from timm.data import Mixup

    # label smoothing stays with the objective, so it is applied once
    return Mixup(mixup_alpha=cfg.mixup_alpha, cutmix_alpha=cfg.cutmix_alpha, prob=cfg.mix_prob, label_smoothing=0.0,
                 num_classes=num_classes)  # fmt: skip


def clean_batches(images: np.ndarray, mean, std, device, batch_size: int = 128):
    """Normalised, un-augmented batches (n, C, H, W) of uint8 images (evaluation, BN recalibration)."""
    for i in range(0, len(images), batch_size):
        yield torch.from_numpy(normalize(images[i : i + batch_size], mean, std)).to(device)


@dataclass
class FitResult:
    """What :func:`fit` leaves behind: ``<out>/best.*``, ``last.*``, ``metrics.csv``."""

    out_dir: Path
    best_epoch: int
    best_val_acc: float
    best_val_loss: float
    train_seconds: float
    history: list[dict[str, float]] = field(default_factory=list)
    amp: str = "off"  # the resolved autocast mode the stage trained with (bf16 or off)


def _read_history(path: Path) -> list[dict[str, float]]:
    if not path.is_file():
        return []
    with path.open(newline="") as f:
        return [{k: float(v) for k, v in row.items()} for row in csv.DictReader(f)]


def _write_history(path: Path, rows: list[dict[str, float]]) -> None:
    buf = io.StringIO()
    w = csv.DictWriter(buf, fieldnames=METRIC_COLUMNS, lineterminator="\n")
    w.writeheader()
    for r in rows:
        w.writerow({k: (f"{r[k]:.6g}" if isinstance(r[k], float) else r[k]) for k in METRIC_COLUMNS})
    atomic_write_text(path, buf.getvalue())


def _save_optimizer(path: Path, opt: torch.optim.Optimizer, model: nn.Module) -> None:
    names = {id(p): n for n, p in model.named_parameters()}
    tensors = {}
    for group in opt.param_groups:
        for p in group["params"]:
            buf = opt.state.get(p, {}).get("momentum_buffer")
            if buf is not None:
                tensors[names[id(p)]] = buf
    save_tensors(path, tensors)


def _load_optimizer(path: Path, opt: torch.optim.Optimizer, model: nn.Module) -> None:
    tensors = load_tensors(path)
    for n, p in model.named_parameters():
        if n in tensors:
            opt.state[p]["momentum_buffer"] = tensors[n].to(p.device, p.dtype)


def fit(
    model: nn.Module,
    train: tuple[np.ndarray, np.ndarray],
    val: tuple[np.ndarray, np.ndarray],
    objective: nn.Module,
    cfg: OptimCfg,
    out_dir: Path,
    *,
    norm: tuple[list[float], list[float]],
    augment=None,
    seed: int = 0,
    card: dict[str, Any],
    desc: str = "train",
    progress: bool = True,
    device: str = "auto",
    on_epoch_end: Callable[[int, nn.Module], None] | None = None,
) -> FitResult:
    """Train ``model`` and keep the checkpoint with the best validation accuracy.

    Resumes from ``<out_dir>/last.*`` when present (weights, momentum buffers, epoch, best so far)
    and returns at once when the run already finished.

    Args:
        model: the network, (N, C, H, W) -> logits (N, K).
        train, val: (uint8 images (n, C, H, W), int64 labels (n,)).
        objective: ``objective(logits, images, labels) -> {"loss": ..., ...}``.
        cfg: optimiser and schedule.
        out_dir: stage folder for checkpoints and ``metrics.csv``.
        norm: (mean, std) per channel in [0, 1] units.
        augment: per-image transform of uint8 (C, H, W) tensors, or None.
        seed: seeds batch order and augmentation (per epoch, so resumption is exact in order).
        card: checkpoint card fields (model name, kwargs, classes, input size, ...).
        desc: progress-bar label.
        device: ``auto`` (CUDA if available, else CPU), ``cpu`` or ``cuda[:i]``.
        on_epoch_end: called as ``on_epoch_end(epoch, model)`` after each epoch's checkpoint.

    Raises:
        CheckpointError: a ``last`` checkpoint exists but does not fit ``model``.
    """
    out_dir.mkdir(parents=True, exist_ok=True)
    mean, std = norm
    dev = resolve_device(device)
    amp = resolve_amp(cfg.amp, dev)  # once, not per step
    model.to(dev)
    objective.to(dev)
    params_decay = [p for p in model.parameters() if p.ndim > 1]
    params_other = [p for p in model.parameters() if p.ndim <= 1]
    opt = torch.optim.SGD(
        [{"params": params_decay, "weight_decay": cfg.weight_decay}, {"params": params_other, "weight_decay": 0.0}],
        lr=cfg.lr,
        momentum=cfg.momentum,
        nesterov=cfg.nesterov,
    )
    history = _read_history(out_dir / "metrics.csv")
    start, best, elapsed = 0, {"acc": -1.0, "loss": math.inf, "epoch": -1}, 0.0
    if (out_dir / "last.json").is_file():
        state = read_card(out_dir / "last")
        weights = load_tensors(out_dir / "last.safetensors")
        try:
            model.load_state_dict({k: v.to(dev) for k, v in weights.items()})
        except RuntimeError as e:
            raise CheckpointError(f"cannot resume from {out_dir}/last: {e}") from None
        if (out_dir / "last.optim.safetensors").is_file():
            _load_optimizer(out_dir / "last.optim.safetensors", opt, model)
        start, best, elapsed = state["epoch"] + 1, state["best"], state.get("train_seconds", 0.0)
        history = [h for h in history if h["epoch"] < start]
        if start < cfg.epochs:
            log.info("%s: resuming at epoch %d of %d", desc, start + 1, cfg.epochs)
    averager = WeightAverage(model, cfg)
    if start > 0:
        averager.load(out_dir / "last.avg.safetensors")
    mixup = _mixup(cfg, int(train[1].max()) + 1 if len(train[1]) else 2)
    loader_ds = ArrayDataset(*train, transform=augment)
    steps = max(len(loader_ds) // cfg.batch_size, 1)
    for epoch in range(start, cfg.epochs):
        t0 = time.perf_counter()
        g = torch.Generator().manual_seed(seed * 100_003 + epoch)
        torch.manual_seed(seed * 100_003 + epoch)  # augmentation draws
        loader = DataLoader(
            loader_ds, cfg.batch_size, shuffle=True, drop_last=len(loader_ds) >= cfg.batch_size, generator=g
        )
        model.train()
        objective.train()
        tot_loss, tot_correct, tot_n = 0.0, 0, 0
        bar = tqdm(loader, total=steps, desc=f"{desc} {epoch + 1}/{cfg.epochs}", disable=not progress, leave=False)
        for step, (xb, yb) in enumerate(bar):
            lr = lr_at(epoch + step / steps, cfg)
            for group in opt.param_groups:
                group["lr"] = lr
            x, yb = torch.from_numpy(normalize(xb, mean, std)).to(dev), yb.to(dev)
            target = yb
            if mixup is not None:
                x, target = mixup(x, yb)  # soft targets (N, K)
            with autocast(amp, dev):
                logits = model(x)
                out = objective(logits, x, target)
            opt.zero_grad(set_to_none=True)
            out["loss"].backward()
            opt.step()
            averager.after_step(model, epoch * steps + step)
            n = len(yb)
            tot_loss += out["loss"].item() * n
            tot_correct += (logits.argmax(1) == yb).sum().item()  # against the true labels
            tot_n += n
            bar.set_postfix(loss=f"{tot_loss / tot_n:.3f}", acc=f"{tot_correct / tot_n:.3f}", lr=f"{lr:.3g}")
        averager.after_epoch(model, epoch, lambda: clean_batches(train[0], mean, std, dev))
        eval_model = averager.eval_model(model, epoch)
        val_logits = predict_logits(eval_model, val[0], mean, std, amp=amp)
        val_y = torch.from_numpy(val[1])
        val_loss = F.cross_entropy(torch.from_numpy(val_logits), val_y).item() if len(val_y) else math.nan
        val_acc = float((val_logits.argmax(1) == val[1]).mean()) if len(val_y) else math.nan
        epoch_s = time.perf_counter() - t0
        elapsed += epoch_s
        row = dict(
            epoch=epoch,
            lr=lr,
            train_loss=tot_loss / max(tot_n, 1),
            train_acc=tot_correct / max(tot_n, 1),
            val_loss=val_loss,
            val_acc=val_acc,
            epoch_s=epoch_s,
        )
        history.append(row)
        improved = val_acc > best["acc"] or (val_acc == best["acc"] and val_loss < best["loss"])
        if improved:
            best = {"acc": val_acc, "loss": val_loss, "epoch": epoch}
            save_checkpoint(
                out_dir / "best", eval_model, {**card, "epoch": epoch, "val_acc": val_acc, "val_loss": val_loss}
            )
        _save_optimizer(out_dir / "last.optim.safetensors", opt, model)
        averager.save(out_dir / "last.avg.safetensors")
        save_checkpoint(out_dir / "last", model, {**card, "epoch": epoch, "best": best, "train_seconds": elapsed})
        _write_history(out_dir / "metrics.csv", history)
        if on_epoch_end is not None:
            on_epoch_end(epoch, model)
        log.info(
            "%s epoch %d/%d: loss %.4f acc %.4f | val loss %.4f acc %.4f | %.1f s",
            desc,
            epoch + 1,
            cfg.epochs,
            row["train_loss"],
            row["train_acc"],
            val_loss,
            val_acc,
            epoch_s,
        )
    return FitResult(out_dir, best["epoch"], best["acc"], best["loss"], elapsed, history, amp)
