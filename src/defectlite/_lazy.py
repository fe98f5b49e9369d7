"""Lazy package attributes (PEP 562), so that importing a package does not import PyTorch.

The deployment path (``Predictor``, ``defectlite predict``, ``defectlite serve`` on an ONNX file)
needs only NumPy, Pillow and ONNX Runtime; PyTorch and timm cost about 0.6 GB resident per process.
"""

from __future__ import annotations

import importlib
from collections.abc import Callable
from typing import Any


def lazy_attributes(package: str, table: dict[str, str]) -> Callable[[str], Any]:
    """A module ``__getattr__`` that imports ``table[name]`` (a module path) on first access of ``name``.

    Raises:
        AttributeError: ``name`` is neither in ``table`` nor an attribute of ``package``.
    """

    def __getattr__(name: str) -> Any:
        if name not in table:
            raise AttributeError(f"module {package!r} has no attribute {name!r}")
        return getattr(importlib.import_module(table[name]), name)

    return __getattr__
