"""The three detection layouts parsed into :class:`LabelEntry` records (internal to
:mod:`defectlite.tasks.detect.readers`).

Each ``read_<format>(root, classes)`` returns (the layout's class order or None, entries, bad files);
the image-size, box and class checks common to all layouts happen in :mod:`defectlite.tasks.detect.readers`,
whose module docstring describes the layouts, the coordinate convention and the errors.
"""

from __future__ import annotations

import json
import re
import xml.etree.ElementTree as ET
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import yaml

from defectlite.data.readers import SPLIT_NAMES, is_image
from defectlite.errors import DataError

_VOC_DIRS = (("images", "annotations"), ("JPEGImages", "Annotations"))
YOLO_NAME_FILES = ("data.yaml", "classes.txt", "obj.names")
Bad = list[tuple[str, str]]  # (file, reason) of each unusable file


class BadFile(Exception):
    """A file that cannot be used: (file, reason), raised inside the readers, reported by the caller."""

    def __init__(self, file: Path | str, reason: str) -> None:
        super().__init__(file, reason)
        self.file, self.reason = str(file), reason


@dataclass
class LabelEntry:
    """One image and its boxes as the layout states them, before the size, box and class checks."""

    path: Path
    source: Path  # the label file, named in errors
    names: list[str]  # class name per box
    boxes: np.ndarray  # float64 (n, 4) xyxy, in pixels or (normalised) in [0, 1]
    where: list[str]  # how to name each box in errors ("object 2", "line 3", "annotation 17")
    size: tuple[int, int] | None = None  # (W, H) the label file states
    split: str | None = None
    normalised: bool = False
    context: str = ""  # prefix of error reasons (COCO: which image of the JSON)


def _pair(img_dir: Path, label_dir: Path, suffix: str, bad: Bad) -> list[tuple[Path, Path]]:
    """(image, label file) pairs of two folders by file stem; unpaired or ambiguous files go to ``bad``."""
    images: dict[str, list[Path]] = {}
    for p in filter(is_image, _listing(img_dir)):
        images.setdefault(p.stem, []).append(p)
    labels = {p.stem: p for p in _listing(label_dir) if p.suffix.lower() == suffix and _is_label_file(p)}
    pairs = []
    for stem, found in images.items():
        if stem not in labels:
            bad.extend((str(p), f"no label file {label_dir / (stem + suffix)}") for p in found)
        elif len(found) > 1:
            bad.append((str(labels[stem]), f"several images share its stem: {', '.join(p.name for p in found)}"))
        else:
            pairs.append((found[0], labels[stem]))
    bad.extend((str(p), f"no image named {stem}.* in {img_dir}") for stem, p in labels.items() if stem not in images)
    return pairs


def _listing(folder: Path) -> list[Path]:
    return sorted(folder.iterdir()) if folder.is_dir() else []


def _is_label_file(p: Path) -> bool:
    return p.is_file() and p.name not in YOLO_NAME_FILES and not p.name.startswith(".")


def voc_dirs(root: Path) -> tuple[Path, Path] | None:
    """(image folder, annotation folder) of a VOC layout under ``root``, or None."""
    for img, ann in _VOC_DIRS:
        if (root / img).is_dir() and (root / ann).is_dir() and any((root / ann).glob("*.xml")):
            return root / img, root / ann
    return None


def read_voc(root: Path, classes: Sequence[str] | None) -> tuple[None, list[LabelEntry], Bad]:
    """Pascal VOC XML beside its images; no class order of its own (None: sorted by the caller)."""
    dirs = voc_dirs(root)
    if dirs is None:
        raise DataError(f"{root}: no VOC layout (images/ + annotations/*.xml, or JPEGImages/ + Annotations/*.xml)")
    bad: Bad = []
    entries = []
    for img, xml in _pair(*dirs, ".xml", bad):
        try:
            entries.append(_parse_voc(xml, img))
        except BadFile as b:
            bad.append((b.file, b.reason))
    return None, entries, bad


def _parse_voc(xml: Path, img: Path) -> LabelEntry:
    try:
        data = xml.read_bytes()
    except OSError as e:
        raise BadFile(xml, f"cannot read ({e.strerror or e})") from None
    if b"<!DOCTYPE" in data or b"<!ENTITY" in data:
        raise BadFile(xml, "DTD / entity declarations are refused in annotation files")
    try:
        ann = ET.fromstring(data)
    except ET.ParseError as e:
        raise BadFile(xml, f"not well-formed XML ({e})") from None
    if ann.tag != "annotation":
        raise BadFile(xml, f"root element is <{ann.tag}>, expected <annotation> (Pascal VOC)")
    try:
        w, h = int(ann.findtext("size/width") or 0), int(ann.findtext("size/height") or 0)
    except ValueError:
        raise BadFile(xml, "<size> holds a non-integer width or height") from None
    names, boxes, where = [], [], []
    for i, obj in enumerate(ann.findall("object"), start=1):
        name = (obj.findtext("name") or "").strip()
        try:
            boxes.append([float(obj.findtext(f"bndbox/{k}") or "") for k in ("xmin", "ymin", "xmax", "ymax")])
        except ValueError:
            raise BadFile(xml, f"object {i} lacks a numeric <bndbox> xmin/ymin/xmax/ymax") from None
        if not name:
            raise BadFile(xml, f"object {i} has no <name>")
        names.append(name)
        where.append(f"object {i}")
    size = (w, h) if w > 0 and h > 0 else None
    return LabelEntry(img, xml, names, np.array(boxes, np.float64).reshape(-1, 4), where, size)


def _yolo_names(root: Path, classes: Sequence[str] | None) -> list[str]:
    found: list[tuple[Path, list[str]]] = []
    for f in (folder / name for folder in (root, root / "labels") for name in YOLO_NAME_FILES):
        if f.is_file():
            found.append((f, _names_in(f)))
    if not found:
        if classes is None:
            raise DataError(f"{root}: no class names for the YOLO labels (add data.yaml, classes.txt or obj.names)")
        return list(classes)
    for f, names in found[1:]:
        if names != found[0][1]:
            raise DataError(f"{f} and {found[0][0]} name different classes: {names} vs {found[0][1]}")
    return found[0][1]


def _names_in(f: Path) -> list[str]:
    try:
        if f.suffix == ".yaml":
            names = (yaml.safe_load(f.read_text()) or {}).get("names")
            if isinstance(names, dict) and sorted(names) == list(range(len(names))):
                names = [names[i] for i in range(len(names))]
        else:
            names = [line.strip() for line in f.read_text().splitlines() if line.strip()]
    except (OSError, UnicodeDecodeError, yaml.YAMLError, AttributeError) as e:
        raise DataError(f"{f}: cannot read the class names ({e})") from None
    if not isinstance(names, list) or not names or len(set(map(str, names))) != len(names):
        raise DataError(
            f"{f}: expected distinct class names (YAML: names as a list or {{0: name, ...}}), got {names!r}"
        )
    return [str(n) for n in names]


def read_yolo(root: Path, classes: Sequence[str] | None) -> tuple[list[str], list[LabelEntry], Bad]:
    """YOLO txt labels (normalised boxes) and the names list, in ``images/`` + ``labels/`` and their split folders."""
    names = _yolo_names(root, classes)
    img_dir, lbl_dir = root / "images", root / "labels"
    if not img_dir.is_dir():
        raise DataError(f"{root}: the YOLO layout needs an images/ folder (and labels/ beside it)")
    folders = [(img_dir, lbl_dir, None)] + [
        (d, lbl_dir / d.name, SPLIT_NAMES[d.name.lower()])
        for d in sorted(img_dir.iterdir())
        if d.is_dir() and d.name.lower() in SPLIT_NAMES
    ]
    bad: Bad = []
    entries = []
    for images, labels, split in folders:
        for img, txt in _pair(images, labels, ".txt", bad):
            try:
                entries.append(_parse_yolo(txt, img, names, split))
            except BadFile as b:
                bad.append((b.file, b.reason))
    return names, entries, bad


def _parse_yolo(txt: Path, img: Path, names: list[str], split: str | None) -> LabelEntry:
    try:
        lines = txt.read_text().splitlines()
    except (OSError, UnicodeDecodeError) as e:
        raise BadFile(txt, f"cannot read ({e})") from None
    cls, boxes, where = [], [], []
    for n, line in enumerate(lines, start=1):
        if not line.strip():
            continue
        parts = line.split()
        try:
            k, (xc, yc, w, h) = float(parts[0]), map(float, parts[1:])
        except ValueError:
            raise BadFile(txt, f"line {n}: expected 'class x_c y_c w h' (5 numbers), got {line.strip()!r}") from None
        if not k.is_integer() or not 0 <= k < len(names):
            raise BadFile(
                txt, f"line {n}: class index {parts[0]} is not one of 0..{len(names) - 1} ({len(names)} names)"
            )
        cls.append(names[int(k)])
        boxes.append([xc - w / 2, yc - h / 2, xc + w / 2, yc + h / 2])
        where.append(f"line {n}")
    return LabelEntry(img, txt, cls, np.array(boxes, np.float64).reshape(-1, 4), where, split=split, normalised=True)


def coco_files(root: Path) -> list[Path]:
    """``annotations.json`` and ``instances_*.json`` in ``root`` and ``root/annotations``, sorted."""
    out = []
    for folder in (root, root / "annotations"):
        if folder.is_dir():
            out += sorted(
                p
                for p in folder.iterdir()
                if p.is_file() and (p.name == "annotations.json" or re.fullmatch(r"instances_.+\.json", p.name))
            )
    return out


def read_coco(root: Path, classes: Sequence[str] | None) -> tuple[list[str], list[LabelEntry], Bad]:
    """Every COCO file of ``root`` (their categories must agree); class order = category ids sorted."""
    files = coco_files(root)
    if not files:
        raise DataError(f"{root}: no COCO annotation file (annotations.json or instances_*.json)")
    bad: Bad = []
    categories: dict[int, str] | None = None
    entries: list[LabelEntry] = []
    for f in files:
        try:
            cats, found = _parse_coco(f, root, bad)
        except BadFile as b:
            bad.append((b.file, b.reason))
            continue
        if categories is not None and cats != categories:
            bad.append((str(f), f"its categories differ from those of {files[0].name}: {cats} vs {categories}"))
            continue
        categories = cats
        entries += found
    order = [categories[i] for i in sorted(categories)] if categories else []
    return order, entries, bad


def _parse_coco(f: Path, root: Path, bad: Bad) -> tuple[dict[int, str], list[LabelEntry]]:
    try:
        data = json.loads(f.read_bytes())
        cats = {int(c["id"]): str(c["name"]) for c in data["categories"]}
        images = {int(i["id"]): i for i in data["images"]}
        anns = list(data.get("annotations") or [])
        if not all(isinstance(a, dict) for a in anns):
            raise TypeError("annotations must be objects")
    except (OSError, ValueError, KeyError, TypeError, AttributeError) as e:
        raise BadFile(
            f, f"not a readable COCO file: needs images, categories, annotations ({type(e).__name__}: {e})"
        ) from None
    if len(set(cats.values())) != len(cats):
        raise BadFile(f, f"category names repeat: {sorted(cats.values())}")
    stem = re.sub(r"\d+$", "", f.stem.removeprefix("instances_")).lower()
    split = SPLIT_NAMES.get(stem) if f.name != "annotations.json" else None
    per_image: dict[int, list[dict]] = {i: [] for i in images}
    for a in anns:
        if not isinstance(a.get("image_id"), (int, str)) or a.get("image_id") not in per_image:
            bad.append((str(f), f"annotation {a.get('id')} refers to unknown image_id {a.get('image_id')!r}"))
        elif not a.get("iscrowd"):
            per_image[a["image_id"]].append(a)
    bases = list(dict.fromkeys([f.parent, f.parent / "images", root, root / "images"]))
    entries = []
    for image_id, info in images.items():
        name = str(info.get("file_name", ""))
        context = f"image {name!r} (id {image_id}): "
        path = next((b / name for b in bases if name and (b / name).is_file()), None)
        if path is None:
            bad.append((str(f), f"{context}file not found under {', '.join(map(str, bases))}"))
            continue
        try:
            boxes = [[float(v) for v in a["bbox"]] for a in per_image[image_id]]
            if any(len(b) != 4 for b in boxes):
                raise ValueError("bbox needs 4 numbers")
            labels = [cats.get(int(a["category_id"]), f"category_id {a['category_id']}") for a in per_image[image_id]]
            size = (int(info["width"]), int(info["height"])) if "width" in info and "height" in info else None
        except (KeyError, TypeError, ValueError) as e:
            bad.append((str(f), f"{context}malformed annotation ({type(e).__name__}: {e})"))
            continue
        xyxy = np.array([[x, y, x + w, y + h] for x, y, w, h in boxes], np.float64).reshape(-1, 4)
        where = [f"annotation {a.get('id')}" for a in per_image[image_id]]
        entries.append(LabelEntry(path, f, labels, xyxy, where, size, split, context=context))
    return cats, entries
