"""Small helpers shared by every stage: atomic file writes and seeding."""

from __future__ import annotations

import json
import os
import random
import secrets
import stat
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np


def atomic_write(path: str | Path, write: Callable[[Path], None]) -> Path:
    """Write a file so that readers see either the old or the complete new one, never a part.

    ``write`` receives a temporary path in the same folder; it is renamed over ``path`` only
    after ``write`` returns. On error the temporary file is removed and ``path`` is untouched.
    The file gets the permissions a plain ``open(path, "w")`` would give it: those of the file it
    replaces, else 0666 less the umask.

    Raises:
        ConfigError: ``path`` exists and is not a regular file (a symlink, folder, FIFO, device or
            socket): it is never replaced by a file (the message names the path and what it is).
    """
    path = Path(path)
    old = _existing_file(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = _new_temp(path)
    try:
        write(tmp)
        if old is not None:
            os.chmod(tmp, stat.S_IMODE(old.st_mode))
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    return path


def _existing_file(path: Path) -> os.stat_result | None:
    """The status of the regular file at ``path``, None if nothing is there.

    Raises:
        ConfigError: something else is there (see :func:`atomic_write`).
    """
    from defectlite.errors import ConfigError

    try:
        st = os.lstat(path)
    except (FileNotFoundError, NotADirectoryError):  # nothing there, or a parent is a file (mkdir names it)
        return None
    if not stat.S_ISREG(st.st_mode):
        raise ConfigError(f"{path} is {_kind(st.st_mode, path)}, not a regular file: refusing to replace it")
    return st


def _kind(mode: int, path: Path) -> str:
    """What a non-regular file is, in words (``a symlink to X``, ``a FIFO``, ...)."""
    if stat.S_ISLNK(mode):
        return f"a symlink to {os.readlink(path)}"
    kinds = {stat.S_ISDIR: "a folder", stat.S_ISFIFO: "a FIFO (named pipe)", stat.S_ISCHR: "a character device",
             stat.S_ISBLK: "a block device", stat.S_ISSOCK: "a socket"}  # fmt: skip
    return next((words for test, words in kinds.items() if test(mode)), "not a regular file")


def _new_temp(path: Path) -> Path:
    """Create an empty ``.<name>.<random>.tmp`` beside ``path`` as ``open()`` would (mode 0666 less the umask;
    ``tempfile.mkstemp`` would make it 0600)."""
    for _ in range(100):
        tmp = path.parent / f".{path.name}.{secrets.token_hex(4)}.tmp"
        try:
            os.close(os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | getattr(os, "O_CLOEXEC", 0), 0o666))
        except FileExistsError:
            continue
        return tmp
    raise FileExistsError(f"no free temporary name beside {path}")


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


def check_writable(path: str | Path, *, folder: bool = False, what: str = "output", stdout: bool = False) -> Path:
    """Fail now, before any work, if ``path`` could not be written later.

    A file path must be a regular file or nothing (not a folder, symlink, FIFO or device: :func:`atomic_write`
    refuses to replace those) and its nearest existing parent must be a writable folder (not a file); a folder
    path must be a folder or creatable the same way. With ``stdout``, ``-`` (standard output) is accepted as is.

    Raises:
        ConfigError: naming ``what`` (e.g. ``--csv``), the path and what is wrong.
    """
    from defectlite.errors import ConfigError

    if stdout and not folder and str(path) == "-":
        return Path("-")
    p = Path(path).expanduser()
    if p.exists():
        if folder and not p.is_dir():
            raise ConfigError(f"{what} {p}: exists and is not a folder")
        if not folder and p.is_dir():
            raise ConfigError(f"{what} {p}: is a folder; give a file name")
        target = p if folder else p.parent
    else:
        target = p.parent
    if not folder:
        try:
            _existing_file(p)
        except ConfigError as e:
            raise ConfigError(f"{what} {e}; give another file name") from None
    while not target.exists():
        target = target.parent
    if not target.is_dir():
        raise ConfigError(f"{what} {p}: {target} is a file, not a folder")
    if not os.access(target, os.W_OK | os.X_OK):
        raise ConfigError(f"{what} {p}: no permission to write in {target}")
    return p
