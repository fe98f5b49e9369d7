"""Typed config fields: dataclasses filled from plain data (YAML, ``--set``) with every value checked — types,
``Literal`` choices, numeric ``Range`` bounds, finite floats — and errors that name the key, the value and what is
allowed. The recipe dataclasses (:mod:`defectlite.train.config`) are built with it."""

from __future__ import annotations

import dataclasses
import difflib
import math
import re
import types
import typing
from dataclasses import dataclass
from typing import Any

import yaml

from defectlite.errors import ConfigError


@dataclass(frozen=True)
class Range:
    """Bounds of a numeric config field, checked at load: ``Annotated[float, Range(gt=0)]``."""

    ge: float | None = None  # value >= ge
    gt: float | None = None  # value > gt
    le: float | None = None  # value <= le
    lt: float | None = None  # value < lt

    def check(self, value: float, where: str) -> None:
        """Raises ConfigError naming ``where`` when ``value`` is out of bounds."""
        for bound, ok, text in (
            (self.ge, lambda b: value >= b, ">="),
            (self.gt, lambda b: value > b, ">"),
            (self.le, lambda b: value <= b, "<="),
            (self.lt, lambda b: value < b, "<"),
        ):
            if bound is not None and not ok(bound):
                raise ConfigError(f"{where}: must be {text} {bound:g}, got {value!r}")


Positive = Range(gt=0)
NonNegative = Range(ge=0)
AtLeastOne = Range(ge=1)
Fraction = Range(ge=0, le=1)


def _type_name(tp: Any) -> str:
    return getattr(tp, "__name__", str(tp))


def _allowed(choices: tuple[Any, ...]) -> str:
    return ", ".join(str(c) for c in choices)


def _coerce(value: Any, tp: Any, where: str) -> Any:
    """Check ``value`` against the annotation ``tp`` (types, ``Literal`` choices, ``Annotated`` ranges, finite
    floats); build nested dataclasses from dicts.

    Raises:
        ConfigError: naming ``where``, the bad value and what is allowed.
    """
    origin = typing.get_origin(tp)
    if origin is typing.Annotated:
        inner, *extras = typing.get_args(tp)
        value = _coerce(value, inner, where)
        for extra in extras:
            if isinstance(extra, Range):
                extra.check(value, where)
        return value
    if origin is typing.Literal:
        choices = typing.get_args(tp)
        if value in choices and type(value) in {type(c) for c in choices}:
            return value
        close = difflib.get_close_matches(str(value), [str(c) for c in choices], n=1, cutoff=0.5)
        hint = f" (did you mean {close[0]}?)" if close else ""
        raise ConfigError(f"{where}: {value!r} is not one of {_allowed(choices)}{hint}")
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
    if tp is Any:
        return value
    if tp is float and isinstance(value, int) and not isinstance(value, bool):
        value = float(value)
    if not isinstance(value, tp) or (tp in (int, float) and isinstance(value, bool)):
        raise ConfigError(f"{where}: expected {_type_name(tp)}, got {value!r}")
    if tp is float and not math.isfinite(value):
        raise ConfigError(f"{where}: must be a finite number, got {value!r}")
    return value


def from_dict(cls: type, data: dict, where: str = "") -> Any:
    """Build dataclass ``cls`` from ``data``, refusing unknown keys, wrong types, values outside their
    ``Literal`` choices or ``Range`` and non-finite floats.

    Raises:
        ConfigError: an unknown key (the message lists the known ones) or a bad value (the message names the key,
            the value and what is allowed).
    """
    hints = typing.get_type_hints(cls, include_extras=True)
    names = [f.name for f in dataclasses.fields(cls)]
    kwargs = {}
    for key, value in data.items():
        path = f"{where}.{key}" if where else key
        if key not in names:
            close = difflib.get_close_matches(str(key), names, n=1, cutoff=0.6)
            hint = f"did you mean {close[0]!r}? " if close else ""
            raise ConfigError(f"unknown config key {path!r}; {hint}known keys here: {', '.join(names)}")
        kwargs[key] = _coerce(value, hints[key], path)
    return cls(**kwargs)


def to_dict(cfg: Any) -> dict:
    """Plain-data form of a config (for YAML/JSON)."""
    return dataclasses.asdict(cfg)


# YAML 1.1 (PyYAML) reads 5e-4 and 1e6 as strings: numbers as YAML 1.2 (and Python) write them
_NUMBER = re.compile(r"^[-+]?(\d+\.?\d*|\.\d+)([eE][-+]?\d+)?$")


def parse_value(raw: str) -> Any:
    """The value of a ``--set key=value`` item: YAML, with numbers and booleans in YAML 1.2 syntax (``5e-4``,
    ``1e6``; only ``true`` / ``false`` are booleans, so ``student.optim.amp=off`` is the string ``"off"``).

    ``nan`` / ``inf`` (any spelling) stay strings or floats here; the field check refuses them.

    Raises:
        ConfigError: the text is not valid YAML.
    """
    text = raw.strip()
    if not text:
        return ""
    if _NUMBER.match(text):
        return float(text) if any(c in text for c in ".eE") else int(text)
    if text.lower().lstrip("+-.") in ("nan", "inf", "infinity"):
        return float(text.lower().replace(".", ""))  # refused by the field check, with the key named
    try:
        value = yaml.safe_load(text)
    except yaml.YAMLError as e:
        raise ConfigError(f"value {raw!r} is not valid YAML ({e})") from None
    if isinstance(value, bool) and text.lower() not in ("true", "false"):
        return text  # YAML 1.1's yes / no / on / off
    return value
