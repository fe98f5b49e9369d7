"""Readers that turn a data folder into a list of labelled image files.

Layouts (``format``):

- ``folder``: one sub-folder per class (``<root>/<class>/*.png``), optionally already split into
  ``train/``, ``val/`` (or ``valid/``, ``validation/``) and ``test/`` folders that each hold the class
  folders (as ``casting-product`` is).
- ``neu``: the NEU surface-defect layout, class = file-name prefix before the last ``_``
  (``<root>/crazing_12.jpg``), or the same files under ``<root>/images/``.
- ``tig``: the TIG Al5083 weld-pool layout of Bacioiu et al. 2019 (``<split>/<recording>/frame_*.png``
  with ``<split>/<split>.json`` mapping each path, relative to ``<split>/``, to a label 0-5; class
  names from Table 1 of the WeldNet paper).
- ``auto``: decide from what the folder holds (see :func:`detect_format`).

Symbolic links are followed, to files and to folders (a data set may be a tree of links into another);
a loop (``ln -s . DATA/loopcls``) or a folder or file reached twice is refused, and a broken link named
like an image is listed so that decoding reports it (see :func:`read_dataset`).

Readers only list files; decoding happens once, in :mod:`defectlite.data.cache`.
"""

from __future__ import annotations

import json
import os
import re
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import NoReturn

from defectlite.errors import DataError

IMAGE_SUFFIXES = frozenset({".jpg", ".jpeg", ".png", ".bmp", ".tif", ".tiff", ".webp"})
SPLIT_NAMES = {"train": "train", "val": "val", "valid": "val", "validation": "val", "test": "test"}
FORMATS = ("auto", "folder", "neu", "tig")
TIG_CLASSES = (  # label 0-5 of the TIG Al5083 data set (WeldNet paper, Table 1)
    "good weld",
    "burn through",
    "contamination",
    "lack of fusion",
    "misalignment",
    "lack of penetration",
)
_NEU_NAME = re.compile(r"^(?P<cls>.+)_\d+$")


@dataclass(frozen=True)
class Sample:
    """One labelled image file.

    Attributes:
        path: the image file.
        label: class index into ``DatasetIndex.classes``.
        split: ``"train"``, ``"val"`` or ``"test"`` when the folder itself assigns it, else None.
    """

    path: Path
    label: int
    split: str | None = None


@dataclass
class DatasetIndex:
    """The files of a data set and their classes, in a stable (sorted) order.

    Attributes:
        root: the folder the paths live under (``Sample.path`` is relative-able to it).
        format: the layout that was read (``folder`` or ``neu``).
        classes: class names; ``Sample.label`` indexes this list (sorted by name).
        samples: every image, sorted by path.
    """

    root: Path
    format: str
    classes: list[str]
    samples: list[Sample] = field(default_factory=list)

    @property
    def presplit(self) -> bool:
        """True when the folder assigns every sample to a split (``train/``, ``test/`` ...)."""
        return bool(self.samples) and all(s.split is not None for s in self.samples)

    def counts(self) -> dict[str, int]:
        """Images per class name."""
        out = dict.fromkeys(self.classes, 0)
        for s in self.samples:
            out[self.classes[s.label]] += 1
        return out


def is_image(path: Path) -> bool:
    """True for a path with a known image suffix (case-insensitive) that is not a folder, hidden files excluded.

    Broken symbolic links and special files (FIFOs, sockets, devices) with an image suffix count: they are
    listed so that decoding reports each one (a ``DataError`` unless ``skip_bad``, as for a corrupt image)
    instead of dropping it without a word.
    """
    return path.suffix.lower() in IMAGE_SUFFIXES and not path.name.startswith(".") and not path.is_dir()


def image_files(paths: Sequence[Path]) -> list[Path]:
    """What ``predict`` and ``explain`` answer: files as given, folders expanded to their images (see
    :func:`is_image`), recursively, sorted."""
    out: list[Path] = []
    for p in paths:
        out += sorted(f for f in p.rglob("*") if is_image(f)) if p.is_dir() else [p]
    return out


def _images_in(folder: Path, recursive: bool = True) -> list[Path]:
    """The images (see :func:`is_image`) in ``folder``, and in its sub-folders when ``recursive``, sorted.

    Symbolic links are followed, to files and to folders. A folder reached a second time -- through a link
    to a folder that holds the link (a loop such as ``ln -s . again``) or a second link to one folder --
    is refused instead of being listed again (or for ever). A file reached through two links is refused
    by :func:`read_dataset`.

    Raises:
        DataError: a folder is reached twice; a folder cannot be listed (the message says why).
    """
    if not recursive:
        try:
            return sorted(p for p in folder.iterdir() if is_image(p))
        except OSError as e:
            _unlistable(e)
    found, seen = [], {}
    for d, _, files in os.walk(folder, onerror=_unlistable, followlinks=True):
        real = os.path.realpath(d)
        if real in seen:
            raise DataError(
                f"{d} is {real} again (already listed as {seen[real]}): a symbolic link to a folder that holds it, "
                "or a second link to one folder; a data set must list each folder once, remove the link"
            )
        seen[real] = d
        found += [Path(d, f) for f in files]
    return sorted(p for p in found if is_image(p))


def _unlistable(error: OSError) -> NoReturn:
    raise DataError(f"{error.filename}: cannot list the folder ({error.strerror or error})") from None


def _subdirs(folder: Path) -> list[Path]:
    return sorted(p for p in folder.iterdir() if p.is_dir() and not p.name.startswith("."))


def _check_each_file_once(samples: list[Sample]) -> None:
    """Refuse a file reached through two paths (symbolic links): it would be read twice, maybe in two classes or splits.

    Hard links and copies are distinct files here; byte-identical files are the business of
    :func:`defectlite.data.splits.find_leaks`.
    """
    first: dict[str, Path] = {}
    twice = []
    for s in samples:
        real = os.path.realpath(s.path)
        if real in first:
            twice.append(f"  {first[real]} and {s.path} are both {real}")
        else:
            first[real] = s.path
    if twice:
        more = f"\n  ... and {len(twice) - 10} more" if len(twice) > 10 else ""
        raise DataError(
            f"{len(twice)} image file(s) listed twice through symbolic links; a data set must hold each file once:\n"
            + "\n".join(twice[:10])
            + more
        )


def detect_format(root: Path) -> str:
    """Guess the layout of ``root``.

    ``neu`` when the images (in ``root`` or ``root/images``) are loose files named ``<class>_<n>``
    and there are no class sub-folders; ``folder`` when ``root`` has sub-folders holding images.

    Raises:
        DataError: ``root`` is missing, not a folder, or fits no known layout.
    """
    root = Path(root)
    if not root.exists():
        raise DataError(f"data folder not found: {root}")
    if not root.is_dir():
        raise DataError(f"data path is not a folder: {root}")
    if _tig_label_files(root):
        return "tig"
    for cand in (root / "images", root):
        if cand.is_dir():
            loose = _images_in(cand, recursive=False)
            if loose and all(_NEU_NAME.match(p.stem) for p in loose) and not _subdirs_with_images(cand):
                return "neu"
    if _subdirs_with_images(root):
        return "folder"
    raise DataError(f"{root}: no images found in a known layout (class sub-folders, or files named <class>_<n>.jpg)")


def _subdirs_with_images(folder: Path) -> bool:
    return any(_images_in(d) for d in _subdirs(folder) if d.name != "annotations")


def read_dataset(root: str | Path, format: str = "auto", *, min_classes: int = 2) -> DatasetIndex:
    """List the labelled images under ``root``.

    Args:
        root: the data folder.
        format: ``auto`` (default), ``folder``, ``neu`` or ``tig``.
        min_classes: fewest classes accepted (training needs two; scoring a folder of one class is fine).

    Returns:
        A :class:`DatasetIndex` with classes sorted by name and samples sorted by path.

    Raises:
        DataError: the folder is missing; the format is unknown; a class folder holds no images or is a
            broken symbolic link; fewer than two classes are found; pre-split folders disagree on the
            classes; a folder or file is reached twice through symbolic links (a loop such as
            ``ln -s . DATA/loopcls``, or two links to one file); a folder cannot be listed.
            Broken links and special files named like images are listed; decoding reports them.
    """
    root = Path(root).expanduser()
    if format not in FORMATS:
        raise DataError(f"unknown data format {format!r}; choose one of {', '.join(FORMATS)}")
    fmt = detect_format(root) if format == "auto" else format
    if not root.is_dir():
        raise DataError(f"data folder not found: {root}")
    readers = {"neu": _read_neu, "folder": _read_folder, "tig": _read_tig}
    index = readers[fmt](root)
    _check_each_file_once(index.samples)
    present = sorted({index.classes[s.label] for s in index.samples})
    if len(present) < min_classes:
        raise DataError(
            f"{root}: found a single class ({', '.join(present) or 'none'}); a classifier needs at least two"
        )
    return index


def _tig_label_files(root: Path) -> dict[str, Path]:
    out = {}
    for d in _subdirs(root):
        if d.name.lower() in SPLIT_NAMES and (d / f"{d.name}.json").is_file():
            out[SPLIT_NAMES[d.name.lower()]] = d / f"{d.name}.json"
    return out


def _read_tig(root: Path) -> DatasetIndex:
    files = _tig_label_files(root)
    if not files:
        raise DataError(f"{root}: no <split>/<split>.json label file found (TIG Al5083 layout)")
    samples = []
    for split, label_file in files.items():
        try:
            labels = json.loads(label_file.read_text())
        except (OSError, json.JSONDecodeError) as e:
            raise DataError(f"{label_file}: cannot read the label map ({e})") from None
        if not isinstance(labels, dict):
            raise DataError(f"{label_file}: expected an object mapping image paths to labels 0-5")
        for rel, label in labels.items():
            if not isinstance(label, int) or not 0 <= label < len(TIG_CLASSES):
                raise DataError(f"{label_file}: label of {rel!r} must be an integer 0-5, got {label!r}")
            path = label_file.parent / rel
            if not os.path.lexists(path):  # a broken link or a FIFO is listed: decoding reports what it is
                raise DataError(f"{label_file}: lists {rel!r}, but {path} does not exist")
            samples.append(Sample(path, label, split))
    return DatasetIndex(root, "tig", list(TIG_CLASSES), sorted(samples, key=lambda s: str(s.path)))


def _read_neu(root: Path) -> DatasetIndex:
    folder = root / "images" if (root / "images").is_dir() else root
    files = _images_in(folder, recursive=False)
    if not files:
        raise DataError(f"{folder}: no images found (expected files named <class>_<n>.jpg)")
    by_class: dict[str, list[Path]] = {}
    for p in files:
        m = _NEU_NAME.match(p.stem)
        if m is None:
            raise DataError(f"{p}: file name does not follow the NEU pattern <class>_<n>")
        by_class.setdefault(m.group("cls"), []).append(p)
    classes = sorted(by_class)
    samples = [Sample(p, classes.index(c)) for c in classes for p in by_class[c]]
    return DatasetIndex(root, "neu", classes, sorted(samples, key=lambda s: str(s.path)))


def _read_class_folders(folder: Path) -> dict[str, list[Path]]:
    for p in sorted(folder.iterdir()):
        if p.is_symlink() and not p.exists() and not is_image(p) and not p.name.startswith("."):
            raise DataError(f"{p}: broken symbolic link where a class folder is expected (target {os.readlink(p)})")
    out = {}
    for d in _subdirs(folder):
        files = _images_in(d)
        if not files:
            raise DataError(f"class folder {d} holds no images")
        out[d.name] = files
    return out


def _read_folder(root: Path) -> DatasetIndex:
    subdirs = _subdirs(root)
    split_dirs = {d: SPLIT_NAMES[d.name.lower()] for d in subdirs if d.name.lower() in SPLIT_NAMES}
    if split_dirs and len(split_dirs) == len(subdirs):
        per_split = {split: _read_class_folders(d) for d, split in split_dirs.items()}
        names = {split: set(c) for split, c in per_split.items()}
        classes = sorted(set().union(*names.values()))
        for split, have in names.items():
            if split == "train" and have != set(classes):
                raise DataError(f"{root}/train lacks class folders {sorted(set(classes) - have)} found in other splits")
        samples = [
            Sample(p, classes.index(c), split)
            for split, by_class in per_split.items()
            for c, files in by_class.items()
            for p in files
        ]
    else:
        by_class = _read_class_folders(root)
        classes = sorted(by_class)
        samples = [Sample(p, classes.index(c)) for c in classes for p in by_class[c]]
    if not samples:
        raise DataError(f"{root}: no images found")
    return DatasetIndex(root, "folder", classes, sorted(samples, key=lambda s: str(s.path)))


def read_labelled_files(
    root: str | Path, format: str = "auto", *, split: str | None = None
) -> tuple[list[Path], list[str]]:
    """The images of a labelled set and their class names, for scoring a model (``defectlite val``).

    Args:
        root: a data folder in any layout :func:`read_dataset` knows, or a CSV file with columns ``path`` and
            ``class`` (paths relative to the CSV's folder, or absolute).
        format: the folder's layout (``auto`` detects it); ignored for a CSV file.
        split: only the images of this split of a pre-split folder (``train``, ``val`` or ``test``).

    Raises:
        DataError: missing folder or file, malformed CSV, no images, or ``split`` asked of a folder that has none.
    """
    root = Path(root).expanduser()
    if root.is_file() and root.suffix.lower() == ".csv":
        return _read_csv_list(root)
    index = read_dataset(root, format, min_classes=1)
    samples = index.samples
    if split is not None:
        if not index.presplit:
            raise DataError(f"{root}: --split {split} asked, but the folder is not split into train/val/test")
        samples = [s for s in samples if s.split == split]
        if not samples:
            raise DataError(f"{root}: no images in split {split!r}")
    return [s.path for s in samples], [index.classes[s.label] for s in samples]


def _read_csv_list(path: Path) -> tuple[list[Path], list[str]]:
    import csv

    try:
        with path.open(newline="") as f:
            rows = list(csv.DictReader(f))
    except (OSError, UnicodeDecodeError, csv.Error) as e:
        raise DataError(f"{path}: cannot read the image list ({e})") from None
    if not rows or not {"path", "class"} <= set(rows[0]):
        raise DataError(f"{path}: expected a CSV with columns path and class")
    short = next((i for i, r in enumerate(rows, start=2) if not r["path"] or r["class"] is None), None)
    if short is not None:
        raise DataError(f"{path}: line {short} has no path or no class")
    paths = [Path(r["path"]) if Path(r["path"]).is_absolute() else path.parent / r["path"] for r in rows]
    return paths, [r["class"] for r in rows]
