"""Recipe configuration: dataclasses with commented defaults, filled from YAML, strict ``--set`` overrides.

A recipe is a YAML file (each task ships its own in ``defectlite/tasks/<task>/recipes``); every key must be a
field below, and ``--set student.optim.epochs=30`` checks that the key exists and the value's
type matches. The resolved config is written to ``<run>/config.yaml``.
"""

from __future__ import annotations

import copy
import difflib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Annotated, Any, Literal

import yaml

from defectlite.errors import ConfigError
from defectlite.tasks import DEFAULT_TASK, recipe_dirs
from defectlite.train.fields import AtLeastOne, Fraction, NonNegative, Positive, Range, from_dict, parse_value, to_dict


@dataclass
class DataCfg:
    """Where the images come from and how they are split and decoded."""

    path: str = "neu-surface-defect"  # data folder: absolute, relative to the cwd, or under the data root
    format: str = "auto"  # layout; the task's readers decide the allowed names (classify: auto | folder | neu | tig)
    input_size: list[Annotated[int, AtLeastOne]] = field(default_factory=lambda: [200, 200])  # (H, W) in pixels
    channels: Literal[1, 3] = 1  # 1 = grey (NEU, casting), 3 = RGB
    split: list[Annotated[float, Fraction]] = field(default_factory=lambda: [0.8, 0.1, 0.1])  # train/val/test
    keep_leaks: bool = False  # keep val/test images byte-identical to an earlier split's in the scores (default: drop)
    train_fraction: Annotated[float, Range(gt=0, le=1)] = 1.0  # keep this stratified share of the training split
    skip_bad: bool = False  # leave unreadable images out (listed in the report) instead of failing

    def __post_init__(self) -> None:
        if len(self.input_size) != 2:
            raise ConfigError(f"data.input_size: expected [H, W] in pixels, got {self.input_size!r}")
        if len(self.split) != 3 or abs(sum(self.split) - 1) > 1e-6:
            raise ConfigError(f"data.split: expected [train, val, test] shares summing to 1, got {self.split!r}")


@dataclass
class AugmentCfg:
    """Training-time augmentation (torchvision.transforms.v2), applied per image."""

    hflip: bool = True  # random horizontal flip, p = 0.5
    vflip: bool = True  # random vertical flip, p = 0.5
    rotate_deg: Annotated[float, Range(ge=0, le=180)] = 10.0  # random rotation in +-degrees (0 = off)
    brightness: Annotated[float, NonNegative] = 0.2  # ColorJitter brightness (0 = off)
    contrast: Annotated[float, NonNegative] = 0.2  # ColorJitter contrast (0 = off)
    erasing: Annotated[float, Fraction] = 0.0  # probability of random erasing / cutout of one rectangle (0 = off)
    crop: Annotated[float, Range(gt=0, le=1)] = 1.0  # < 1: random crop of this share of each side, resized back
    # detection only (boxes move with the pixels):
    rot90: Annotated[float, Fraction] = 0.0  # probability of a 90 / 180 / 270-degree rotation
    scale: Annotated[float, Range(ge=0, lt=1)] = 0.0  # random zoom in [1 - scale, 1 + scale]
    translate: Annotated[float, Range(ge=0, le=0.5)] = 0.0  # random shift, share of the width / height
    mosaic: Annotated[float, Fraction] = 0.0  # share of training images built as a mosaic of 4 (YOLOv4 §2.1.1)
    close_mosaic: Annotated[int, NonNegative] = 0  # the last N epochs train without mosaic


@dataclass
class OptimCfg:
    """SGD or AdamW with warm-up then a cosine or multi-step schedule (Xie & Shen 2022, Section 3.3.1)."""

    epochs: Annotated[int, AtLeastOne] = 100
    # > 0: a time budget of the stage (Ultralytics' ``time``), as summed epoch times (training + validation; not
    # checkpoint writes or setup): it stops before an epoch that would end past it (the median epoch after the first
    # as the estimate). The schedule stays planned for ``epochs``: a stopped stage never reaches the lowest learning
    # rates, nor its last swa_epochs / close_mosaic epochs. Selection on validation as usual
    time_limit_minutes: Annotated[float, NonNegative] = 0.0
    batch_size: Annotated[int, AtLeastOne] = 64
    optimizer: Literal["sgd", "adamw"] = "sgd"  # sgd: momentum / nesterov below; adamw: betas (0.9, 0.999)
    lr: Annotated[float, Positive] = 0.1  # peak learning rate, reached after warm-up
    momentum: Annotated[float, Range(ge=0, lt=1)] = 0.9
    weight_decay: Annotated[float, NonNegative] = 1e-4
    nesterov: bool = False
    schedule: Literal["cosine", "multistep"] = "cosine"
    warmup_epochs: Annotated[float, NonNegative] = 1.0  # linear warm-up from lr / 10
    milestones: list[Annotated[int, NonNegative]] = field(default_factory=list)  # multistep: epochs where lr *= gamma
    gamma: Annotated[float, Range(gt=0, le=1)] = 0.1
    min_lr: Annotated[float, NonNegative] = 0.0  # cosine floor
    label_smoothing: Annotated[float, Range(ge=0, lt=1)] = 0.0
    ema_decay: Annotated[float, Range(ge=0, lt=1)] = 0.0  # > 0: validate and keep an EMA of the weights (timm)
    swa_epochs: Annotated[int, NonNegative] = 0  # > 0: stochastic weight averaging over the last N epochs
    swa_lr: Annotated[float, Positive] = 0.01
    mixup_alpha: Annotated[float, NonNegative] = 0.0  # > 0: mixup (Beta(alpha, alpha) mixing of image pairs), timm
    cutmix_alpha: Annotated[float, NonNegative] = 0.0  # > 0: CutMix
    mix_prob: Annotated[float, Fraction] = 1.0  # share of batches mixed
    amp: Literal["auto", "bf16", "off"] = "auto"  # auto = bf16 autocast where the hardware has bf16, else float32
    # NHWC weights and batches (PyTorch's channels_last): on an AVX2-only CPU, 2 threads, float32, a training step
    # took 0.62-0.88x as long for cpu_repnet_m, mobilenetv3_small_050, pdmsnet, weldnet, dsc_cnn and yolo_lite
    # (eg_repvgg 1.00x); training only, the exported model is the same
    channels_last: bool = True


@dataclass
class StageCfg:
    """One model trained in a run (the teacher or the student)."""

    model: str = "eg_repvgg"  # registry name or timm:<name>
    model_kwargs: dict[str, Any] = field(default_factory=dict)
    optim: OptimCfg = field(default_factory=OptimCfg)
    augment: AugmentCfg = field(default_factory=AugmentCfg)
    sparsity: Annotated[float, NonNegative] = 0.0  # lambda of the L1 penalty on BN gammas (YOLOv4 paper Eq. 11)


@dataclass
class KDCfg:
    """Logit distillation, Xie & Shen 2022 Eq. 11-13: alpha * T^2 * KL + (1 - alpha) * CE."""

    temperature: Annotated[float, Positive] = 7.0  # T
    alpha: Annotated[float, Fraction] = 0.3  # weight of the distillation term


@dataclass
class EnsembleCfg:
    """Ensemble training and ensemble-distillation (WeldNet paper, Algorithm 1 and Eq. 2)."""

    members: Annotated[int, NonNegative] = 0  # N members with their own seed, data order and augmentation (0 = off)
    member: StageCfg | None = None  # how to train a member (default: the student's stage)
    combine: Literal["mean", "focal"] = "focal"  # teacher of the distillation
    k: Annotated[float, Positive] = 2.0  # focal-ensemble exponent (paper: 2)
    distill: bool = True  # train the student from the ensemble (else the deployed model is member 0)
    targets: Literal["soft", "hard"] = "soft"  # soft: KD at kd.temperature weighted by kd.alpha | hard: pseudo-labels
    hard_alpha: Annotated[float, Fraction] = 0.0  # hard targets: weight of the true labels (0 = pseudo-labels only)


@dataclass
class CalibrationCfg:
    """Calibrated probabilities and the reject option of the deployed classifier (Guo et al. 2017)."""

    temperature: bool = True  # fit one temperature on the validation split (NLL) and fold it into the model
    target_accuracy: Annotated[float, Range(gt=0, le=1)] = 0.995  # accuracy wanted on accepted images: sets the
    # recommended confidence threshold on validation ("send to a human below p")


@dataclass
class Int8Cfg:
    """INT8 as the deployed form (ONNX Runtime static QDQ quantisation), when it keeps the validation score."""

    deploy: bool = True  # write model.int8.onnx beside model.onnx when it keeps the score; predict / serve pick it
    max_drop: Annotated[float, NonNegative] = 0.003  # largest validation score loss accepted (0.003 = 0.3 points)
    calib_images: Annotated[int, AtLeastOne] = 256  # training images that calibrate the activation ranges
    min_reduction: Annotated[int, NonNegative] = 128  # quantise convs with C_in / groups x kH x kW >= this


@dataclass
class ProfileCfg:
    """How speed is measured for the report."""

    threads: Annotated[int, AtLeastOne] = 1  # intra-op threads for latency (batch 1); throughput uses all cores
    warmup: Annotated[int, NonNegative] = 20  # untimed runs before timing
    runs: Annotated[int, AtLeastOne] = 200  # timed runs at batch 1 (median and p95 reported)
    throughput_batch: Annotated[int, AtLeastOne] = 64
    throughput_runs: Annotated[int, AtLeastOne] = 10


@dataclass
class RecipeCfg:
    """A whole run: the task, data, optional teacher, student, distillation and profiling."""

    name: str = "custom"
    description: str = ""
    task: str = DEFAULT_TASK  # what the run learns: a task of the table `defectlite.tasks` (classify, detect, ...)
    seed: Annotated[int, NonNegative] = 0  # split seed and training seed
    device: str = "auto"  # auto (CUDA if available, else CPU) | cpu | cuda | cuda:<i>
    threads: Annotated[int, NonNegative] = 0  # PyTorch intra-op threads for training (0 = all cores)
    save_period: Annotated[int, NonNegative] = 0  # > 0: also keep the validated weights of every N-th epoch
    data: DataCfg = field(default_factory=DataCfg)
    teacher: StageCfg | None = None  # None = no distillation
    student: StageCfg = field(default_factory=StageCfg)
    kd: KDCfg = field(default_factory=KDCfg)
    ensemble: EnsembleCfg = field(default_factory=EnsembleCfg)
    calibration: CalibrationCfg = field(default_factory=CalibrationCfg)
    int8: Int8Cfg = field(default_factory=Int8Cfg)
    profile: ProfileCfg = field(default_factory=ProfileCfg)
    paper: dict[str, Any] = field(default_factory=dict)  # the source paper's numbers, for the report


def _optional_stage_default(data: dict, path: list[str]) -> dict | None:
    """The starting point of an optional stage that a ``--set`` names but the recipe leaves out: the student's
    stage for ``ensemble.member`` (the documented default of a member), :class:`StageCfg` defaults for
    ``teacher``."""
    if path == ["ensemble", "member"]:
        return copy.deepcopy(data["student"])
    if path == ["teacher"]:
        return to_dict(StageCfg())
    return None


def apply_overrides(cfg: RecipeCfg, overrides: list[str]) -> RecipeCfg:
    """Apply ``key.sub=value`` overrides (values parsed by :func:`parse_value`) with strict key and type checks.

    Setting ``teacher=null`` removes the teacher; setting a ``teacher.*`` key on a recipe without a teacher
    starts from the defaults of :class:`StageCfg`, an ``ensemble.member.*`` key on a recipe without a member
    stage from a copy of the student's stage.

    Raises:
        ConfigError: malformed override, unknown key, wrong type or a value outside its allowed set or range.
    """
    data = to_dict(cfg)
    for item in overrides:
        if "=" not in item:
            raise ConfigError(f"override {item!r} is not of the form key=value")
        key, raw = item.split("=", 1)
        try:
            value = parse_value(raw)
        except ConfigError as e:
            raise ConfigError(f"override {item!r}: {e}") from None
        parts = key.strip().split(".")
        node = data
        for i, part in enumerate(parts[:-1]):
            if isinstance(node, dict) and node.get(part) is None:
                default = _optional_stage_default(data, parts[: i + 1])
                if default is not None:
                    node[part] = default
            if not isinstance(node.get(part), dict):
                raise ConfigError(f"unknown config key {'.'.join(parts[: i + 1])!r} in override {item!r}")
            node = node[part]
        if parts[-1] not in node and not (len(parts) > 1 and parts[-2] in ("model_kwargs", "paper")):
            close = difflib.get_close_matches(parts[-1], list(node), n=1, cutoff=0.6)
            hint = f"did you mean {close[0]!r}? " if close else ""
            raise ConfigError(f"unknown config key {key!r}; {hint}known keys here: {', '.join(node)}")
        node[parts[-1]] = value
    return from_dict(RecipeCfg, data)


def model_overrides(cfg: RecipeCfg, model: str) -> list[str]:
    """Overrides that make ``model`` (registry name or ``timm:<name>``) the run's deployed network.

    Sets ``student.model`` and, when the recipe has its own ensemble member stage, ``ensemble.member.model``
    too: in ensemble-distillation the members and the student are the same network (WeldNet paper,
    Algorithm 1). The teacher, if any, is left alone. Apply these before the user's own ``--set`` items so
    that an explicit ``ensemble.member.model=...`` still wins.
    """
    sets = [f"student.model={model}"]
    if cfg.ensemble.member is not None:
        sets.append(f"ensemble.member.model={model}")
    return sets


def scale_epochs(cfg: RecipeCfg, epochs: int) -> list[str]:
    """Overrides that train the student ``epochs`` epochs and every other stage (teacher, ensemble members) in
    the recipe's proportion to the student; warm-up, multi-step milestones, SWA epochs and the mosaic-free last
    epochs (``<stage>.augment.close_mosaic``) scale alike.

    Raises:
        ConfigError: ``epochs`` < 1.
    """
    if epochs < 1:
        raise ConfigError(f"--epochs must be at least 1, got {epochs}")
    factor = epochs / cfg.student.optim.epochs
    sets = []
    for path, stage in (("teacher", cfg.teacher), ("student", cfg.student), ("ensemble.member", cfg.ensemble.member)):
        if stage is None:
            continue
        o = stage.optim
        n = epochs if path == "student" else max(1, round(o.epochs * factor))
        r = n / o.epochs
        sets += [f"{path}.optim.epochs={n}", f"{path}.optim.warmup_epochs={o.warmup_epochs * r:.6g}"]
        if o.milestones:
            sets.append(f"{path}.optim.milestones=[{', '.join(str(max(1, round(m * r))) for m in o.milestones)}]")
        if o.swa_epochs:
            sets.append(f"{path}.optim.swa_epochs={max(1, min(n, round(o.swa_epochs * r)))}")
        if stage.augment.close_mosaic:
            sets.append(f"{path}.augment.close_mosaic={min(n, round(stage.augment.close_mosaic * r))}")
    return sets


def shipped_recipes() -> dict[str, Path]:
    """Name -> file of every recipe shipped with defectlite: each task ships its own, in ``tasks/<task>/recipes/``.

    Raises:
        ConfigError: two tasks ship recipes of the same name.
    """
    out: dict[str, Path] = {}
    for folder in recipe_dirs():
        for path in sorted(folder.glob("*.yaml")):
            name = path.name.removesuffix(".yaml")
            if name in out:
                raise ConfigError(f"recipe {name!r} is shipped twice: {out[name]} and {path}")
            out[name] = path
    return out


def list_recipes() -> list[str]:
    """Names of the recipes shipped with defectlite."""
    return sorted(shipped_recipes())


def load_recipe(name_or_path: str | Path, overrides: list[str] | None = None) -> RecipeCfg:
    """Load a shipped recipe by name, or a YAML file by path, then apply ``overrides``.

    Raises:
        ConfigError: unknown recipe name, unreadable YAML, unknown keys or wrong types.
    """
    path = Path(name_or_path)
    if path.suffix in (".yaml", ".yml") or path.exists():
        if not path.is_file():
            raise ConfigError(f"recipe file not found: {path}")
        text = path.read_text()
    else:
        res = shipped_recipes().get(str(name_or_path))
        if res is None:
            raise ConfigError(f"unknown recipe {str(name_or_path)!r}; shipped recipes: {', '.join(list_recipes())}")
        text = res.read_text()
    try:
        data = yaml.safe_load(text) or {}
    except yaml.YAMLError as e:
        raise ConfigError(f"recipe {name_or_path}: invalid YAML ({e})") from None
    if not isinstance(data, dict):
        raise ConfigError(f"recipe {name_or_path}: expected a mapping at the top level")
    cfg = from_dict(RecipeCfg, migrate(data))
    return apply_overrides(cfg, overrides or [])


def migrate(data: dict) -> dict:
    """Read recipes and run configs written by earlier versions: ``data.drop_leaks: X`` (leaks kept unless X)
    became ``data.keep_leaks: not X`` (leaks dropped unless kept)."""
    d = data.get("data")
    if isinstance(d, dict) and "drop_leaks" in d and "keep_leaks" not in d:
        d = dict(d)
        d["keep_leaks"] = not bool(d.pop("drop_leaks"))
        data = {**data, "data": d}
    return data


def dump_recipe(cfg: RecipeCfg) -> str:
    """The resolved recipe as YAML text (what ``<run>/config.yaml`` holds)."""
    return yaml.safe_dump(to_dict(cfg), sort_keys=False)
