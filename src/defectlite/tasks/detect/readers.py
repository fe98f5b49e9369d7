"""Readers that turn an object-detection data folder into images with boxes: Pascal VOC, YOLO, COCO.

Layouts (``format``):

- ``voc``: Pascal VOC XML, ``<root>/images/*.jpg`` + ``<root>/annotations/*.xml`` (NEU-DET) or
  ``<root>/JPEGImages/`` + ``<root>/Annotations/``, paired by file stem; the class of a box is its
  ``<name>`` (in NEU-DET 188 boxes name another class than their file's prefix). ``difficult`` and
  ``truncated`` boxes are kept as ordinary boxes.
- ``yolo``: ``<root>/images/`` + ``<root>/labels/`` with the same stems, one line
  ``class x_c y_c w h`` per box, normalised to [0, 1] by the image's width and height. Class names
  from ``data.yaml`` (``names:``, a list or a ``{index: name}`` map), ``classes.txt`` or ``obj.names``
  in ``<root>`` or ``<root>/labels`` (else from ``classes=``). Split folders
  ``images/{train,val,test}`` + ``labels/{train,val,test}`` set ``DetSample.split``.
- ``coco``: ``annotations.json`` or ``instances_<split>.json`` (the split from the name, as in
  ``instances_val2017.json``) in ``<root>`` or ``<root>/annotations``; ``bbox`` is ``[x, y, w, h]``;
  ``file_name`` is looked up relative to the JSON's folder, its ``images/``, ``<root>`` and
  ``<root>/images``. Crowd annotations (``iscrowd: 1``) are not boxes to train on and are left out.
- ``auto``: decide from what the folder holds (see :func:`detect_det_format`).

Coordinates: every box becomes ``x1, y1, x2, y2`` pixel corners in the image's own pixels,
``0 <= x1 < x2 <= W`` (a box covers the area between its corners, as in COCO). VOC's
``xmin, ymin, xmax, ymax`` are taken as these corners unchanged (the project's convention for
NEU-DET). The VOC devkit means 1-based inclusive pixel indices, i.e. corners ``xmin - 1 .. xmax``;
NEU-DET's values run from 1 to 200 = W, which fits that reading as well, so the choice moves
``x1, y1`` by at most 1 px, under the precision of its hand-drawn boxes. YOLO:
``x1 = (x_c - w / 2) * W``; COCO: ``[x, y, x + w, y + h]``. A corner up to
:data:`BOX_TOLERANCE_PX` outside the image is clipped to it (annotation tools round outward);
farther out is an error. The image size is read from each image's header (no decoding) and
must agree with the size a VOC or COCO file states.

Classes: the layout's own order where it has one (the YOLO names list, COCO categories by id),
else sorted by name (VOC); ``classes=`` imposes an order and rejects any other class name.

Errors: :class:`~defectlite.errors.DataError` naming each bad file and what is wrong: a box outside
the image or of zero area, an unknown class (``classes=`` given, or a YOLO index out of range),
an image without a label file or a label file without an image (VOC, YOLO; a COCO entry without
its image), unreadable XML / JSON / image header. With ``skip_bad`` these files are left out and
listed in :attr:`DetIndex.skipped`. A label file without boxes is a valid negative image (n = 0).
"""

from __future__ import annotations

import io
import logging
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from PIL import Image

from defectlite.data.cache import raise_bad_files
from defectlite.data.decode import read_image_file
from defectlite.errors import ConfigError, DataError
from defectlite.tasks.detect.layouts import BadFile, LabelEntry, coco_files, read_coco, read_voc, read_yolo, voc_dirs

log = logging.getLogger(__name__)
DET_FORMATS = ("auto", "voc", "yolo", "coco")
BOX_TOLERANCE_PX = 1.0  # corners this far outside the image are clipped to it; farther is an error


@dataclass(frozen=True)
class DetSample:
    """One image with its boxes.

    Attributes:
        path: the image file.
        boxes: float32 (n, 4) ``x1, y1, x2, y2`` pixel corners in the image's own pixels (read-only);
            n = 0 for a negative image.
        labels: int64 (n,) indices into ``DetIndex.classes`` (read-only).
        width, height: the image's size in pixels (from its header).
        split: ``train`` / ``val`` / ``test`` when the folder (or COCO file name) assigns it, else None.
    """

    path: Path
    boxes: np.ndarray
    labels: np.ndarray
    width: int
    height: int
    split: str | None = None


@dataclass
class DetIndex:
    """The annotated images of a detection data set, in a stable (sorted by path) order.

    Attributes:
        root: the data folder.
        format: the layout read (``voc``, ``yolo`` or ``coco``).
        classes: class names; ``DetSample.labels`` index this list.
        samples: every usable image, sorted by path.
        skipped: (file, reason) of each bad file left out under ``skip_bad``.
    """

    root: Path
    format: str
    classes: list[str]
    samples: list[DetSample]
    skipped: list[tuple[str, str]] = field(default_factory=list)

    @property
    def presplit(self) -> bool:
        """True when the folder assigns every sample to a split (YOLO split folders, COCO ``instances_<split>``)."""
        return bool(self.samples) and all(s.split is not None for s in self.samples)

    def dominant_labels(self) -> list[int]:
        """Per sample, its most frequent box class (ties: the lowest index), the key for stratified splits.

        Negative images (no boxes) get ``len(classes)``, a class of their own.
        """
        k = len(self.classes)
        return [int(np.bincount(s.labels, minlength=k).argmax()) if len(s.labels) else k for s in self.samples]

    def box_counts(self) -> dict[str, int]:
        """Boxes per class name."""
        n = np.zeros(len(self.classes), np.int64)
        for s in self.samples:
            n += np.bincount(s.labels, minlength=len(self.classes))
        return {c: int(v) for c, v in zip(self.classes, n)}


def detect_det_format(root: Path) -> str:
    """Guess the detection layout of ``root``.

    ``coco`` when ``annotations.json`` / ``instances_*.json`` lies in ``root`` or ``root/annotations``;
    ``voc`` when ``images/`` (or ``JPEGImages/``) sits beside ``annotations/`` (or ``Annotations/``)
    holding ``*.xml``; ``yolo`` when ``images/`` sits beside ``labels/``.

    Raises:
        DataError: ``root`` is missing or not a folder, fits no layout, or fits several.
    """
    root = Path(root)
    if not root.is_dir():
        raise DataError(f"data folder not found: {root}" if not root.exists() else f"data path is not a folder: {root}")
    found = [
        fmt
        for fmt, fits in (
            ("coco", bool(coco_files(root))),
            ("voc", voc_dirs(root) is not None),
            ("yolo", (root / "images").is_dir() and (root / "labels").is_dir()),
        )
        if fits
    ]
    if not found:
        raise DataError(
            f"{root}: no detection layout found (expected images/ + annotations/*.xml for VOC, images/ + labels/*.txt "
            "for YOLO, or annotations.json / instances_*.json for COCO)"
        )
    if len(found) > 1:
        raise DataError(f"{root}: fits several detection layouts ({', '.join(found)}); choose one with format=")
    return found[0]


def read_detection(
    root: str | Path, format: str = "auto", *, skip_bad: bool = False, classes: Sequence[str] | None = None
) -> DetIndex:
    """List the annotated images under ``root`` (layouts, coordinates and class order: see the module doc).

    Args:
        root: the data folder.
        format: ``auto`` (default), ``voc``, ``yolo`` or ``coco``.
        skip_bad: leave bad files out (listed in ``DetIndex.skipped``) instead of failing.
        classes: the class names in the order labels should index them; a box of another class is an
            error. For YOLO without a names file, the names of class indices 0, 1, ...

    Raises:
        ConfigError: ``format`` is unknown; ``classes`` is empty or repeats a name.
        DataError: the folder is missing or fits no layout; bad files (each named, with its problem)
            and ``skip_bad`` is False; no usable image is left.
    """
    root = Path(root).expanduser()
    if format not in DET_FORMATS:
        raise ConfigError(f"unknown detection data format {format!r}; choose one of {', '.join(DET_FORMATS)}")
    if classes is not None and (not classes or len(set(classes)) != len(classes)):
        raise ConfigError(f"classes must be distinct names, at least one; got {list(classes)}")
    fmt = detect_det_format(root) if format == "auto" else format
    if not root.is_dir():
        raise DataError(f"data folder not found: {root}")
    readers = {"voc": read_voc, "yolo": read_yolo, "coco": read_coco}
    layout_classes, entries, bad = readers[fmt](root, classes)
    return _finish(root, fmt, entries, bad, list(classes) if classes is not None else layout_classes, skip_bad)


def _finish(
    root: Path, fmt: str, entries: list[LabelEntry], bad: list[tuple[str, str]], order: list[str] | None, skip_bad: bool
) -> DetIndex:
    checked: list[tuple[LabelEntry, np.ndarray, int, int]] = []
    owner: dict[Path, Path] = {}
    for e in entries:
        try:
            if e.path in owner:
                raise BadFile(e.source, f"{e.context}image {e.path} is already annotated by {owner[e.path]}")
            w, h = _image_size(e)
            checked.append((e, _checked_boxes(e, w, h), w, h))
            owner[e.path] = e.source
        except BadFile as b:
            bad.append((b.file, b.reason))
    if order is None:
        order = sorted({n for e, *_ in checked for n in e.names})
    lookup = {c: i for i, c in enumerate(order)}
    samples = []
    for e, boxes, w, h in checked:
        unknown = [(where, n) for where, n in zip(e.where, e.names) if n not in lookup]
        if unknown:
            where, name = unknown[0]
            bad.append((str(e.source), f"{e.context}{where} has class {name!r}, not one of {order}"))
            continue
        labels = np.array([lookup[n] for n in e.names], dtype=np.int64)
        boxes.setflags(write=False)
        labels.setflags(write=False)
        samples.append(DetSample(e.path, boxes, labels, w, h, e.split))
    if bad and not skip_bad:
        raise_bad_files(bad, "bad detection file(s)")
    if bad:
        log.warning("%s: left out %d bad detection file(s)", root, len(bad))
    if not samples:
        raise DataError(f"{root}: no usable annotated image found ({fmt} layout)")
    return DetIndex(root, fmt, list(order), sorted(samples, key=lambda s: str(s.path)), bad)


def _image_size(e: LabelEntry) -> tuple[int, int]:
    try:
        data = read_image_file(e.path)  # a FIFO, folder or unreadable file named, never a hang
    except DataError as err:
        raise BadFile(e.path, str(err).removeprefix(f"{e.path}: ")) from None
    try:
        with Image.open(io.BytesIO(data)) as img:
            w, h = img.size
    except (OSError, ValueError, Image.DecompressionBombError) as err:
        raise BadFile(e.path, f"not a readable image ({err})") from None
    if e.size is not None and e.size != (w, h):
        raise BadFile(e.source, f"{e.context}states {e.size[0]} x {e.size[1]} pixels, but {e.path.name} is {w} x {h}")
    return w, h


def _checked_boxes(e: LabelEntry, w: int, h: int) -> np.ndarray:
    """Boxes in pixels, clipped within the tolerance; BadFile for a box outside the image or without area."""
    boxes = e.boxes * np.array([w, h, w, h], np.float64) if e.normalised else e.boxes
    tol = BOX_TOLERANCE_PX
    for where, name, (x1, y1, x2, y2) in zip(e.where, e.names, boxes):
        shown = f"{e.context}{where} ({name}) [{x1:g}, {y1:g}, {x2:g}, {y2:g}]"
        if not np.isfinite([x1, y1, x2, y2]).all():
            raise BadFile(e.source, f"{shown} has non-finite coordinates")
        if x1 < -tol or y1 < -tol or x2 > w + tol or y2 > h + tol:
            raise BadFile(e.source, f"{shown} lies outside the {w} x {h} image (tolerance {tol:g} px)")
        if min(x2, w) <= max(x1, 0) or min(y2, h) <= max(y1, 0):
            raise BadFile(e.source, f"{shown} has zero or negative area")
    out = np.clip(boxes, 0, [w, h, w, h]).astype(np.float32) if len(boxes) else np.zeros((0, 4), np.float32)
    return out.reshape(-1, 4)
