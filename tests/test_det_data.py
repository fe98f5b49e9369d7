"""Detection data: VOC / YOLO / COCO readers, bad-file errors, anchors, box augmentation and the loader, on NEU-DET."""

from __future__ import annotations

import csv
import json
import os
import re
from pathlib import Path

import numpy as np
import pytest
import torch
from torchvision.ops import box_iou

from conftest import NEU_CLASSES, data_root
from defectlite.data.transforms import to_uint8
from defectlite.errors import ConfigError, DataError
from defectlite.tasks.detect.anchors import anchor_fit, kmeans_anchors, wh_iou
from defectlite.tasks.detect.augment import DetAugment, keep_boxes, mosaic
from defectlite.tasks.detect.dataset import NEGATIVE_CLASS, DetDataset, collate, prepare_detection, read_det_splits
from defectlite.tasks.detect.readers import DetIndex, detect_det_format, read_detection

# two images per class plus scratches_108, whose XML holds 1 scratches and 3 inclusion boxes
NEU_STEMS = [f"{c}_{n}" for c in NEU_CLASSES for n in (1, 2)] + ["scratches_108"]


def neu_det() -> Path:
    return data_root() / "neu-surface-defect"


def link_neu_det(dest: Path, stems=NEU_STEMS) -> Path:
    """Symlink NEU-DET images and their XML into ``dest/images`` + ``dest/annotations`` (VOC layout)."""
    for sub in ("images", "annotations"):
        (dest / sub).mkdir(parents=True, exist_ok=True)
    for s in stems:
        os.symlink(neu_det() / "images" / f"{s}.jpg", dest / "images" / f"{s}.jpg")
        os.symlink(neu_det() / "annotations" / f"{s}.xml", dest / "annotations" / f"{s}.xml")
    return dest


def edited_voc(dest: Path, stem: str, new_stem: str, edit) -> Path:
    """Add ``new_stem`` to a VOC tree: NEU image ``stem`` linked under the new name, its XML passed through ``edit``."""
    os.symlink(neu_det() / "images" / f"{stem}.jpg", dest / "images" / f"{new_stem}.jpg")
    xml = dest / "annotations" / f"{new_stem}.xml"
    xml.write_text(edit((neu_det() / "annotations" / f"{stem}.xml").read_text()))
    return xml


def first_box(xml: str, **values: float) -> str:
    """Replace the first object's <xmin> ... <ymax> with ``values``."""
    for k, v in values.items():
        xml = re.sub(f"<{k}>[^<]*</{k}>", f"<{k}>{v}</{k}>", xml, count=1)
    return xml


def to_yolo(index: DetIndex, dest: Path, names: list[str], split_of=None) -> Path:
    """Write ``index`` as a YOLO tree (images linked, labels normalised, ``classes.txt`` in the order ``names``)."""
    for s in index.samples:
        sub = f"/{split_of(s)}" if split_of else ""
        (dest / f"images{sub}").mkdir(parents=True, exist_ok=True)
        (dest / f"labels{sub}").mkdir(parents=True, exist_ok=True)
        os.symlink(s.path, dest / f"images{sub}" / s.path.name)
        lines = []
        for (x1, y1, x2, y2), k in zip(s.boxes, s.labels):
            xc, yc, w, h = (x1 + x2) / 2 / s.width, (y1 + y2) / 2 / s.height, (x2 - x1) / s.width, (y2 - y1) / s.height
            lines.append(f"{names.index(index.classes[k])} {xc:.6f} {yc:.6f} {w:.6f} {h:.6f}")
        (dest / f"labels{sub}" / f"{s.path.stem}.txt").write_text("\n".join(lines) + "\n")
    (dest / "classes.txt").write_text("\n".join(names) + "\n")
    return dest


def to_coco(index: DetIndex, dest: Path, cat_ids: dict[str, int], json_name="annotations.json", samples=None) -> Path:
    """Write ``index`` (or ``samples`` of it) as COCO: images linked into ``dest/images``, ``dest/<json_name>``."""
    (dest / "images").mkdir(parents=True, exist_ok=True)
    images, anns = [], []
    for i, s in enumerate(samples if samples is not None else index.samples):
        os.symlink(s.path, dest / "images" / s.path.name)
        images.append({"id": i + 1, "file_name": s.path.name, "width": s.width, "height": s.height})
        for (x1, y1, x2, y2), k in zip(s.boxes.tolist(), s.labels):
            cat = cat_ids[index.classes[k]]
            anns.append(
                {"id": len(anns) + 1, "image_id": i + 1, "category_id": cat, "bbox": [x1, y1, x2 - x1, y2 - y1]}
            )
    cats = [{"id": v, "name": k} for k, v in cat_ids.items()]
    (dest / json_name).write_text(json.dumps({"images": images, "annotations": anns, "categories": cats}))
    return dest


def by_name(index: DetIndex) -> dict[str, tuple[np.ndarray, list[str]]]:
    return {s.path.name: (s.boxes, [index.classes[k] for k in s.labels]) for s in index.samples}


@pytest.fixture(scope="module")
def voc_tree(tmp_path_factory) -> Path:
    return link_neu_det(tmp_path_factory.mktemp("voc"))


# ---------------------------------------------------------------- readers


def test_voc_reader_takes_each_box_class_from_the_xml(voc_tree):
    index = read_detection(voc_tree)
    assert index.format == "voc" and index.classes == NEU_CLASSES and not index.skipped
    assert [s.path.stem for s in index.samples] == sorted(NEU_STEMS)
    s = {s.path.stem: s for s in index.samples}
    assert s["crazing_1"].boxes.tolist() == [[2, 2, 193, 194]]  # the XML's corners, unshifted
    assert (s["crazing_1"].width, s["crazing_1"].height) == (200, 200)
    mixed = s["scratches_108"]
    assert sorted(index.classes[k] for k in mixed.labels) == ["inclusion"] * 3 + ["scratches"]
    assert index.dominant_labels()[index.samples.index(mixed)] == NEU_CLASSES.index("inclusion")
    assert sum(index.box_counts().values()) == sum(len(x.labels) for x in index.samples)
    assert mixed.boxes.dtype == np.float32 and mixed.labels.dtype == np.int64 and not mixed.boxes.flags.writeable


def test_full_neu_det_box_counts_match_its_readme(shared_data):
    index = read_detection(shared_data / "neu-surface-defect")
    assert len(index.samples) == 1800 and not index.skipped
    counts = dict(zip(NEU_CLASSES, (689, 1011, 881, 432, 628, 548)))
    assert index.box_counts() == counts  # by the XML <name>, 188 of them differ from the file prefix


def test_yolo_reader_keeps_the_names_file_order(voc_tree, tmp_path):
    voc = read_detection(voc_tree)
    names = NEU_CLASSES[::-1]  # not sorted: the layout's order must be kept
    yolo = read_detection(to_yolo(voc, tmp_path / "yolo", names))
    assert yolo.format == "yolo" and yolo.classes == names and yolo.samples[0].split is None
    a, b = by_name(voc), by_name(yolo)
    assert a.keys() == b.keys()
    for name, (boxes, classes) in a.items():
        assert b[name][1] == classes
        np.testing.assert_allclose(b[name][0], boxes, atol=1e-3)


def test_yolo_split_folders_and_data_yaml(voc_tree, tmp_path):
    voc = read_detection(voc_tree)
    root = to_yolo(
        voc, tmp_path / "yolo", NEU_CLASSES, split_of=lambda s: "val" if s.path.stem.endswith("_2") else "train"
    )
    (root / "classes.txt").unlink()
    (root / "data.yaml").write_text("path: .\nnames:\n" + "".join(f"  {i}: {c}\n" for i, c in enumerate(NEU_CLASSES)))
    index = read_detection(root)
    assert index.presplit and index.classes == NEU_CLASSES
    assert {s.path.stem: s.split for s in index.samples}["crazing_2"] == "val"
    assert sum(s.split == "train" for s in index.samples) == 7


def test_coco_reader_orders_classes_by_category_id(voc_tree, tmp_path):
    voc = read_detection(voc_tree)
    cat_ids = {c: 20 - i for i, c in enumerate(NEU_CLASSES)}  # ids descend as names ascend
    coco = read_detection(to_coco(voc, tmp_path / "coco", cat_ids))
    assert coco.format == "coco" and coco.classes == NEU_CLASSES[::-1]
    a, b = by_name(voc), by_name(coco)
    for name, (boxes, classes) in a.items():
        assert b[name][1] == classes
        np.testing.assert_allclose(b[name][0], boxes, atol=1e-4)


def test_coco_instances_files_set_the_split(voc_tree, tmp_path):
    voc = read_detection(voc_tree)
    cat_ids = {c: i + 1 for i, c in enumerate(NEU_CLASSES)}
    root = tmp_path / "coco"
    to_coco(voc, root, cat_ids, "instances_train2017.json", voc.samples[:9])
    to_coco(voc, root, cat_ids, "instances_val2017.json", voc.samples[9:])
    (root / "annotations").mkdir()
    for f in root.glob("*.json"):
        f.rename(root / "annotations" / f.name)  # the COCO habit; files stay relative to <root>/images
    index = read_detection(root)
    assert index.presplit and [s.split for s in index.samples].count("val") == len(voc.samples) - 9


def test_auto_detection_and_format_override(voc_tree, tmp_path):
    assert detect_det_format(voc_tree) == "voc"
    voc = read_detection(voc_tree)
    assert detect_det_format(to_yolo(voc, tmp_path / "y", NEU_CLASSES)) == "yolo"
    assert detect_det_format(to_coco(voc, tmp_path / "c", {c: i for i, c in enumerate(NEU_CLASSES)})) == "coco"
    both = to_yolo(voc, tmp_path / "both", NEU_CLASSES)
    os.symlink(voc_tree / "annotations", both / "annotations")
    with pytest.raises(DataError, match="several detection layouts \\(voc, yolo\\)"):
        detect_det_format(both)
    assert read_detection(both, format="yolo").format == "yolo"
    (tmp_path / "empty").mkdir()
    with pytest.raises(DataError, match="no detection layout"):
        read_detection(tmp_path / "empty")
    with pytest.raises(ConfigError, match="unknown detection data format 'pascal'"):
        read_detection(voc_tree, format="pascal")


def test_classes_argument_sets_the_order_and_rejects_others(voc_tree):
    index = read_detection(voc_tree, classes=NEU_CLASSES[::-1])
    assert index.classes == NEU_CLASSES[::-1]
    crazing = next(s for s in index.samples if s.path.stem == "crazing_1")
    assert crazing.labels.tolist() == [5]
    with pytest.raises(DataError, match=r"scratches_108.xml: object 2 has class 'inclusion', not one of"):
        read_detection(voc_tree, classes=[c for c in NEU_CLASSES if c != "inclusion"])
    with pytest.raises(ConfigError, match="distinct"):
        read_detection(voc_tree, classes=["a", "a"])


def test_negatives_are_valid_images_without_boxes(tmp_path):
    root = link_neu_det(tmp_path / "voc", NEU_STEMS[:4])
    edited_voc(root, "crazing_1", "crazing_900", lambda t: re.sub(r"<object>.*</object>", "", t, flags=re.S))
    index = read_detection(root)
    neg = next(s for s in index.samples if s.path.stem == "crazing_900")
    assert neg.boxes.shape == (0, 4) and neg.labels.shape == (0,)
    assert index.dominant_labels()[index.samples.index(neg)] == len(index.classes)
    yolo = to_yolo(index, tmp_path / "yolo", index.classes)
    assert (yolo / "labels" / "crazing_900.txt").read_text().strip() == ""
    assert read_detection(yolo).dominant_labels() == index.dominant_labels()


BAD_VOC = {  # how the copy of crazing_1.xml is broken -> what the error must say
    "outside": (
        lambda t: first_box(t, xmax=250),
        "object 1 (crazing) [2, 2, 250, 194] lies outside the 200 x 200 image",
    ),
    "beyond_tolerance": (lambda t: first_box(t, ymax=201.5), "lies outside the 200 x 200 image (tolerance 1 px)"),
    "zero_area": (lambda t: first_box(t, xmin=50, xmax=50), "[50, 2, 50, 194] has zero or negative area"),
    "negative_area": (lambda t: first_box(t, ymin=90, ymax=40), "has zero or negative area"),
    "not_a_number": (lambda t: first_box(t, xmin="left"), "object 1 lacks a numeric <bndbox>"),
    "no_name": (lambda t: t.replace("<name>crazing</name>", ""), "object 1 has no <name>"),
    "truncated_xml": (lambda t: t[: len(t) // 2], "not well-formed XML"),
    "entities": (lambda t: '<!DOCTYPE a [<!ENTITY c "crazing">]>\n' + t, "DTD / entity declarations are refused"),
    "size_mismatch": (lambda t: t.replace("<width>200</width>", "<width>300</width>"), "states 300 x 200 pixels"),
}


@pytest.mark.parametrize("kind", BAD_VOC)
def test_each_bad_voc_file_is_named_or_skipped(tmp_path, kind):
    root = link_neu_det(tmp_path, NEU_STEMS[:4])
    edit, reason = BAD_VOC[kind]
    xml = edited_voc(root, "crazing_1", "crazing_900", edit)
    with pytest.raises(DataError) as err:
        read_detection(root)
    assert f"{xml}: " in str(err.value) and reason in str(err.value) and "--skip-bad" in str(err.value)
    index = read_detection(root, skip_bad=True)
    assert [f for f, _ in index.skipped] == [str(xml)] and reason in index.skipped[0][1]
    assert [s.path.stem for s in index.samples] == NEU_STEMS[:4]


def test_a_corner_within_one_pixel_is_clipped(tmp_path):
    root = link_neu_det(tmp_path, NEU_STEMS[:2])
    edited_voc(root, "crazing_1", "crazing_900", lambda t: first_box(t, xmin=-0.5, xmax=201))
    s = next(s for s in read_detection(root).samples if s.path.stem == "crazing_900")
    assert s.boxes.tolist() == [[0, 2, 200, 194]]


def test_unpaired_images_and_label_files_are_listed(tmp_path):
    root = link_neu_det(tmp_path, NEU_STEMS[:4])
    os.symlink(neu_det() / "images" / "patches_7.jpg", root / "images" / "patches_7.jpg")
    orphan = root / "annotations" / "patches_8.xml"
    os.symlink(neu_det() / "annotations" / "patches_8.xml", orphan)
    with pytest.raises(DataError, match="2 bad detection file") as err:
        read_detection(root)
    assert f"{root / 'images' / 'patches_7.jpg'}: no label file {root / 'annotations' / 'patches_7.xml'}" in str(
        err.value
    )
    index = read_detection(root, skip_bad=True)
    assert {f for f, _ in index.skipped} == {str(root / "images" / "patches_7.jpg"), str(orphan)}
    assert "no image named patches_8.* in" in dict(index.skipped)[str(orphan)]
    assert len(index.samples) == 4


def test_bad_yolo_labels_are_named(voc_tree, tmp_path):
    root = to_yolo(read_detection(voc_tree), tmp_path / "yolo", NEU_CLASSES)
    (root / "labels" / "crazing_1.txt").write_text("6 0.5 0.5 0.2 0.2\n")
    (root / "labels" / "crazing_2.txt").write_text("0 0.5 0.5 0.2\n")
    (root / "labels" / "inclusion_1.txt").write_text("1 0.95 0.5 0.2 0.2\n")  # x2 = 1.05 * 200 = 210 px
    index = read_detection(root, skip_bad=True)
    reasons = {Path(f).name: why for f, why in index.skipped}
    assert reasons["crazing_1.txt"] == "line 1: class index 6 is not one of 0..5 (6 names)"
    assert reasons["crazing_2.txt"].startswith("line 1: expected 'class x_c y_c w h' (5 numbers)")
    assert "line 1 (inclusion) [170, 80, 210, 120] lies outside the 200 x 200 image" in reasons["inclusion_1.txt"]
    assert len(index.samples) == len(NEU_STEMS) - 3
    (root / "classes.txt").unlink()
    with pytest.raises(DataError, match="no class names for the YOLO labels"):
        read_detection(root)


def test_bad_coco_files_are_named(voc_tree, tmp_path):
    voc = read_detection(voc_tree)
    cat_ids = {c: i + 1 for i, c in enumerate(NEU_CLASSES)}
    root = to_coco(voc, tmp_path / "coco", cat_ids, "instances_train.json", voc.samples[:6])
    (root / "images" / voc.samples[0].path.name).unlink()
    (root / "instances_val.json").write_text('{"images": [')
    with pytest.raises(DataError) as err:
        read_detection(root)
    msg = str(err.value)
    assert f"{root / 'instances_val.json'}: not a readable COCO file" in msg
    assert f"{root / 'instances_train.json'}: image '{voc.samples[0].path.name}' (id 1): file not found" in msg
    index = read_detection(root, skip_bad=True)
    assert len(index.skipped) == 2 and len(index.samples) == 5 and index.classes == NEU_CLASSES


# ---------------------------------------------------------------- anchors

YOLO_ANCHORS_416 = np.array(
    [(10, 13), (16, 30), (33, 23), (30, 61), (62, 45), (59, 119), (116, 90), (156, 198), (373, 326)]
)


@pytest.fixture(scope="module")
def neu_wh_416(shared_data) -> np.ndarray:
    """Widths and heights of all 4,189 NEU-DET boxes at a 416 px input."""
    boxes = np.concatenate([s.boxes for s in read_detection(shared_data / "neu-surface-defect").samples])
    return (boxes[:, 2:] - boxes[:, :2]) * 416 / 200


def test_kmeans_anchors_are_deterministic_and_sorted(neu_wh_416):
    a = kmeans_anchors(neu_wh_416, k=9, seed=0)
    assert a.shape == (9, 2) and a.dtype == np.float32
    assert np.array_equal(a, kmeans_anchors(neu_wh_416, k=9, seed=0))
    assert not np.array_equal(a, kmeans_anchors(neu_wh_416[::2], k=9, seed=0))  # other data, other anchors
    assert np.all(np.diff(a.prod(1)) >= 0)
    fit = anchor_fit(neu_wh_416, a)
    default = anchor_fit(neu_wh_416, YOLO_ANCHORS_416)
    # measured: mean best IoU 0.68 (default YOLO anchors 0.57), every box within ratio 4 of some anchor
    assert 0.6 < fit["mean_best_iou"] < 0.8 and fit["mean_best_iou"] > default["mean_best_iou"] + 0.05
    assert fit["coverage"] > 0.99 and 0.8 < fit["coverage_iou50"] <= 1.0 and fit["anchors_per_box"] >= 1


def test_kmeans_finds_planted_clusters():
    rng = np.random.default_rng(1)
    centres = np.array([[10, 40], [50, 12], [80, 80]])  # areas 400 < 600 < 6400: the sorted order
    wh = np.concatenate([c * rng.uniform(0.95, 1.05, (50, 2)) for c in centres])
    np.testing.assert_allclose(kmeans_anchors(wh, k=3, seed=5), centres, rtol=0.03)
    assert anchor_fit(wh, centres)["coverage_iou50"] == 1.0
    assert anchor_fit(wh, [[400, 400]])["coverage"] == 0.0  # every box > 4x smaller than the only anchor


def test_anchor_helpers_refuse_bad_input():
    assert wh_iou(np.array([[2.0, 4.0]]), np.array([[4.0, 2.0]]))[0, 0] == pytest.approx(4 / 12)
    with pytest.raises(DataError, match="not > 0"):
        kmeans_anchors(np.array([[3.0, 0.0], [1.0, 2.0]]), k=1)
    with pytest.raises(DataError, match="2 distinct box sizes cannot make 3 anchors"):
        kmeans_anchors(np.array([[3.0, 1.0], [1.0, 2.0], [3.0, 1.0]]), k=3)
    with pytest.raises(ConfigError, match="k >= 1"):
        kmeans_anchors(np.ones((4, 2)), k=0)


# ---------------------------------------------------------------- augmentation


def painted(h: int, w: int, rects=((30, 40, 90, 70),)):
    """A dark (20) uint8 image (1, h, w) with bright (230) rectangles, their boxes and labels 0, 1, ..."""
    img = torch.full((1, h, w), 20, dtype=torch.uint8)
    for x1, y1, x2, y2 in rects:
        img[:, y1:y2, x1:x2] = 230
    return img, torch.tensor(rects, dtype=torch.float32).reshape(-1, 4), torch.arange(len(rects))


def bright_box(img: torch.Tensor) -> torch.Tensor:
    """The bounding box (1, 4) of the pixels brighter than half-way between the image's min and max."""
    lo, hi = float(img.min()), float(img.max())
    ys, xs = torch.nonzero(img[0].float() > (lo + hi) / 2, as_tuple=True)
    return torch.tensor([[xs.min(), ys.min(), xs.max() + 1, ys.max() + 1]], dtype=torch.float32)


AUGMENTS = {
    "hflip": {"hflip": 1.0, "vflip": 0.0},
    "vflip": {"hflip": 0.0, "vflip": 1.0},
    "rot90": {"hflip": 0.0, "vflip": 0.0, "rot90": 1.0},
    "affine": {"hflip": 0.0, "vflip": 0.0, "scale": 0.4, "translate": 0.2},
    "colour": {"hflip": 0.0, "vflip": 0.0, "brightness": 0.3, "contrast": 0.3},
    "all": {"hflip": True, "vflip": True, "rot90": 0.5, "scale": 0.3, "translate": 0.1, "brightness": 0.2},
}


@pytest.mark.parametrize("size", [(120, 160), (128, 128)])
@pytest.mark.parametrize("name", AUGMENTS)
def test_boxes_stay_on_the_painted_defect(name, size):
    aug = DetAugment(**AUGMENTS[name])
    torch.manual_seed(0)
    for _ in range(8):
        img, boxes, labels = aug(*painted(*size))
        assert img.shape == (1, *size) and img.dtype == torch.uint8 and labels.tolist() == [0]
        assert box_iou(boxes, bright_box(img)).item() > 0.9


def test_augmentation_is_deterministic_under_the_torch_seed():
    aug = DetAugment(**AUGMENTS["all"])
    runs = []
    for _ in range(2):
        torch.manual_seed(7)
        runs.append([aug(*painted(128, 128)) for _ in range(4)])
    for a, b in zip(*runs):
        assert all(torch.equal(x, y) for x, y in zip(a, b))


def test_flips_and_rot90_map_neu_boxes_exactly(tmp_path):
    """On a real NEU-DET image: the pixels under each moved box are the original box's pixels, moved."""
    (sample,) = read_detection(link_neu_det(tmp_path, ["scratches_108"])).samples
    image = torch.tensor(to_uint8(sample.path, (sample.height, sample.width)))
    ops = {  # transform -> what it does to a pixel block
        "hflip": lambda x: x.flip(-1),
        "vflip": lambda x: x.flip(-2),
        **{f"rot{k * 90}": (lambda x, k=k: torch.rot90(x, k, (-2, -1))) for k in (1, 2, 3)},
    }
    seen = set()
    torch.manual_seed(0)
    for kw in [{"hflip": 1.0, "vflip": 0.0}, {"hflip": 0.0, "vflip": 1.0}] + [
        {"hflip": 0.0, "vflip": 0.0, "rot90": 1.0}
    ] * 12:
        out, boxes, labels = DetAugment(**kw)(image, sample.boxes, sample.labels)
        name = next(n for n, op in ops.items() if torch.equal(out, op(image)))
        seen.add(name)
        assert labels.tolist() == sample.labels.tolist()
        for (a1, b1, a2, b2), (x1, y1, x2, y2) in zip(sample.boxes.astype(int), boxes.int().tolist()):
            assert torch.equal(out[:, y1:y2, x1:x2], ops[name](image[:, b1:b2, a1:a2]))
    assert seen == set(ops)  # 12 rotations drew each of 90, 180, 270 degrees


def test_keep_boxes_clips_and_drops_degenerate_boxes():
    boxes = torch.tensor([[0, 0, 10, 10], [-5, 0, 5, 10], [-9.5, 0, 0.5, 10], [20, 20, 21.5, 60], [80, 80, 120, 120.0]])
    kept, labels = keep_boxes(
        boxes, (boxes[:, 2:] - boxes[:, :2]).prod(1), torch.arange(5), (0, 0, 100, 100), DetAugment()
    )
    # kept: inside; half inside (50 % of its area); dropped: 5 % inside, 1.5 px wide; kept: a quarter inside
    assert labels.tolist() == [0, 1, 4]
    assert kept.tolist() == [[0, 0, 10, 10], [0, 0, 5, 10], [80, 80, 100, 100]]


def test_mosaic_moves_each_tiles_box_with_it():
    """Only tile q is painted, with the same generator state each time: its box must cover its bright pixels."""
    rects = [
        (70, 70, 110, 100),
        (10, 75, 50, 120),
        (60, 5, 120, 40),
        (0, 0, 40, 30),
    ]  # some always show, some get cut off
    kept = 0
    for seed in range(6):
        for q in range(4):
            for rect in rects:
                tiles = [painted(128, 128, (rect,)) if j == q else painted(128, 128, ()) for j in range(4)]
                tiles[q][2][:] = q
                img, boxes, labels = mosaic(tiles, (128, 128), np.random.default_rng(seed))
                assert img.shape == (1, 128, 128) and img.dtype == torch.uint8
                bright = int((img > 125).sum())
                if len(boxes):
                    kept += 1
                    assert labels.tolist() == [q] and box_iou(boxes, bright_box(img)).item() > 0.9
                else:  # dropped: less than 10 % of the (scaled) rectangle showed
                    area = (rect[2] - rect[0]) * (rect[3] - rect[1])
                    assert bright < 0.1 * area + 2 * (rect[2] - rect[0] + rect[3] - rect[1])
    assert 0 < kept < 96  # both cases happen


def test_mosaic_and_options_are_checked():
    with pytest.raises(DataError, match="mosaic needs 4 images, got 3"):
        mosaic([painted(64, 64)] * 3, (64, 64), np.random.default_rng(0))
    with pytest.raises(ConfigError, match="hflip is a probability"):
        DetAugment(hflip=2)
    with pytest.raises(ConfigError, match=r"unknown detection augmentation option\(s\) \['mixup'\]"):
        DetAugment.from_dict({"hflip": 0.5, "mixup": 0.1})
    assert DetAugment(hflip=True, vflip=False).hflip == 0.5


# ---------------------------------------------------------------- split, decoded arrays, Dataset, collate


@pytest.fixture(scope="module")
def det_tree(tmp_path_factory) -> Path:
    """10 NEU-DET images per class, scratches_108 (mostly inclusion boxes) and one negative, VOC layout."""
    root = link_neu_det(tmp_path_factory.mktemp("det"), [f"{c}_{n}" for c in NEU_CLASSES for n in range(1, 11)])
    link_neu_det(root, ["scratches_108"])
    edited_voc(root, "crazing_11", "crazing_900", lambda t: re.sub(r"<object>.*</object>", "", t, flags=re.S))
    return root


def test_prepare_detection_scales_boxes_and_writes_the_split(det_tree, tmp_path):
    split_file = tmp_path / "run" / "splits.csv"
    data = prepare_detection(det_tree, size=(100, 120), seed=1, splits_csv=split_file, progress=False)
    index = read_detection(det_tree)
    assert data.images.shape == (62, 1, 100, 120) and data.images.dtype == np.uint8 and data.classes == NEU_CLASSES
    assert sum(data.counts().values()) == 62 and min(data.counts().values()) >= 5
    orig = {s.path.relative_to(det_tree).as_posix(): s for s in index.samples}
    for path, boxes, labels, size in zip(data.paths, data.boxes, data.box_labels, data.orig_sizes):
        np.testing.assert_allclose(boxes, orig[path].boxes * [0.6, 0.5, 0.6, 0.5], rtol=1e-6)
        assert labels.tolist() == orig[path].labels.tolist() and size == (200, 200)
    with split_file.open() as f:
        rows = {r["path"]: r for r in csv.DictReader(f)}
    assert list(next(iter(rows.values()))) == ["split", "label", "class", "path", "sha1"]
    assert rows["images/scratches_108.jpg"]["class"] == "inclusion"  # dominant box class, not the file prefix
    assert (rows["images/crazing_900.jpg"]["class"], rows["images/crazing_900.jpg"]["label"]) == (NEGATIVE_CLASS, "6")
    again = prepare_detection(det_tree, size=(100, 120), seed=99, splits_csv=split_file, progress=False)
    assert again.paths == data.paths and list(again.splits) == list(data.splits)
    samples, digests = read_det_splits(split_file, index)
    assert [s.split for s in samples] == list(data.splits) and all(len(d) == 40 for d in digests)
    images, boxes, labels = data.det_subset("val")
    assert len(images) == len(boxes) == len(labels) == data.counts()["val"]


def test_a_split_file_naming_a_lost_annotation_is_refused(tmp_path):
    root = link_neu_det(tmp_path / "voc", [f"{c}_{n}" for c in NEU_CLASSES for n in range(1, 6)])
    split_file = tmp_path / "splits.csv"
    prepare_detection(root, size=(32, 32), splits_csv=split_file, progress=False)
    (root / "annotations" / "patches_3.xml").unlink()
    with pytest.raises(
        DataError, match="splits.csv: lists 1 image.* without a usable annotation now, e.g. .*patches_3.jpg"
    ):
        prepare_detection(root, size=(32, 32), splits_csv=split_file, skip_bad=True, progress=False)


def test_leaks_across_folder_splits_are_found_and_dropped(voc_tree, tmp_path):
    voc = read_detection(voc_tree)
    root = to_yolo(
        voc, tmp_path / "yolo", NEU_CLASSES, split_of=lambda s: "val" if s.path.stem.endswith("_2") else "train"
    )
    os.symlink(neu_det() / "images" / "crazing_1.jpg", root / "images" / "val" / "copy_of_crazing_1.jpg")
    (root / "labels" / "val" / "copy_of_crazing_1.txt").write_text(
        (root / "labels" / "train" / "crazing_1.txt").read_text()
    )
    data = prepare_detection(root, size=(64, 64), drop_leaks=False, progress=False)
    assert [(leak.path, leak.duplicate_of) for leak in data.leaks] == [
        ("images/val/copy_of_crazing_1.jpg", "images/train/crazing_1.jpg")
    ]
    assert data.counts() == {"train": 7, "val": 7, "test": 0}  # the folders' split; no val carved from train
    dropped = prepare_detection(root, size=(64, 64), progress=False)  # dropped by default
    assert "images/val/copy_of_crazing_1.jpg" not in dropped.paths and dropped.counts()["val"] == 6


def test_dataset_mosaic_and_collate(det_tree):
    data = prepare_detection(det_tree, size=(96, 96), progress=False)
    images, boxes, labels = data.det_subset("train")
    plain = DetDataset(images, boxes, labels)
    img, b, y = plain[0]
    assert img.dtype == torch.uint8 and img.shape == (1, 96, 96) and torch.equal(img, torch.from_numpy(images[0]))
    assert torch.equal(b, torch.from_numpy(boxes[0])) and y.dtype == torch.int64
    ds = DetDataset(images, boxes, labels, DetAugment(hflip=0.5, scale=0.2, mosaic_prob=1.0))
    assert ds.mosaic_prob == 1.0
    torch.manual_seed(3)
    first = [ds[i] for i in range(6)]
    torch.manual_seed(3)
    assert all(torch.equal(a[1], c[1]) and torch.equal(a[0], c[0]) for a, c in zip(first, (ds[i] for i in range(6))))
    for img, b, y in first:
        assert img.shape == (1, 96, 96) and len(b) == len(y) and y.dtype == torch.int64
        assert (b[:, :2] >= 0).all() and (b[:, 2:] <= 96).all() and (b[:, 2:] > b[:, :2]).all()
    assert sum(len(b) for _, b, _ in first) > sum(len(b) for b in boxes[:6])  # 4 images' boxes per mosaic
    ds.mosaic_prob = 0.0  # the last epochs
    with pytest.raises(ConfigError, match="mosaic_prob must be in"):
        ds.mosaic_prob = 1.5
    torch.manual_seed(0)
    loader = torch.utils.data.DataLoader(ds, batch_size=5, collate_fn=collate)
    batch_images, targets = next(iter(loader))
    n_boxes = [len(b) for b in boxes[:5]]  # flips and a 20 % zoom keep NEU's large boxes
    assert batch_images.shape == (5, 1, 96, 96) and batch_images.dtype == torch.uint8
    assert targets.shape == (sum(n_boxes), 6) and targets.dtype == torch.float32
    assert targets[:, 0].tolist() == [float(i) for i, n in enumerate(n_boxes) for _ in range(n)]
    assert targets[:, 1].tolist() == [float(v) for y in labels[:5] for v in y]
    assert collate([(img, torch.zeros((0, 4)), torch.zeros(0, dtype=torch.int64))])[1].shape == (0, 6)
