"""The task interface: what the pipeline asks of a task, with the defaults every task shares.

The pipeline (:mod:`defectlite.pipeline`) runs a recipe as: ``check_config`` (before any data is read) ->
``load_data`` -> per stage ``build_model`` + ``objective`` + ``stage_data`` -> the shared loop -> on the
deployed model ``evaluate`` (test split, once), ``export_module`` + ``export_metadata`` (ONNX), ``parity``
-> ``figures`` and ``report_lines``. The task's ``runtime`` (:mod:`defectlite.deploy.runtime`) scores and
decodes; :meth:`Task.evaluate` runs the PyTorch model and hands its raw outputs to the same runtime, so a
PyTorch model and its ONNX file are scored by one piece of code.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from defectlite.data.transforms import normalize
from defectlite.errors import ConfigError
from defectlite.models import model_info


class Task:
    """Base class of the built-in tasks; subclasses set ``name``, ``runtime``, ``formats`` and override
    the hooks that differ (see the module docstring)."""

    name: str = ""
    runtime: Any = None
    formats: tuple[str, ...] = ("auto",)

    # -- before anything runs -------------------------------------------------------------------------
    def check_config(self, cfg: Any) -> None:
        """Refuse a recipe this task cannot run, before any data is read.

        Raises:
            ConfigError: unknown data format, or a stage model registered for another task.
        """
        if cfg.data.format not in self.formats:
            raise ConfigError(
                f"data.format: {cfg.data.format!r} is not one of {', '.join(self.formats)} (task {self.name})"
            )
        for where, stage in self.stages_of(cfg):
            if stage is not None and not stage.model.startswith("timm:"):
                info = model_info(stage.model)  # UnknownModelError lists close names
                if info.task != self.name:
                    raise ConfigError(
                        f"{where}.model: {stage.model!r} is a {info.task} model, this is a {self.name} run"
                    )

    @staticmethod
    def stages_of(cfg: Any) -> list[tuple[str, Any]]:
        """(config path, stage) of every stage a recipe may train."""
        return [("teacher", cfg.teacher), ("student", cfg.student), ("ensemble.member", cfg.ensemble.member)]

    # -- data and models ------------------------------------------------------------------------------
    def load_data(self, cfg: Any, run: Any, progress: bool = True) -> Any:
        """Read, split (or re-read ``splits.csv``) and decode the run's data."""
        raise NotImplementedError

    @staticmethod
    def split_options(cfg: Any, run: Any, progress: bool) -> dict[str, Any]:
        """The keyword arguments every task's data preparation takes from a recipe (input size, channels, split
        ratios and seed, the run's ``splits.csv``, leaks, bad files, training share)."""
        d = cfg.data
        return {
            "size": d.input_size,
            "channels": d.channels,
            "ratios": d.split,
            "seed": cfg.seed,
            "splits_csv": run.splits_csv,
            "drop_leaks": not d.keep_leaks,
            "skip_bad": d.skip_bad,
            "train_fraction": d.train_fraction,
            "progress": progress,
        }

    def card(self, cfg: Any, data: Any) -> dict[str, Any]:
        """Fields every checkpoint card of the run shares (task, classes, input size, channels, normalisation)."""
        mean, std = data.norm_stats()
        return {
            "task": self.name,
            "classes": list(data.classes),
            "num_classes": len(data.classes),
            "in_chans": cfg.data.channels,
            "input_size": list(cfg.data.input_size),
            "mean": mean,
            "std": std,
            "recipe": cfg.name,
            "seed": cfg.seed,
        }

    def build_model(self, stage: Any, card: dict[str, Any], data: Any) -> tuple[nn.Module, dict[str, Any]]:
        """A fresh model for ``stage`` and its card (the run's card plus the model name and kwargs)."""
        from defectlite.models import create_model

        model = create_model(stage.model, card["num_classes"], card["in_chans"], **stage.model_kwargs)
        return model, {**card, "model": stage.model, "model_kwargs": dict(stage.model_kwargs)}

    def objective(
        self, stage: Any, cfg: Any, teacher: nn.Module | None, card: dict[str, Any], **options: Any
    ) -> nn.Module:
        """The stage's objective for the model ``card`` describes: ``objective(outputs, inputs, target) ->
        {"loss": ..., ...}``; distilled from ``teacher`` when given."""
        raise NotImplementedError

    def stage_data(self, stage: Any, cfg: Any, data: Any, card: dict[str, Any]) -> Any:
        """The :class:`~defectlite.train.loop.StageData` the loop trains ``stage`` on."""
        raise NotImplementedError

    def calibrate(self, model: nn.Module, data: Any, card: dict[str, Any], cfg: Any, out_dir: Path) -> dict | None:
        """Calibrate the deployed model's scores on validation, in place (default: nothing to calibrate).

        Returns:
            What the card and report record of it, or None.
        """
        return None

    # -- evaluation and export ------------------------------------------------------------------------
    def export_module(self, model: nn.Module) -> nn.Module:
        """The module whose outputs the ONNX file holds (default: the model itself)."""
        return model

    def export_metadata(self, card: dict[str, Any]) -> dict[str, Any]:
        """Task fields of the ONNX metadata, beside the common ones (task, classes, input, normalisation)."""
        return {}

    @torch.no_grad()
    def outputs(self, model: nn.Module, images: np.ndarray, card: dict[str, Any], batch_size: int = 64) -> list:
        """The raw outputs of ``export_module(model)`` on uint8 images (N, C, H, W), as NumPy arrays, exactly
        what the ONNX file returns (list of arrays, concatenated over batches)."""
        net = self.export_module(model).eval()
        device = next(model.parameters()).device
        chunks: list[list[np.ndarray]] = []
        for i in range(0, len(images), batch_size):
            x = torch.from_numpy(normalize(images[i : i + batch_size], card["mean"], card["std"])).to(device)
            out = net(x)
            chunks.append([o.float().cpu().numpy() for o in (out if isinstance(out, (list, tuple)) else [out])])
        return [np.concatenate(parts) for parts in zip(*chunks)] if chunks else []

    def evaluate(self, model: nn.Module, data: Any, split: str, card: dict[str, Any]) -> dict[str, Any]:
        """Metrics of a PyTorch model on one split, scored by the task's runtime (as ``val`` scores ONNX)."""
        images, truths, sizes = self.split_truth(data, split)
        meta = {**card, "channels": card["in_chans"], **self.export_metadata(card)}
        results = self.runtime.postprocess(self.outputs(model, images, card), meta, sizes, **self.runtime.eval_options)
        return self.runtime.score(results, truths, meta)

    def split_truth(self, data: Any, split: str) -> tuple[np.ndarray, Any, list[tuple[int, int]]]:
        """(uint8 images (n, C, H, W), ground truth as the runtime scores it, original (H, W) per image)."""
        raise NotImplementedError

    def parity(self, model: nn.Module, onnx_path: Path, images: np.ndarray, card: dict[str, Any]) -> float:
        """Max |difference| between ONNX Runtime and PyTorch raw outputs on uint8 images (N, C, H, W)."""
        from defectlite.deploy.onnx_export import check_parity

        return check_parity(model, onnx_path, images, card, wrap=self.export_module)

    def headline(self, metrics: dict[str, Any]) -> str:
        """One line for the CLI after a run (e.g. test accuracy and MCC)."""
        return self.runtime.headline(metrics)

    def figures(self, run_dir: Path, report: dict[str, Any], data: Any) -> dict[str, Any]:
        """Extra report figures written into ``run_dir`` (file names); default: none."""
        return {}

    def report_lines(self, report: dict[str, Any]) -> list[str]:
        """The task's sections of ``report.md`` (test metrics, per-class tables, figures)."""
        return self.runtime.report_lines(report["test"], report.get("test_all", {}))
