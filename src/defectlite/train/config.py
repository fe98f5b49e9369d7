"""Recipe configuration: dataclasses with commented defaults, filled from YAML, strict ``--set`` overrides.

A recipe is a YAML file (shipped ones live in ``defectlite/train/recipes``); every key must be a
field below, and ``--set student.optim.epochs=30`` checks that the key exists and the value's
type matches. The resolved config is written to ``<run>/config.yaml``.
"""

from __future__ import annotations

import dataclasses
import types
import typing
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path
from typing import Any

import yaml

from defectlite.errors import ConfigError


@dataclass
class DataCfg:
    """Where the images come from and how they are split and decoded."""

    path: str = "neu-surface-defect"  # data folder: absolute, relative to the cwd, or under the data root
    format: str = "auto"  # auto | folder | neu | tig
    input_size: list[int] = field(default_factory=lambda: [200, 200])  # (H, W) in pixels
    channels: int = 1  # 1 = grey (NEU, casting), 3 = RGB
    split: list[float] = field(default_factory=lambda: [0.8, 0.1, 0.1])  # train/val/test of unsplit folders
    drop_leaks: bool = False  # drop val/test images byte-identical to a training image
    train_fraction: float = 1.0  # keep this stratified share of the training split (reduced-data studies)
    skip_bad: bool = False  # leave unreadable images out (listed in the report) instead of failing


@dataclass
class AugmentCfg:
    """Training-time augmentation (torchvision.transforms.v2), applied per image."""

    hflip: bool = True  # random horizontal flip, p = 0.5
    vflip: bool = True  # random vertical flip, p = 0.5
    rotate_deg: float = 10.0  # random rotation in +-degrees (0 = off)
    brightness: float = 0.2  # ColorJitter brightness (0 = off)
    contrast: float = 0.2  # ColorJitter contrast (0 = off)
    erasing: float = 0.0  # probability of random erasing / cutout of one rectangle (0 = off)
    crop: float = 1.0  # < 1: random crop of this share of each side, resized back (WeldNet paper: 600/800)


@dataclass
class OptimCfg:
    """SGD with warm-up then a cosine or multi-step schedule (Xie & Shen 2022, Section 3.3.1)."""

    epochs: int = 100
    batch_size: int = 64
    lr: float = 0.1  # peak learning rate, reached after warm-up
    momentum: float = 0.9
    weight_decay: float = 1e-4
    nesterov: bool = False
    schedule: str = "cosine"  # cosine | multistep
    warmup_epochs: float = 1.0  # linear warm-up from lr / 10
    milestones: list[int] = field(default_factory=list)  # multistep: epochs at which lr *= gamma
    gamma: float = 0.1
    min_lr: float = 0.0  # cosine floor
    label_smoothing: float = 0.0
    ema_decay: float = 0.0  # > 0: evaluate and keep an exponential moving average of the weights (timm ModelEmaV3)
    swa_epochs: int = 0  # > 0: stochastic weight averaging over the last N epochs at constant swa_lr
    swa_lr: float = 0.01
    mixup_alpha: float = 0.0  # > 0: mixup (Beta(alpha, alpha) mixing of image pairs), timm Mixup
    cutmix_alpha: float = 0.0  # > 0: CutMix
    mix_prob: float = 1.0  # share of batches mixed
    amp: str = "auto"  # auto = bf16 autocast where the hardware has bf16 (AMX / AVX512-BF16 / CUDA), else float32


@dataclass
class StageCfg:
    """One model trained in a run (the teacher or the student)."""

    model: str = "eg_repvgg"  # registry name or timm:<name>
    model_kwargs: dict[str, Any] = field(default_factory=dict)
    optim: OptimCfg = field(default_factory=OptimCfg)
    augment: AugmentCfg = field(default_factory=AugmentCfg)
    sparsity: float = 0.0  # lambda of the L1 penalty on BN gammas (sparsity training, YOLOv4 paper Eq. 11)


@dataclass
class KDCfg:
    """Logit distillation, Xie & Shen 2022 Eq. 11-13: alpha * T^2 * KL + (1 - alpha) * CE."""

    temperature: float = 7.0  # T
    alpha: float = 0.3  # weight of the distillation term


@dataclass
class EnsembleCfg:
    """Ensemble training and ensemble-distillation (WeldNet paper, Algorithm 1 and Eq. 2)."""

    members: int = 0  # N members trained with their own seed, data order and augmentation (0 = off)
    member: StageCfg | None = None  # how to train a member (default: the student's stage)
    combine: str = "focal"  # teacher of the distillation: mean | focal
    k: float = 2.0  # focal-ensemble exponent (paper: 2)
    distill: bool = True  # train the student from the ensemble (else the deployed model is member 0)
    targets: str = "soft"  # soft: KD at kd.temperature weighted by kd.alpha | hard: pseudo-labels
    hard_alpha: float = 0.0  # hard targets: weight of the true labels (0 = pseudo-labels only)


@dataclass
class ProfileCfg:
    """How speed is measured for the report."""

    threads: int = 1  # intra-op threads for latency (batch 1); throughput uses all cores
    warmup: int = 20  # untimed runs before timing
    runs: int = 200  # timed runs at batch 1 (median and p95 reported)
    throughput_batch: int = 64
    throughput_runs: int = 10


@dataclass
class RecipeCfg:
    """A whole run: data, optional teacher, student, distillation and profiling."""

    name: str = "custom"
    description: str = ""
    seed: int = 0  # split seed and training seed
    device: str = "auto"  # auto (CUDA if available, else CPU) | cpu | cuda
    threads: int = 0  # PyTorch intra-op threads for training (0 = all cores, or $OMP_NUM_THREADS)
    data: DataCfg = field(default_factory=DataCfg)
    teacher: StageCfg | None = None  # None = no distillation
    student: StageCfg = field(default_factory=StageCfg)
    kd: KDCfg = field(default_factory=KDCfg)
    ensemble: EnsembleCfg = field(default_factory=EnsembleCfg)
    profile: ProfileCfg = field(default_factory=ProfileCfg)
    paper: dict[str, Any] = field(default_factory=dict)  # the source paper's numbers, for the report


def _type_name(tp: Any) -> str:
    return getattr(tp, "__name__", str(tp))


def _coerce(value: Any, tp: Any, where: str) -> Any:
    """Check ``value`` against the annotation ``tp``; build nested dataclasses from dicts."""
    origin = typing.get_origin(tp)
    if origin in (typing.Union, types.UnionType):
        args = typing.get_args(tp)
        if value is None and type(None) in args:
            return None
        (inner,) = [a for a in args if a is not type(None)]
        return _coerce(value, inner, where)
    if dataclasses.is_dataclass(tp):
        if isinstance(value, tp):
            return value
        if not isinstance(value, dict):
            raise ConfigError(f"{where}: expected a mapping for {_type_name(tp)}, got {value!r}")
        return from_dict(tp, value, where)
    if origin is list:
        (inner,) = typing.get_args(tp)
        if not isinstance(value, (list, tuple)):
            raise ConfigError(f"{where}: expected a list, got {value!r}")
        return [_coerce(v, inner, f"{where}[{i}]") for i, v in enumerate(value)]
    if origin is dict:
        if not isinstance(value, dict):
            raise ConfigError(f"{where}: expected a mapping, got {value!r}")
        return dict(value)
    if tp is float and isinstance(value, int) and not isinstance(value, bool):
        return float(value)
    if tp is Any:
        return value
    if not isinstance(value, tp) or (tp is int and isinstance(value, bool)):
        raise ConfigError(f"{where}: expected {_type_name(tp)}, got {value!r}")
    return value


def from_dict(cls: type, data: dict, where: str = "") -> Any:
    """Build dataclass ``cls`` from ``data``, refusing unknown keys and wrong types.

    Raises:
        ConfigError: an unknown key (the message lists the known ones) or a mistyped value.
    """
    hints = typing.get_type_hints(cls)
    names = [f.name for f in dataclasses.fields(cls)]
    kwargs = {}
    for key, value in data.items():
        path = f"{where}.{key}" if where else key
        if key not in names:
            raise ConfigError(f"unknown config key {path!r}; known keys here: {', '.join(names)}")
        kwargs[key] = _coerce(value, hints[key], path)
    return cls(**kwargs)


def to_dict(cfg: Any) -> dict:
    """Plain-data form of a config (for YAML/JSON)."""
    return dataclasses.asdict(cfg)


def apply_overrides(cfg: RecipeCfg, overrides: list[str]) -> RecipeCfg:
    """Apply ``key.sub=value`` overrides (values parsed as YAML) with strict key and type checks.

    Setting ``teacher=null`` removes the teacher; setting a ``teacher.*`` key on a recipe without a
    teacher starts from the defaults of :class:`StageCfg`.

    Raises:
        ConfigError: malformed override, unknown key or wrong type.
    """
    data = to_dict(cfg)
    for item in overrides:
        if "=" not in item:
            raise ConfigError(f"override {item!r} is not of the form key=value")
        key, raw = item.split("=", 1)
        try:
            value = yaml.safe_load(raw) if raw.strip() else ""
        except yaml.YAMLError as e:
            raise ConfigError(f"override {item!r}: value is not valid YAML ({e})") from None
        parts = key.strip().split(".")
        node = data
        for i, part in enumerate(parts[:-1]):
            if node.get(part) is None and part == "teacher":
                node[part] = to_dict(StageCfg())
            if not isinstance(node.get(part), dict):
                raise ConfigError(f"unknown config key {'.'.join(parts[: i + 1])!r} in override {item!r}")
            node = node[part]
        if parts[-1] not in node and not (len(parts) > 1 and parts[-2] == "model_kwargs"):
            raise ConfigError(f"unknown config key {key!r}; known keys here: {', '.join(node)}")
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


def list_recipes() -> list[str]:
    """Names of the recipes shipped with defectlite."""
    folder = resources.files("defectlite.train") / "recipes"
    return sorted(p.name.removesuffix(".yaml") for p in folder.iterdir() if p.name.endswith(".yaml"))


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
        res = resources.files("defectlite.train") / "recipes" / f"{name_or_path}.yaml"
        if not res.is_file():
            raise ConfigError(f"unknown recipe {str(name_or_path)!r}; shipped recipes: {', '.join(list_recipes())}")
        text = res.read_text()
    try:
        data = yaml.safe_load(text) or {}
    except yaml.YAMLError as e:
        raise ConfigError(f"recipe {name_or_path}: invalid YAML ({e})") from None
    if not isinstance(data, dict):
        raise ConfigError(f"recipe {name_or_path}: expected a mapping at the top level")
    cfg = from_dict(RecipeCfg, data)
    return apply_overrides(cfg, overrides or [])


def dump_recipe(cfg: RecipeCfg) -> str:
    """The resolved recipe as YAML text (what ``<run>/config.yaml`` holds)."""
    return yaml.safe_dump(to_dict(cfg), sort_keys=False)
