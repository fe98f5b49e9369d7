"""The run folder: how a run is laid out on disk — written and read only through this module.

A run folder is the contract between ``defectlite train`` and every later command (``export``, ``prune``,
``quantize``, ``explain``, ``serve``, ``val``, ``compare``, the benchmarks)::

    RUN/
      run.json             manifest: task, recipe, seed, the deployed stage, where a teacher came from,
                           the command line it was started with, package versions
      config.yaml          the resolved recipe: every value the run was started with (``--set`` included)
      splits.csv           the split, reused by every later command on the run
      <stage>/             teacher/, member<i>/ (ensembles), student/ — one folder per trained model:
        best.safetensors, best.json   the selected epoch (validation only), a loadable checkpoint + card
        last.safetensors              the stage's whole training state (resume point), see train.state
        metrics.csv                   one row per finished epoch
        gammas.npz                    |BN gamma| per epoch, when the stage trains with sparsity
      model.safetensors, model.json   the deployed model (re-parameterised) and its card
      model.onnx                      the same for ONNX Runtime, its card in the metadata (task included)
      model.int8.onnx                 its INT8 form, when it kept the validation score (``predict`` then runs it)
      report.md, report.json          the run's report, with its figures beside it (curves.png, ...)
      prune-*/, val-*/                what later commands wrote

A run is resumed by ``defectlite train --resume RUN`` from ``run.json`` + ``config.yaml`` alone: nothing
given on the command line may change it. Folders written before ``run.json`` existed are read as
classification runs whose deployed stage is ``student`` (``member0`` when there is no student).
"""

from __future__ import annotations

import json
import platform
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from defectlite.errors import CheckpointError, ConfigError
from defectlite.tasks import task_name
from defectlite.utils import atomic_write_json, atomic_write_text

MANIFEST, CONFIG, SPLITS = "run.json", "config.yaml", "splits.csv"
MANIFEST_VERSION = 1
DEPLOYED, ONNX_NAME, INT8_SUFFIX = "model", "model.onnx", ".int8.onnx"
STATISTICS = "statistics"  # the best card's ``fitted`` of a stage fitted without an optimizer (no resume state)


def is_run(path: str | Path) -> bool:
    """Whether ``path`` is a run folder (it holds ``config.yaml``)."""
    return Path(path).is_dir() and (Path(path) / CONFIG).is_file()


def deployed_onnx(folder: str | Path) -> Path:
    """``<folder>/model.onnx``: the deployed ONNX file of a run folder (or of a folder holding a copied run's model)."""
    return Path(folder) / ONNX_NAME


def int8_path(onnx_path: str | Path) -> Path:
    """The INT8 form ``X.int8.onnx`` that a run deploys beside ``X.onnx``."""
    p = Path(onnx_path)
    return p.with_name(p.name.removesuffix(".onnx") + INT8_SUFFIX)


def is_int8(onnx_path: str | Path) -> bool:
    """Whether ``onnx_path`` names an INT8 form (``*.int8.onnx``)."""
    return Path(onnx_path).name.endswith(INT8_SUFFIX)


def resolve_checkpoint(path: str | Path) -> Path:
    """The checkpoint stem of the deployed model for a run folder, an ONNX file, or a checkpoint path.

    ``RUN`` -> ``RUN/model``; ``X.onnx`` -> ``X`` (``X.json`` + ``X.safetensors`` beside it);
    ``X.json`` / ``X.safetensors`` / ``X`` -> ``X``.

    Raises:
        CheckpointError: the card or the weights are missing (the message names the path).
    """
    p = Path(path)
    stem = p / DEPLOYED if p.is_dir() else (p.with_suffix("") if p.suffix in (".onnx", ".json", ".safetensors") else p)
    missing = [s for s in (".json", ".safetensors") if not stem.with_suffix(s).is_file()]
    if missing:
        names = " and ".join(str(stem.with_suffix(s)) for s in missing)
        raise CheckpointError(f"no PyTorch checkpoint for {p}: {names} not found (Grad-CAM needs the model weights)")
    return stem


_STAGE_FILES = {  # attribute -> file in the stage folder
    "best": "best",  # stem of the selected epoch's checkpoint (best.safetensors + best.json)
    "best_card": "best.json",  # its card
    "last": "last.safetensors",  # the whole training state of the last finished epoch (the resume point)
    "metrics": "metrics.csv",  # one row per finished epoch
    "gammas": "gammas.npz",  # |BN gamma| per epoch (--set <stage>.sparsity=...)
    "ddp": "ddp.json",  # the replicas' parameter digests after a data-parallel stage
}


@dataclass(frozen=True)
class StageFiles:
    """The files of one trained model's folder (``RUN/<stage>/``), as :func:`defectlite.train.loop.fit` writes them.

    Attributes:
        root: the folder; ``best``, ``best_card``, ``last``, ``metrics``, ``gammas``, ``ddp``: its files (paths, see
            ``_STAGE_FILES``).
    """

    root: Path

    def __getattr__(self, attr: str) -> Path:
        if attr not in _STAGE_FILES:
            raise AttributeError(f"{type(self).__name__} has no file {attr!r}")
        return Path(self.root) / _STAGE_FILES[attr]

    def epoch(self, index: int) -> Path:
        """Stem of epoch ``index``'s checkpoint (``save_period``)."""
        return Path(self.root) / "epochs" / f"epoch{index:03d}"


@dataclass
class TeacherSource:
    """Where a run's distillation teacher comes from.

    Attributes:
        kind: ``trained`` (the run's own teacher stage), ``checkpoint`` (``--teacher RUN|STEM``), ``ensemble``
            (``--teacher-ensemble RUN``: the members of another run), ``members`` (the ensemble the run trains) or
            ``none``. ``run.json`` records the first three; :func:`defectlite.pipeline.training.teacher_source`
            resolves every run to one of the five.
        path: the checkpoint stem or run folder (absolute), None for the others.
    """

    kind: str
    path: str | None = None


@dataclass
class Run:
    """An opened run folder. Build with :func:`create_run` or :func:`open_run`.

    Attributes:
        root: the folder.
        manifest: ``run.json`` as a dict.
    """

    root: Path
    manifest: dict[str, Any] = field(default_factory=dict)

    @property
    def task(self) -> str:
        """The run's task name (``classify``, ``detect``, ...)."""
        return task_name(self.manifest)

    @property
    def deployed_stage(self) -> str:
        """The stage whose best checkpoint is deployed (re-parameterised into ``model.*``)."""
        return self.manifest["deployed_stage"]

    @property
    def teacher(self) -> TeacherSource | None:
        """Where the teacher comes from, or None when the run distils from nothing."""
        t = self.manifest.get("teacher")
        return TeacherSource(**t) if t else None

    @property
    def config_path(self) -> Path:
        return self.root / CONFIG

    @property
    def splits_csv(self) -> Path:
        return self.root / SPLITS

    def config(self):
        """The resolved recipe (:class:`~defectlite.train.config.RecipeCfg`) the run was started with.

        Raises:
            CheckpointError: ``config.yaml`` is missing; ConfigError: it no longer validates.
        """
        from defectlite.train.config import load_recipe

        if not self.config_path.is_file():
            raise CheckpointError(f"{self.root} is not a defectlite run folder (no {CONFIG})")
        return load_recipe(self.config_path)

    def stage_dir(self, stage: str) -> Path:
        """``RUN/<stage>/`` (teacher, member<i>, student)."""
        return self.root / stage

    def stage(self, stage: str) -> StageFiles:
        """The files of ``RUN/<stage>/``."""
        return StageFiles(self.stage_dir(stage))

    def best(self, stage: str | None = None) -> Path:
        """The checkpoint stem of a stage's selected epoch (default: the deployed stage).

        Raises:
            CheckpointError: the stage has not finished an epoch yet.
        """
        stage = stage or self.deployed_stage
        stem = self.stage(stage).best
        if not self.stage(stage).best_card.is_file():
            raise CheckpointError(f"{self.root}: stage {stage!r} has no best checkpoint yet ({stem}.json)")
        return stem

    def has_best(self, stage: str) -> bool:
        """Whether ``stage`` has a selected checkpoint."""
        return self.stage(stage).best_card.is_file()

    def members(self) -> list[str]:
        """Names of the ensemble member stages with a best checkpoint, in index order."""
        found = [p.name for p in self.root.glob("member*") if self.has_best(p.name)]
        found = [n for n in found if n.removeprefix("member").isdigit()]  # not member_old/, a user's copy
        return sorted(found, key=lambda n: int(n.removeprefix("member")))

    @property
    def deployed(self) -> Path:
        """Stem of the deployed checkpoint (``RUN/model``: ``model.safetensors`` + ``model.json``)."""
        return self.root / DEPLOYED

    @property
    def deployed_weights(self) -> Path:
        """``RUN/model.safetensors``: the deployed checkpoint's weights."""
        return self.deployed.with_suffix(".safetensors")

    @property
    def onnx(self) -> Path:
        """``RUN/model.onnx``."""
        return deployed_onnx(self.root)

    @property
    def int8(self) -> Path:
        """``RUN/model.int8.onnx``: the INT8 form, present only when it kept the validation score."""
        return int8_path(self.onnx)

    @property
    def report_json(self) -> Path:
        """``RUN/report.json``: everything the run measured."""
        return self.root / "report.json"

    @property
    def report_md(self) -> Path:
        """``RUN/report.md``: the report for people."""
        return self.root / "report.md"

    @property
    def curves_png(self) -> Path:
        """``RUN/curves.png``: the training curves of every stage."""
        return self.root / "curves.png"

    def record(self, **fields: Any) -> None:
        """Update the manifest with ``fields`` (e.g. the deployed stage's files) and write it atomically."""
        self.manifest.update(fields)
        atomic_write_json(self.root / MANIFEST, self.manifest)


def deployed_stage_of(cfg) -> str:
    """The stage a recipe deploys: the student, or member 0 of an ensemble that is not distilled."""
    return "member0" if cfg.ensemble.members > 0 and not cfg.ensemble.distill else "student"


def _versions() -> dict[str, str]:
    from importlib.metadata import PackageNotFoundError, version

    out = {"python": platform.python_version()}
    for pkg in ("defectlite", "torch", "onnxruntime"):
        try:
            out[pkg] = version(pkg)
        except PackageNotFoundError:
            pass
    return out


def create_run(
    root: Path,
    cfg,
    *,
    teacher: TeacherSource | None = None,
    argv: list[str] | None = None,
) -> Run:
    """Start a run in ``root`` (or re-open the same run): write ``config.yaml`` and ``run.json``.

    A folder where nothing was trained yet is simply started again; when its config differs, the split it made
    (``splits.csv``) is removed first, so that the new start splits its own data with its own ratios and seed.

    Args:
        cfg: the resolved :class:`~defectlite.train.config.RecipeCfg`.
        teacher: where the teacher comes from (None: the recipe's own teacher stage, or none).
        argv: the command line, recorded for the report.

    Raises:
        ConfigError: ``root`` already holds a run of another config or teacher that trained something (resume it
            with ``--resume``), or is not a folder, or holds files but no run (nothing of it is touched).
    """
    from defectlite.train.config import dump_recipe

    root = Path(root)
    _refuse_foreign(root)
    text = dump_recipe(cfg)
    if teacher is None and cfg.teacher is not None:
        teacher = TeacherSource("trained")
    manifest = {
        "manifest_version": MANIFEST_VERSION,
        "task": cfg.task,
        "recipe": cfg.name,
        "seed": cfg.seed,
        "deployed_stage": deployed_stage_of(cfg),
        "teacher": vars(teacher) if teacher else None,
    }
    if (root / CONFIG).is_file() and trained_anything(root):
        old = open_run(root)
        same = old.config_path.read_text() == text and old.teacher == teacher
        if not same:
            raise ConfigError(
                f"{root} already holds a run with a different config or teacher; resume it with `defectlite train "
                f"--resume {root}` or choose another --out"
            )
        return old
    if (root / CONFIG).is_file() and (root / CONFIG).read_text() != text:
        (root / SPLITS).unlink(missing_ok=True)  # made for the config of a start that failed before training
    root.mkdir(parents=True, exist_ok=True)
    atomic_write_text(root / CONFIG, text)
    run = Run(root, {**manifest, "argv": list(argv if argv is not None else sys.argv), "versions": _versions()})
    run.record()
    return run


def _refuse_foreign(root: Path) -> None:
    """Refuse to start a run in ``root`` unless it is new, empty or a run folder: a run writes report.md,
    model.onnx, ... and would overwrite a user's files of the same names.

    Raises:
        ConfigError: ``root`` is not a folder, or holds files and no ``config.yaml`` (a few of them are named).
    """
    if is_run(root):
        return
    if not root.is_dir():
        if root.exists() or root.is_symlink():
            raise ConfigError(f"{root} exists and is not a folder; choose another --out")
        return
    names = sorted(p.name for p in root.iterdir() if not (p.name.startswith(".") and p.name.endswith(".tmp")))
    if names:  # the hidden *.tmp files are the atomic writer's, of a start under way (--members jobs in parallel)
        shown = ", ".join(names[:3]) + (f" and {len(names) - 3} more" if len(names) > 3 else "")
        raise ConfigError(
            f"{root} already holds files and is not a defectlite run folder (no {CONFIG}): {shown}; choose a new "
            "or empty folder for --out"
        )


def trained_anything(root: Path) -> bool:
    """Whether a run folder holds any training result (a stage that finished an epoch, or a deployed model).

    A folder whose run stopped before that (bad data, a typo in the command) may be started again with other
    options into the same ``--out``: there is nothing to lose."""
    return (
        any(StageFiles(p).last.is_file() for p in root.glob("*/")) or (root / DEPLOYED).with_suffix(".json").is_file()
    )


def open_run(root: str | Path) -> Run:
    """Open an existing run folder.

    Raises:
        CheckpointError: ``root`` is not a run folder, or its ``run.json`` is unreadable.
    """
    root = Path(root)
    if not (root / CONFIG).is_file():
        hint = " (an ONNX file or checkpoint? this command needs the run folder)" if root.is_file() else ""
        raise CheckpointError(f"{root} is not a defectlite run folder (no {CONFIG}){hint}")
    path = root / MANIFEST
    if not path.is_file():  # a run from before run.json: the default task, deployed student (or member0)
        stage = "student" if (root / "student").is_dir() or not (root / "member0").is_dir() else "member0"
        return Run(root, {"deployed_stage": stage, "teacher": None})
    try:
        manifest = json.loads(path.read_text())
    except (OSError, json.JSONDecodeError) as e:
        raise CheckpointError(f"{path}: unreadable run manifest ({e})") from None
    if not isinstance(manifest, dict) or "deployed_stage" not in manifest:
        raise CheckpointError(f"{path}: not a defectlite run manifest")
    return Run(root, manifest)


__all__ = [
    "Run",
    "StageFiles",
    "TeacherSource",
    "create_run",
    "deployed_onnx",
    "deployed_stage_of",
    "int8_path",
    "is_int8",
    "is_run",
    "open_run",
    "resolve_checkpoint",
]
