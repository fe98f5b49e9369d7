"""From a data folder to split, decoded arrays: what every command of a run trains and evaluates on."""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch.utils.data import Dataset

from defectlite.data.cache import decode_images
from defectlite.data.readers import DatasetIndex, read_dataset
from defectlite.data.splits import (
    Leak,
    assign_splits,
    find_leaks,
    read_splits_csv,
    subsample_train,
    write_splits_csv,
)
from defectlite.data.transforms import channel_stats

log = logging.getLogger(__name__)


@dataclass
class SplitData:
    """The decoded images of a data set with their split, ready for training and evaluation.

    Attributes:
        root: data folder; ``paths`` are relative to it.
        format: the layout read (``folder`` or ``neu``).
        classes: class names (``labels`` index them).
        images: uint8 (N, C, H, W).
        labels: int64 (N,).
        splits: ``"train"``/``"val"``/``"test"`` per image (N,).
        paths: relative path per image.
        leaks: val/test images byte-identical to an image of an earlier split.
        dropped_leaks: True when the leaked images were removed from val/test.
        skipped: (path, reason) of unreadable files left out (``skip_bad``).
        warnings: what the run's log and report must say about the data (label conflicts, classes too small
            for the split, duplicates moved together).
    """

    root: Path
    format: str
    classes: list[str]
    images: np.ndarray
    labels: np.ndarray
    splits: np.ndarray
    paths: list[str]
    leaks: list[Leak] = field(default_factory=list)
    dropped_leaks: bool = False
    skipped: list[tuple[str, str]] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)

    def subset(self, split: str) -> tuple[np.ndarray, np.ndarray]:
        """(images (n, C, H, W) uint8, labels (n,)) of one split."""
        m = self.splits == split
        return self.images[m], self.labels[m]

    def split_paths(self, split: str) -> list[str]:
        """Relative paths of one split, in the order of :meth:`subset`."""
        return [p for p, s in zip(self.paths, self.splits) if s == split]

    def counts(self) -> dict[str, int]:
        """Images per split."""
        return {s: int((self.splits == s).sum()) for s in ("train", "val", "test")}

    def norm_stats(self) -> tuple[list[float], list[float]]:
        """Per-channel (mean, std) of the training images, in [0, 1] units."""
        return channel_stats(self.subset("train")[0])


def prepare(root: str | Path, *, format: str = "auto", **options: Any) -> SplitData:
    """Read, split and decode a classification data set: :func:`defectlite.data.readers.read_dataset` (any layout
    it knows; ``format`` = ``auto``, ``folder``, ``neu`` or ``tig``), then :func:`prepare_index` with ``options``
    (``size`` is required).

    Raises:
        DataError: see the readers and :func:`prepare_index`.
    """
    return prepare_index(read_dataset(root, format), **options)


def prepare_index(
    index: DatasetIndex,
    *,
    size: Sequence[int],
    channels: int = 1,
    ratios: Sequence[float] = (0.8, 0.1, 0.1),
    seed: int = 0,
    splits_csv: Path | None = None,
    drop_leaks: bool = True,
    skip_bad: bool = False,
    train_fraction: float = 1.0,
    progress: bool = True,
) -> SplitData:
    """Split (or read back ``splits_csv``), decode and leak-check the images of an index already read.

    If ``splits_csv`` exists it is read back (the run's split, reused); otherwise the split is made
    (deterministic, stratified, or the folder's own; identical files kept together) and written there.
    Shared with detection, which passes each image's dominant box class as its label
    (:func:`defectlite.tasks.detect.dataset.prepare_detection`).

    Args:
        index: the listed images (:func:`defectlite.data.readers.read_dataset`).
        size: (H, W) input size in pixels.
        channels: 1 (grey) or 3 (RGB).
        ratios: train/val/test fractions for folders that are not pre-split.
        seed: split seed.
        splits_csv: the run's split file (read if present, else written).
        drop_leaks: remove val/test images byte-identical to an image of an earlier split from the evaluated
            split (default; they can only leak on a pre-split folder: a split that defectlite makes keeps
            identical files together).
        skip_bad: leave unreadable images out (listed in ``skipped``) instead of failing.
        train_fraction: keep only this stratified share of the training split (seeded by ``seed``;
            ``splits.csv`` still lists the full split).

    Raises:
        DataError: see :func:`defectlite.data.cache.decode_images` and
            :func:`defectlite.data.splits.read_splits_csv`.
    """
    if splits_csv is not None and splits_csv.is_file():
        samples, _ = read_splits_csv(splits_csv, index.root, index.classes)
        split_of = [s.split for s in samples]
    else:
        samples, split_of = index.samples, None
    decoded = decode_images([s.path for s in samples], size, channels, skip_bad=skip_bad, progress=progress)
    kept = [samples[i] for i in decoded.kept]
    paths = [s.path.relative_to(index.root).as_posix() for s in kept]
    warnings = label_conflicts(paths, [index.classes[s.label] for s in kept], decoded.digests)
    if split_of is None:
        kept_index = DatasetIndex(index.root, index.format, index.classes, kept)
        split_of = assign_splits(kept_index, ratios, seed)
        if not kept_index.presplit:
            split_of, moved = group_duplicates(split_of, decoded.digests)
            if moved:
                warnings.append(f"{moved} duplicate image(s) moved into the split of their identical copy")
        if splits_csv is not None:
            write_splits_csv(splits_csv, kept_index, split_of, decoded.digests)
    else:
        split_of = [split_of[i] for i in decoded.kept]
    warnings += small_classes([index.classes[s.label] for s in kept], split_of)
    leaks = find_leaks(paths, split_of, decoded.digests)
    if leaks:
        action = "left out of the evaluated split" if drop_leaks else "kept (--keep-leaks): scores include them"
        warnings.append(f"{len(leaks)} val/test image(s) are byte-identical to images of an earlier split: {action}")
    for w in warnings:
        log.warning("%s", w)
    keep = np.array(subsample_train([s.label for s in kept], split_of, train_fraction, seed))
    if drop_leaks and leaks:
        leaked = {leak.path for leak in leaks}
        keep &= np.array([p not in leaked for p in paths])
    return SplitData(
        root=index.root,
        format=index.format,
        classes=index.classes,
        images=decoded.images[keep],
        labels=np.array([s.label for s in kept], dtype=np.int64)[keep],
        splits=np.array(split_of)[keep],
        paths=[p for p, k in zip(paths, keep) if k],
        leaks=leaks,
        dropped_leaks=bool(drop_leaks and leaks),
        skipped=decoded.skipped,
        warnings=warnings,
    )


def group_duplicates(splits: Sequence[str], digests: Sequence[str]) -> tuple[list[str], int]:
    """Put byte-identical files in one split (the earliest of train, val, test among the copies), so that a
    split defectlite makes never scores an image it trained on.

    Returns:
        (the new split per item, how many items moved).
    """
    order = {"train": 0, "val": 1, "test": 2}
    first: dict[str, str] = {}
    for split, digest in zip(splits, digests):
        if digest and (digest not in first or order[split] < order[first[digest]]):
            first[digest] = split
    out = [first.get(d, s) if d else s for s, d in zip(splits, digests)]
    return out, sum(a != b for a, b in zip(out, splits))


def label_conflicts(paths: Sequence[str], classes: Sequence[str], digests: Sequence[str]) -> list[str]:
    """Warnings for byte-identical files labelled with different classes (one of the labels is wrong)."""
    by_digest: dict[str, list[tuple[str, str]]] = {}
    for p, c, d in zip(paths, classes, digests):
        if d:
            by_digest.setdefault(d, []).append((p, c))
    out = []
    for copies in by_digest.values():
        if len({c for _, c in copies}) > 1:
            out.append("label conflict: the same image is labelled " + ", ".join(f"{c} ({p})" for p, c in copies))
    return out


def small_classes(classes: Sequence[str], splits: Sequence[str]) -> list[str]:
    """Warnings for classes without an image in the validation or the test split (too small for the split)."""
    out, present = [], [s for s in ("val", "test") if s in set(splits)]
    for c in sorted(set(classes)):
        missing = [s for s in present if not any(k == c and x == s for k, x in zip(classes, splits))]
        if missing:
            n = sum(k == c for k in classes)
            out.append(f"class {c!r} has {n} image(s) and none in {' / '.join(missing)}: its scores there are missing")
    return out


class ArrayDataset(Dataset):
    """uint8 images in memory; augmentation happens per batch (the loader's ``collate_fn``,
    :class:`defectlite.data.augment.BatchAugment`).

    Items: (image uint8 tensor (C, H, W), label int). Normalisation happens per batch, in the loop,
    with :func:`defectlite.data.transforms.normalize`.
    """

    def __init__(self, images: np.ndarray, labels: np.ndarray) -> None:
        self.images = torch.from_numpy(np.ascontiguousarray(images))
        self.labels = torch.from_numpy(np.asarray(labels, dtype=np.int64))

    def __len__(self) -> int:
        return len(self.labels)

    def __getitem__(self, i: int) -> tuple[torch.Tensor, torch.Tensor]:
        return self.images[i], self.labels[i]
