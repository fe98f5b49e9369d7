"""Deterministic stratified train/val/test splits, their ``splits.csv`` file, and leak detection.

The split of a run is written once to ``<run>/splits.csv`` and every later command on that run
reads it back, so evaluation, export checks and reports all see the same images.
"""

from __future__ import annotations

import csv
import io
import logging
from collections import defaultdict
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from defectlite.data.readers import DatasetIndex, Sample
from defectlite.errors import DataError
from defectlite.utils import atomic_write_text

log = logging.getLogger(__name__)
SPLITS = ("train", "val", "test")


def stratified_split(labels: Sequence[int], ratios: Sequence[float] = (0.8, 0.1, 0.1), seed: int = 0) -> list[str]:
    """Assign each item to ``train``/``val``/``test`` with the same class mix in every split.

    Per class, the items (in the given order) are shuffled with ``numpy.random.default_rng(seed)``
    and cut by ``ratios``; val and test take ``round(n * ratio)`` each, train the rest. NEU-CLS
    (300 per class, 8:1:1) gives 1,440 / 180 / 180, as in Xie & Shen 2022, Section 3.2.

    Args:
        labels: class index per item.
        ratios: train, val, test fractions (summing to 1; test may be 0).
        seed: the split seed (independent of the training seed).

    Returns:
        The split name per item, same order as ``labels``.

    Raises:
        DataError: ratios are not three non-negative numbers summing to 1.
    """
    if len(ratios) != 3 or min(ratios) < 0 or abs(sum(ratios) - 1) > 1e-6:
        raise DataError(f"split ratios must be three non-negative numbers summing to 1, got {list(ratios)}")
    rng = np.random.default_rng(seed)
    by_class: dict[int, list[int]] = defaultdict(list)
    for i, y in enumerate(labels):
        by_class[int(y)].append(i)
    out = ["train"] * len(labels)
    for y in sorted(by_class):
        idx = np.array(by_class[y])[rng.permutation(len(by_class[y]))]
        n_val, n_test = round(len(idx) * ratios[1]), round(len(idx) * ratios[2])
        for i in idx[:n_val]:
            out[i] = "val"
        for i in idx[n_val : n_val + n_test]:
            out[i] = "test"
    return out


def assign_splits(index: DatasetIndex, ratios: Sequence[float], seed: int) -> list[str]:
    """Split ``index``: honour a pre-split tree, else :func:`stratified_split` over all samples.

    A tree with ``train/`` and ``test/`` but no ``val/`` gets its validation split carved
    (stratified) from ``train/``, in proportion ``ratios[1] / (ratios[0] + ratios[1])``.
    """
    if not index.presplit:
        return stratified_split([s.label for s in index.samples], ratios, seed)
    splits = [s.split or "train" for s in index.samples]
    if "val" not in splits:
        train_idx = [i for i, s in enumerate(splits) if s == "train"]
        frac = ratios[1] / max(ratios[0] + ratios[1], 1e-9)
        sub = stratified_split([index.samples[i].label for i in train_idx], (1 - frac, frac, 0.0), seed)
        for i, s in zip(train_idx, sub):
            splits[i] = s
    return splits


def subsample_train(labels: Sequence[int], splits: Sequence[str], fraction: float, seed: int) -> list[bool]:
    """Keep a stratified share ``fraction`` of the training items (at least one per class); keep all others.

    Returns:
        keep-mask per item.

    Raises:
        DataError: ``fraction`` outside (0, 1].
    """
    if not 0.0 < fraction <= 1.0:
        raise DataError(f"train_fraction must be in (0, 1], got {fraction}")
    keep = [True] * len(labels)
    if fraction == 1.0:
        return keep
    rng = np.random.default_rng(seed + 7919)
    by_class: dict[int, list[int]] = defaultdict(list)
    for i, (y, s) in enumerate(zip(labels, splits)):
        if s == "train":
            by_class[int(y)].append(i)
    for y in sorted(by_class):
        idx = np.array(by_class[y])[rng.permutation(len(by_class[y]))]
        for i in idx[max(1, round(len(idx) * fraction)) :]:
            keep[i] = False
    return keep


@dataclass(frozen=True)
class SplitRow:
    """One line of ``splits.csv``: where an image goes and what it is."""

    split: str
    label: int
    cls: str
    path: str  # relative to the data root
    sha1: str = ""


def write_splits_csv(path: Path, index: DatasetIndex, splits: Sequence[str], digests: Sequence[str]) -> None:
    """Write ``splits.csv`` (columns split, label, class, path, sha1) atomically."""
    buf = io.StringIO()
    w = csv.writer(buf, lineterminator="\n")
    w.writerow(["split", "label", "class", "path", "sha1"])
    for s, split, digest in zip(index.samples, splits, digests):
        w.writerow([split, s.label, index.classes[s.label], s.path.relative_to(index.root).as_posix(), digest])
    atomic_write_text(path, buf.getvalue())


def read_splits_csv(path: Path, root: Path, classes: Sequence[str]) -> tuple[list[Sample], list[str]]:
    """Read back a run's ``splits.csv``.

    Returns:
        (samples, digests): samples with their ``split`` set, paths resolved under ``root``.

    Raises:
        DataError: the file is missing or malformed, names an unknown split or class, or lists
            an image that no longer exists.
    """
    if not path.is_file():
        raise DataError(f"split file not found: {path}")
    samples, digests = [], []
    with path.open(newline="") as f:
        reader = csv.DictReader(f)
        need = {"split", "label", "class", "path"}
        if not need <= set(reader.fieldnames or []):
            raise DataError(f"{path}: expected columns {sorted(need)}, got {reader.fieldnames}")
        for n, row in enumerate(reader, start=2):
            if row["split"] not in SPLITS:
                raise DataError(f"{path}:{n}: unknown split {row['split']!r}")
            if row["class"] not in classes or classes.index(row["class"]) != int(row["label"]):
                raise DataError(f"{path}:{n}: class {row['class']!r} / label {row['label']} not in {list(classes)}")
            img = root / row["path"]
            if not img.is_file():
                raise DataError(f"{path}:{n}: image {img} listed in the split no longer exists")
            samples.append(Sample(img, int(row["label"]), row["split"]))
            digests.append(row.get("sha1") or "")
    return samples, digests


@dataclass(frozen=True)
class Leak:
    """An evaluated image byte-identical to an image of an earlier split (train, or val for test)."""

    split: str
    path: str
    duplicate_of: str
    duplicate_split: str


def find_leaks(paths: Sequence[str], splits: Sequence[str], digests: Sequence[str]) -> list[Leak]:
    """Find val/test images whose bytes equal an image in train (or a test image equal to a val one).

    Args:
        paths: image path per item (as written to ``splits.csv``).
        splits: split name per item.
        digests: SHA-1 of each file's bytes.

    Returns:
        One :class:`Leak` per leaked val/test image (the casting set has 64 test images that are
        copies of training images).
    """
    order = {s: i for i, s in enumerate(SPLITS)}
    first: dict[str, tuple[int, int]] = {}
    for i, (split, digest) in enumerate(zip(splits, digests)):
        if digest and (digest not in first or order[split] < first[digest][0]):
            first[digest] = (order[split], i)
    leaks = []
    for i, (split, digest) in enumerate(zip(splits, digests)):
        if split == "train" or not digest:
            continue
        rank, j = first[digest]
        if rank < order[split]:
            leaks.append(Leak(split, paths[i], paths[j], splits[j]))
    return leaks
