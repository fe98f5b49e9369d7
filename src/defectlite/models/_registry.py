"""The model registry: decorated, keyword-only builders looked up by name (after timm's _registry)."""

from __future__ import annotations

import difflib
from collections.abc import Callable
from dataclasses import dataclass

from torch import nn

from defectlite.errors import UnknownModelError
from defectlite.tasks import DEFAULT_TASK

ModelFn = Callable[..., nn.Module]


@dataclass(frozen=True)
class ModelInfo:
    """What the registry knows of a model before building it.

    Attributes:
        name: registry name.
        fn: keyword-only builder ``fn(*, num_classes, in_chans, **kwargs) -> nn.Module``.
        input_size: (C, H, W) the model's paper uses (C is a default; ``in_chans`` overrides it).
        reparameterizable: the model has blocks with ``reparameterize()``.
        paper: short citation of the model's source.
        task: the task the model serves (a line of :data:`defectlite.tasks.TASKS`), e.g. ``classify`` (logits
            (N, K)) or ``detect`` (a list of 3 raw head maps, see ``models/yolo.py``); default the default task.
    """

    name: str
    fn: ModelFn
    input_size: tuple[int, int, int]
    reparameterizable: bool = False
    paper: str = ""
    task: str = DEFAULT_TASK


_MODELS: dict[str, ModelInfo] = {}


def register_model(
    *,
    input_size: tuple[int, int, int] = (1, 200, 200),
    reparameterizable: bool = False,
    paper: str = "",
    task: str = DEFAULT_TASK,
) -> Callable[[ModelFn], ModelFn]:
    """Decorator that registers a builder under its function name.

    Raises:
        ValueError: the name is already registered (a programming error).
    """

    def wrap(fn: ModelFn) -> ModelFn:
        if fn.__name__ in _MODELS:
            raise ValueError(f"model {fn.__name__!r} is registered twice")
        _MODELS[fn.__name__] = ModelInfo(fn.__name__, fn, tuple(input_size), reparameterizable, paper, task)
        return fn

    return wrap


def list_models(task: str | None = DEFAULT_TASK) -> list[str]:
    """Registered names of one task (``None``: every task), sorted.

    The default keeps every caller written for classifiers (logits (N, K)) on classifiers;
    ``timm:<name>`` models are not listed but can be built.
    """
    return sorted(n for n, info in _MODELS.items() if task is None or info.task == task)


def model_info(name: str) -> ModelInfo:
    """The :class:`ModelInfo` of a registered model.

    Raises:
        UnknownModelError: no model has that name; the message lists close matches.
    """
    if name not in _MODELS:
        close = difflib.get_close_matches(name, list(_MODELS), n=3, cutoff=0.5)
        hint = f"; did you mean {', '.join(close)}?" if close else "; run `defectlite models` for the list"
        raise UnknownModelError(f"unknown model {name!r}{hint} (any timm model works as timm:<name>)")
    return _MODELS[name]


def get_entrypoint(name: str) -> ModelFn:
    """Return the builder registered under ``name``.

    Raises:
        UnknownModelError: no model has that name; the message lists close matches.
    """
    return model_info(name).fn
