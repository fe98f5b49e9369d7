"""Small helpers shared by every stage: atomic file writes and seeding."""

from __future__ import annotations

import json
import os
import random
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np


def atomic_write(path: str | Path, write: Callable[[Path], None]) -> Path:
    """Write a file so that readers see either the old or the complete new one, never a part.

    ``write`` receives a temporary path in the same folder; it is renamed over ``path`` only
    after ``write`` returns. On error the temporary file is removed and ``path`` is untouched.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    os.close(fd)
    try:
        write(Path(tmp))
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return path


def atomic_write_text(path: str | Path, text: str) -> Path:
    """Atomically write ``text`` (UTF-8) to ``path``."""
    return atomic_write(path, lambda p: p.write_text(text, encoding="utf-8"))


def atomic_write_json(path: str | Path, obj: Any) -> Path:
    """Atomically write ``obj`` as indented JSON."""
    return atomic_write_text(path, json.dumps(obj, indent=2, default=_json_default) + "\n")


def _json_default(o: Any) -> Any:
    if isinstance(o, (np.integer, np.floating)):
        return o.item()
    if isinstance(o, (Path,)):
        return str(o)
    if isinstance(o, (tuple, set)):
        return list(o)
    raise TypeError(f"not JSON serialisable: {type(o).__name__}")


def seed_everything(seed: int) -> None:
    """Seed Python, NumPy and PyTorch RNGs."""
    import torch  # here, not at the top: the deployment path imports this module without PyTorch

    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


def check_writable(path: str | Path, *, folder: bool = False, what: str = "output") -> Path:
    """Fail now, before any work, if ``path`` could not be written later.

    A file path must not be a folder and its nearest existing parent must be a writable folder (not a file); a
    folder path must be a folder or creatable the same way.

    Raises:
        ConfigError: naming ``what`` (e.g. ``--csv``), the path and what is wrong.
    """
    from defectlite.errors import ConfigError

    p = Path(path).expanduser()
    if p.exists():
        if folder and not p.is_dir():
            raise ConfigError(f"{what} {p}: exists and is not a folder")
        if not folder and p.is_dir():
            raise ConfigError(f"{what} {p}: is a folder; give a file name")
        target = p if folder else p.parent
    else:
        target = p.parent
    while not target.exists():
        target = target.parent
    if not target.is_dir():
        raise ConfigError(f"{what} {p}: {target} is a file, not a folder")
    if not os.access(target, os.W_OK | os.X_OK):
        raise ConfigError(f"{what} {p}: no permission to write in {target}")
    return p
