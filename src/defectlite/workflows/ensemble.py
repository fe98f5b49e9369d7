"""Ensemble stages of a run: train N members, combine them (mean / focal), evaluate (WeldNet paper §2.4-2.5).

Member i is trained in ``<run>/member<i>/`` with seed ``1000 * seed + i`` (its own initialisation,
batch order and augmentation draws), each resumable like any stage. The distillation teacher is the
frozen :class:`~defectlite.train.ensemble.Ensemble` of their best checkpoints.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch

from defectlite.checkpoint import load_checkpoint
from defectlite.compress.reparam import reparameterize
from defectlite.data import SplitData
from defectlite.errors import CheckpointError
from defectlite.evaluate.metrics import classification_metrics
from defectlite.train.config import RecipeCfg
from defectlite.train.ensemble import Ensemble, combine_probs
from defectlite.train.loop import predict_logits


def member_dirs(run_dir: Path) -> list[Path]:
    """``member<i>/`` folders holding a best checkpoint, in index order."""
    found = [p for p in Path(run_dir).glob("member*") if (p / "best.json").is_file()]
    return sorted(found, key=lambda p: int(p.name.removeprefix("member")))


def train_members(cfg: RecipeCfg, data: SplitData, run_dir: Path, progress: bool = True) -> dict[str, Any]:
    """Train (or resume) the ``cfg.ensemble.members`` members; returns their stage summaries."""
    from defectlite.pipeline import stage_summary, train_stage

    stage = cfg.ensemble.member or cfg.student
    out = {}
    for i in range(cfg.ensemble.members):
        res = train_stage(stage, f"member{i}", cfg, data, run_dir, progress=progress, seed=1000 * cfg.seed + i)
        out[f"member{i}"] = stage_summary(stage, res)
    return out


def ensemble_teacher(run_dir: Path, method: str, k: float, classes: list[str]) -> Ensemble:
    """The frozen ensemble of a run's members (re-parameterised), combined by ``method``.

    Raises:
        CheckpointError: no members, or members trained on other classes.
    """
    dirs = member_dirs(run_dir)
    if not dirs:
        raise CheckpointError(f"no ensemble members (member<i>/best.json) in {run_dir}")
    members = []
    for d in dirs:
        model, card = load_checkpoint(d / "best")
        if card["classes"] != list(classes):
            raise CheckpointError(f"{d} was trained on classes {card['classes']}, not {list(classes)}")
        members.append(reparameterize(model))
    return Ensemble(members, method, k)


@torch.no_grad()
def evaluate_members(run_dir: Path, cfg: RecipeCfg, data: SplitData) -> dict[str, dict]:
    """Test metrics of every member, the mean ensemble and the focal ensemble (k from the recipe)."""
    x, y = data.subset("test")
    out, probs = {}, []
    for d in member_dirs(run_dir):
        model, card = load_checkpoint(d / "best")
        logits = predict_logits(reparameterize(model), x, card["mean"], card["std"])
        probs.append(torch.softmax(torch.from_numpy(logits), 1))
        out[d.name] = classification_metrics(y, logits.argmax(1), data.classes)
    stacked = torch.stack(probs)
    for method in ("mean", "focal"):
        pred = combine_probs(stacked, method, cfg.ensemble.k).argmax(1).numpy()
        out[f"{method}_ensemble"] = classification_metrics(y, pred, data.classes)
    return out
