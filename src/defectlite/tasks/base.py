"""The task contract: :class:`Task` (the training half, every hook the pipeline calls), :class:`Runtime` (the
inference half: ONNX outputs -> answers, NumPy only) and :class:`TaskData` (what a task's data object offers).

The pipeline (:mod:`defectlite.pipeline`) runs a recipe as: ``check_config`` (before any data is read) ->
``load_data`` -> per stage ``build_model`` + ``objective`` + ``stage_data`` -> the shared loop (or
``fit_statistics`` for a stage fitted without an optimizer) -> ``calibrate`` -> on the deployed model ``evaluate``
(test split, once), ``export_module`` + ``output_names`` + ``export_metadata`` (ONNX) -> ``figures`` and
``report_lines``. :meth:`Task.evaluate` runs the PyTorch model and hands its raw outputs to the task's runtime, so
a PyTorch model and its ONNX file are scored by one piece of code.

No PyTorch import at module level: the runtimes import :class:`Runtime` from here on a machine without PyTorch.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol, runtime_checkable

import numpy as np

from defectlite.errors import ConfigError

if TYPE_CHECKING:  # pragma: no cover - types only
    from PIL import Image
    from torch import nn

    from defectlite.runs import Run
    from defectlite.train.config import EnsembleCfg, RecipeCfg, StageCfg
    from defectlite.train.loop import StageData

Card = dict[str, Any]  # a checkpoint card / ONNX metadata: task, classes, input_size, in_chans, mean, std, model, ...


@runtime_checkable
class Runtime(Protocol):
    """How the raw outputs of an exported model become answers, and how answers are scored (NumPy only).

    The Predictor, ``predict``, ``val``, Ray and the HTTP service call these and never branch on the task.

    Attributes:
        name: the task name (its line in :data:`defectlite.tasks.TASKS`).
        options: keyword options :meth:`postprocess` accepts (``predict --option KEY=VALUE``, query parameters of
            ``/v1/predict``), e.g. ``("conf", "iou", "max_det")``.
        columns: the keys of :meth:`as_rows` (every row has them, maybe empty).
        eval_options: the options scoring uses (detection: ``conf`` 0.001, as mAP needs).
        score_key: the headline metric of :meth:`score` (e.g. ``accuracy``, ``map50``): the one model selection,
            the INT8 gate, ``prune`` and ``compare`` report.
        secondary_key: the metric tables show beside it (e.g. ``mcc``, ``map``: mAP@0.5:0.95).
        view: how the service's page draws an answer: ``labels`` (class probabilities) or ``boxes``.
    """

    name: str
    options: tuple[str, ...]
    columns: tuple[str, ...]
    eval_options: dict[str, Any]
    score_key: str
    secondary_key: str
    view: str

    def check(self, meta: Card, outputs: Sequence[Any]) -> None:
        """Refuse metadata that does not fit the model (``outputs``: ONNX Runtime's output descriptions).

        Raises:
            CheckpointError: naming the field.
        """

    def option(self, key: str, text: str) -> Any:
        """The value of option ``key`` given as text (``--option KEY=VALUE``, a query parameter).

        Raises:
            ConfigError: unknown option or a value of the wrong type.
        """

    def postprocess(
        self, outputs: Sequence[np.ndarray], meta: Card, sizes: Sequence[tuple[int, int]], **options: Any
    ) -> list[Any]:
        """Raw output arrays of a batch (one array per ONNX output, first axis N) -> one result per image; ``sizes``
        are the images' original (H, W)."""

    def as_dict(self, result: Any, meta: Card) -> dict[str, Any]:
        """JSON form of a result (API, ``--json``)."""

    def as_rows(self, result: Any, meta: Card) -> list[dict[str, str]]:
        """CSV rows / printed lines of a result (one per class or box)."""

    def draw(self, source: Any, result: Any, meta: Card) -> Image.Image:
        """The answer drawn on the image (``--save-images``)."""

    def read_labelled(self, root: Path, meta: Card, *, format: str = "auto", split: str | None = None,
                      skip_bad: bool = False) -> tuple[list[Path], Any, list]:  # fmt: skip
        """A labelled folder -> (image paths, ground truth as :meth:`score` takes it, bad files)."""

    def score(self, results: Sequence[Any], truths: Any, meta: Card) -> dict[str, Any]:
        """Metrics of ``results`` against ``truths``; ``score_key`` among them."""

    def headline(self, metrics: dict[str, Any]) -> str:
        """One line: the headline metrics and the image count."""

    def summary(self, metrics: dict[str, Any]) -> list[str]:
        """A few lines for the terminal (``val``)."""

    def report_lines(self, test: dict[str, Any], test_all: dict[str, dict[str, Any]]) -> list[str]:
        """The test section of ``report.md`` (every evaluated model, then details of the deployed one)."""

    def write_figures(self, metrics: dict[str, Any], meta: Card, out_dir: Path, stem: str) -> dict[str, Any]:
        """Figures of ``metrics`` written as ``out_dir/<stem>*``; returns their file names."""


def number_option(
    runtime: Runtime,
    key: str,
    text: Any,
    *,
    integer: bool = False,
    words: tuple[str, ...] = (),
    bounds: tuple[float, float] = (float("-inf"), float("inf")),
) -> Any:
    """A runtime option's value from text (``--option KEY=VALUE``, a query parameter): a finite number within
    ``bounds`` (inclusive; a whole number when ``integer``), or one of ``words`` as it is. Values that are already
    numbers are checked the same way.

    Raises:
        ConfigError: ``key`` is not one of ``runtime.options``, or the value is not a finite number within its bounds
            (nor one of ``words``); the message names the key, the value and what is allowed.
    """
    if key not in runtime.options:
        allowed = ", ".join(runtime.options) or "none"
        raise ConfigError(f"option {key!r} does not apply to a {runtime.name} model (allowed: {allowed})")
    if text is None or (isinstance(text, str) and text in words):
        return text
    lo, hi = bounds
    kind = "a whole number" if integer else "a number"
    allowed = f"{kind} from {lo:g} to {hi:g}" + "".join(f" or {w!r}" for w in words)
    try:
        value = float(text)
    except (TypeError, ValueError):
        value = float("nan")
    if isinstance(text, bool) or not (lo <= value <= hi) or (integer and not value.is_integer()):
        raise ConfigError(f"{key} must be {allowed}, got {text!r}")
    return int(value) if integer else value


@runtime_checkable
class TaskData(Protocol):
    """What a task's :meth:`Task.load_data` returns and the pipeline reads: the decoded, split data of a run.

    Attributes:
        root: the data folder; format: the layout read (``neu``, ``folder``, ``voc``, ...); classes: class names.
        leaks: val/test images byte-identical to earlier-split ones; dropped_leaks: whether they were left out.
        skipped: (path, reason) of unreadable images left out (``--skip-bad``); warnings: sentences for the report.
    """

    root: Path
    format: str
    classes: list[str]
    leaks: list
    dropped_leaks: bool
    skipped: list
    warnings: list[str]

    def counts(self) -> dict[str, int]:
        """Images per split (``train``, ``val``, ``test``)."""

    def norm_stats(self) -> tuple[list[float], list[float]]:
        """(mean, std) per channel of the training images, in [0, 1] units."""


class Task(ABC):
    """The training half of a task (see the module docstring). Subclasses set ``name`` and ``formats`` and
    implement the abstract hooks; the others have defaults every task may keep.

    Attributes:
        name: the task's name in :data:`defectlite.tasks.TASKS`.
        formats: the ``data.format`` values its :meth:`load_data` reads (``auto`` detects).
    """

    name: str = ""
    formats: tuple[str, ...] = ("auto",)

    @property
    def runtime(self) -> Runtime:
        """The task's inference half (from the task table)."""
        from defectlite.tasks import get_runtime

        return get_runtime(self.name)

    @property
    def score_key(self) -> str:
        """The headline metric (e.g. ``accuracy``, ``map50``): INT8 gate, ``prune`` and ``compare`` report it."""
        return self.runtime.score_key

    # -- before anything runs -------------------------------------------------------------------------
    def check_config(self, cfg: RecipeCfg) -> None:
        """Refuse a recipe this task cannot run, before any data is read.

        Raises:
            ConfigError: unknown data format, or a stage model registered for another task.
        """
        from defectlite.models import model_info

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
    def stages_of(cfg: RecipeCfg) -> list[tuple[str, StageCfg | None]]:
        """(config path, stage) of every stage a recipe may train."""
        return [("teacher", cfg.teacher), ("student", cfg.student), ("ensemble.member", cfg.ensemble.member)]

    # -- data and models ------------------------------------------------------------------------------
    @abstractmethod
    def load_data(self, cfg: RecipeCfg, run: Run, progress: bool = True) -> TaskData:
        """Read, split (or re-read ``splits.csv``) and decode the run's data.

        Raises:
            DataError: unreadable or unusable data (the message names the file or value).
        """

    @staticmethod
    def split_options(cfg: RecipeCfg, run: Run, progress: bool) -> dict[str, Any]:
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

    def card(self, cfg: RecipeCfg, data: TaskData) -> Card:
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

    def build_model(self, stage: StageCfg, card: Card, data: TaskData) -> tuple[nn.Module, Card]:
        """A fresh model for ``stage`` and its card (the run's card plus the model name and kwargs)."""
        from defectlite.models import create_model

        model = create_model(stage.model, card["num_classes"], card["in_chans"], **stage.model_kwargs)
        return model, {**card, "model": stage.model, "model_kwargs": dict(stage.model_kwargs)}

    @abstractmethod
    def objective(
        self, stage: StageCfg, cfg: RecipeCfg, teacher: nn.Module | None, card: Card, **options: Any
    ) -> nn.Module:
        """The stage's objective for the model ``card`` describes: ``objective(outputs, inputs, target) ->
        {"loss": ..., ...}``; distilled from ``teacher`` when given. ``options``: what the teacher source implies
        (:attr:`defectlite.pipeline.training.Teacher.options`, e.g. ``hard_alpha`` of ensemble pseudo-labels)."""

    @abstractmethod
    def stage_data(self, stage: StageCfg, cfg: RecipeCfg, data: TaskData, card: Card) -> StageData:
        """The :class:`~defectlite.train.loop.StageData` the loop trains ``stage`` on."""

    def fit_statistics(self, model: nn.Module, data: StageData, stage: StageCfg) -> dict[str, float] | None:
        """Fit a stage without an optimizer (a memory bank, a Gaussian per patch, ...) instead of the training loop.

        Returns:
            The stage's validation metrics (``val_loss`` and ``data.score_name`` at least) after fitting ``model``
            in place, or None (the default): train it with the loop.
        """
        return None

    def calibrate(self, model: nn.Module, data: TaskData, card: Card, cfg: RecipeCfg, out_dir: Path) -> dict | None:
        """Calibrate the deployed model's scores on validation, in place (default: nothing to calibrate).

        Returns:
            What the card and report record of it, or None.
        """
        return None

    # -- ensembles --------------------------------------------------------------------------------------
    def ensemble_teacher(self, member_stems: list[Path], method: str, k: float, classes: list[str]) -> nn.Module:
        """The frozen ensemble of the given member checkpoints, as a teacher.

        Raises:
            ConfigError: the task has no ensembles (the default).
        """
        raise ConfigError(f"ensemble.members: a {self.name} run has no ensembles")

    def ensemble_options(self, ensemble: EnsembleCfg) -> dict[str, Any]:
        """The student objective's options when it learns from an ensemble (passed to :meth:`objective`); default
        none."""
        return {}

    def evaluate_ensemble(self, ensemble: nn.Module, data: TaskData, card: Card) -> dict[str, dict[str, Any]]:
        """Test metrics of ensemble combinations, by report row name (default: none)."""
        return {}

    # -- evaluation and export ------------------------------------------------------------------------
    def export_module(self, model: nn.Module) -> nn.Module:
        """The module whose outputs the ONNX file holds (default: the model itself)."""
        return model

    def output_names(self, card: Card) -> list[str]:
        """The names of the ONNX outputs, in order (default: ``logits``)."""
        return ["logits"]

    def export_metadata(self, card: Card) -> dict[str, Any]:
        """Task fields of the ONNX metadata, beside the common ones (task, classes, input, normalisation)."""
        return {}

    def int8_tolerance(self, cfg: RecipeCfg) -> float:
        """The largest drop of the validation :attr:`score_key` for which INT8 is deployed (the recipe's)."""
        return cfg.int8.max_drop

    def outputs(self, model: nn.Module, images: np.ndarray, card: Card, batch_size: int = 64) -> list[np.ndarray]:
        """The raw outputs of ``export_module(model)`` on uint8 images (N, C, H, W), as NumPy arrays, exactly
        what the ONNX file returns (list of arrays, concatenated over batches)."""
        import torch

        from defectlite.data.transforms import normalize

        net = self.export_module(model).eval()
        device = next(model.parameters()).device
        chunks: list[list[np.ndarray]] = []
        with torch.no_grad():
            for i in range(0, len(images), batch_size):
                x = torch.from_numpy(normalize(images[i : i + batch_size], card["mean"], card["std"])).to(device)
                out = net(x)
                chunks.append([o.float().cpu().numpy() for o in (out if isinstance(out, (list, tuple)) else [out])])
        return [np.concatenate(parts) for parts in zip(*chunks)] if chunks else []

    def evaluate(self, model: nn.Module, data: TaskData, split: str, card: Card) -> dict[str, Any]:
        """Metrics of a PyTorch model on one split, scored by the task's runtime (as ``val`` scores ONNX)."""
        images, truths, sizes = self.split_truth(data, split)
        meta = {**card, "channels": card["in_chans"], **self.export_metadata(card)}
        results = self.runtime.postprocess(self.outputs(model, images, card), meta, sizes, **self.runtime.eval_options)
        return self.runtime.score(results, truths, meta)

    @abstractmethod
    def split_truth(self, data: TaskData, split: str) -> tuple[np.ndarray, Any, list[tuple[int, int]]]:
        """(uint8 images (n, C, H, W), ground truth as the runtime scores it, original (H, W) per image)."""

    def headline(self, metrics: dict[str, Any]) -> str:
        """One line for the CLI after a run (e.g. test accuracy and MCC)."""
        return self.runtime.headline(metrics)

    # -- report -----------------------------------------------------------------------------------------
    def figures(self, run: Run, report: dict[str, Any], data: TaskData) -> dict[str, Any]:
        """Extra report figures written into the run folder (their file names, by key); default: none. The
        deployed model (``run.deployed``, ``run.onnx``) is written by then."""
        return {}

    def report_lines(self, report: dict[str, Any]) -> list[str]:
        """The task's sections of ``report.md`` (test metrics, per-class tables, its figures)."""
        return self.runtime.report_lines(report["test"], report.get("test_all", {}))

    def paper_values(self, report: dict[str, Any]) -> dict[str, str]:
        """This run's values for the keys a recipe's ``paper`` table may hold (default: none)."""
        return {}
