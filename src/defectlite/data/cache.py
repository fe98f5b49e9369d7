"""Decode a list of images once into a uint8 array, cached on disk between runs.

The cache key covers each file's path, size and modification time plus the target size and
channel count, so an edited data folder or another recipe input size gets a fresh cache. Cache
folder: ``$DEFECTLITE_CACHE``, else ``~/.cache/defectlite``.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import NoReturn

import numpy as np
from tqdm.auto import tqdm

from defectlite.cpus import available_cpus
from defectlite.data.decode import read_image_file
from defectlite.data.transforms import to_uint8
from defectlite.errors import DataError
from defectlite.utils import atomic_write, atomic_write_json

log = logging.getLogger(__name__)
_CACHE_VERSION = 2  # 2: data.decode (12/16-bit, float, alpha no longer saturated/dropped; 8-bit output unchanged)


@dataclass
class DecodedImages:
    """Images decoded for training or evaluation.

    Attributes:
        images: uint8 (N, C, H, W), one row per readable input file, in input order.
        kept: index into the input list of each row of ``images``.
        digests: SHA-1 of each kept file's bytes (for leak detection).
        skipped: (path, reason) of each unreadable file (only with ``skip_bad``).
    """

    images: np.ndarray
    kept: list[int]
    digests: list[str]
    skipped: list[tuple[str, str]] = field(default_factory=list)


def cache_dir() -> Path:
    """The cache folder (``$DEFECTLITE_CACHE`` or ``~/.cache/defectlite``)."""
    return Path(os.environ.get("DEFECTLITE_CACHE") or Path.home() / ".cache" / "defectlite")


def _key(paths: Sequence[Path], size: Sequence[int], channels: int) -> str:
    h = hashlib.sha1(f"v{_CACHE_VERSION} {tuple(size)} {channels}".encode())
    for p in paths:
        try:
            st = p.stat()
            h.update(f"{p.resolve()}|{st.st_size}|{st.st_mtime_ns}\n".encode())
        except OSError:
            h.update(f"{p}|missing\n".encode())
    return h.hexdigest()[:20]


def _decode_one(path: Path, size: Sequence[int], channels: int) -> tuple[np.ndarray | None, str, str]:
    """(image (C, H, W) or None, SHA-1 of the file's bytes or "", why it is unreadable or "")."""
    digest = ""
    try:
        data = read_image_file(path)  # refuses FIFOs, broken links ... with their own messages
        digest = hashlib.sha1(data).hexdigest()
        return to_uint8(data, size, channels, name=str(path)), digest, ""
    except DataError as e:
        return None, digest, str(e).removeprefix(f"{path}: ")


def decode_images(
    paths: Sequence[Path],
    size: Sequence[int],
    channels: int = 1,
    *,
    skip_bad: bool = False,
    use_cache: bool = True,
    progress: bool = True,
) -> DecodedImages:
    """Decode ``paths`` to uint8 (N, C, H, W) at ``size`` = (H, W), reusing the disk cache.

    Raises:
        DataError: some files are unreadable or truncated and ``skip_bad`` is False; the message
            names each file and its problem.
    """
    paths = [Path(p) for p in paths]
    key = _key(paths, size, channels)
    npy, meta = cache_dir() / f"{key}.npy", cache_dir() / f"{key}.json"
    if use_cache and npy.is_file() and meta.is_file():
        try:
            info = json.loads(meta.read_text())
            out = DecodedImages(np.load(npy), info["kept"], info["digests"], [tuple(s) for s in info["skipped"]])
            if out.skipped and not skip_bad:
                raise_bad_files(out.skipped)
            return out
        except (OSError, ValueError, KeyError) as e:
            log.warning("ignoring unreadable image cache %s (%s)", npy, e)
    arrays, kept, digests, skipped = [], [], [], []
    with ThreadPoolExecutor(max_workers=min(4, available_cpus())) as pool:
        results = pool.map(lambda p: _decode_one(p, size, channels), paths)
        bar = tqdm(results, total=len(paths), desc="decode images", unit="img", disable=not progress, leave=False)
        for i, (arr, digest, err) in enumerate(bar):
            if arr is None:
                skipped.append((str(paths[i]), err))
                continue
            arrays.append(arr)
            kept.append(i)
            digests.append(digest)
    if skipped and not skip_bad:
        raise_bad_files(skipped)
    h, w = int(size[0]), int(size[1])
    images = np.stack(arrays) if arrays else np.zeros((0, channels, h, w), np.uint8)
    if use_cache:
        try:
            atomic_write(npy, lambda p: _save_npy(p, images))
            atomic_write_json(meta, {"kept": kept, "digests": digests, "skipped": skipped})
        except OSError as e:
            log.warning("could not write image cache to %s (%s)", npy.parent, e)
    return DecodedImages(images, kept, digests, skipped)


def _save_npy(path: Path, array: np.ndarray) -> None:
    with path.open("wb") as f:  # a file object: np.save would append ".npy" to a path
        np.save(f, array)


def raise_bad_files(skipped: Sequence[tuple[str, str]], what: str = "unreadable image(s)") -> NoReturn:
    """Raise one DataError listing each (file, reason) of ``skipped`` (the first 20) and the ``--skip-bad`` hint.

    Shared by the image decoder and the detection readers (``what`` names the kind of file).
    """
    lines = [f"  {p}: {why}" for p, why in skipped[:20]]
    more = f"\n  ... and {len(skipped) - 20} more" if len(skipped) > 20 else ""
    raise DataError(f"{len(skipped)} {what}:\n" + "\n".join(lines) + more + "\n(use --skip-bad to leave them out)")
