"""Detection metrics (COCO mAP, confusion matrix) and their report figures, on hand-made boxes."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pytest
from PIL import Image

from defectlite.errors import DataError
from defectlite.tasks.detect.metrics import box_iou, detection_metrics
from defectlite.tasks.detect.report import (
    render_det_markdown,
    write_det_confusion,
    write_det_grid,
    write_pr_curves,
)


@dataclass(frozen=True)
class Det:  # the shape of tasks.detect.decode.Detections, kept local so these tests do not depend on it
    boxes: np.ndarray
    scores: np.ndarray
    labels: np.ndarray


def det(*rows) -> Det:
    """Rows ``(x1, y1, x2, y2, score, label)``."""
    a = np.array(rows, dtype=np.float32).reshape(-1, 6)
    return Det(a[:, :4], a[:, 4], a[:, 5].astype(np.int64))


def gt(*rows) -> tuple[np.ndarray, np.ndarray]:
    """Rows ``(x1, y1, x2, y2, label)``."""
    a = np.array(rows, dtype=np.float32).reshape(-1, 5)
    return a[:, :4], a[:, 4].astype(np.int64)


# Hand case: 2 images of different, non-square sizes (H, W), classes a and b.
# Class a: 3 true boxes; detections by score: TP (exact), FP (on nothing), TP (exact), FP (duplicate, IoU 0.90)
#   -> precision 1, 1/2, 2/3, 1/2 at recall 1/3, 1/3, 2/3, 2/3 -> interpolated: 1 for r <= 1/3 (34 of the 101
#   recall points 0, 0.01, ..., 0.33), 2/3 for 1/3 < r <= 2/3 (33 points 0.34..0.66), 0 above:
#   AP = (34 + 33 * 2/3) / 101 = 56/101 at every IoU threshold (the TPs are exact, the duplicate is below 0.95 anyway).
# Class b: 1 true box, 1 detection at IoU 1240/2000 = 0.62: TP at IoU 0.5, 0.55, 0.6, FP from 0.65 on
#   -> AP50 = 1, AP75 = 0, AP = 3/10.
SIZES = [(100, 200), (120, 80)]
GTS = [gt((10, 10, 50, 50, 0), (100, 20, 150, 80, 0)), gt((5, 5, 40, 60, 0), (20, 70, 70, 110, 1))]
PREDS = [
    det((10, 10, 50, 50, 0.9, 0), (12, 12, 50, 50, 0.6, 0)),
    det((50, 5, 78, 40, 0.8, 0), (5, 5, 40, 60, 0.7, 0), (20, 70, 51, 110, 0.95, 1)),
]
AP_A = 56 / 101


def test_hand_case_matches_the_hand_computed_ap_and_the_evaluator_called_directly():
    m = detection_metrics(PREDS, GTS, ["a", "b"], SIZES)
    assert m["per_class"]["a"] == {"ap50": pytest.approx(AP_A), "ap": pytest.approx(AP_A), "n_gt": 3, "n_pred": 4}
    assert m["per_class"]["b"] == {"ap50": pytest.approx(1.0), "ap": pytest.approx(0.3), "n_gt": 1, "n_pred": 1}
    assert m["map50"] == pytest.approx((AP_A + 1) / 2)
    assert m["map"] == pytest.approx((AP_A + 0.3) / 2)
    assert m["map75"] == pytest.approx(AP_A / 2)
    assert (m["n_images"], m["n_gt"], m["n_pred"]) == (2, 4, 5)
    assert m["evaluator"]["name"] == "faster-coco-eval" and m["evaluator"]["max_dets"] == 100

    # the same case written out by hand in COCO format ([x, y, w, h], 1-based ids) and evaluated the documented way
    from faster_coco_eval import COCO, COCOeval_faster

    coco_gt = {
        "images": [{"id": 1, "width": 200, "height": 100}, {"id": 2, "width": 80, "height": 120}],
        "categories": [{"id": 1, "name": "a"}, {"id": 2, "name": "b"}],
        "annotations": [
            {"id": 1, "image_id": 1, "category_id": 1, "bbox": [10, 10, 40, 40], "area": 1600, "iscrowd": 0},
            {"id": 2, "image_id": 1, "category_id": 1, "bbox": [100, 20, 50, 60], "area": 3000, "iscrowd": 0},
            {"id": 3, "image_id": 2, "category_id": 1, "bbox": [5, 5, 35, 55], "area": 1925, "iscrowd": 0},
            {"id": 4, "image_id": 2, "category_id": 2, "bbox": [20, 70, 50, 40], "area": 2000, "iscrowd": 0},
        ],
    }
    results = [
        {"image_id": 1, "category_id": 1, "bbox": [10, 10, 40, 40], "score": 0.9},
        {"image_id": 1, "category_id": 1, "bbox": [12, 12, 38, 38], "score": 0.6},
        {"image_id": 2, "category_id": 1, "bbox": [50, 5, 28, 35], "score": 0.8},
        {"image_id": 2, "category_id": 1, "bbox": [5, 5, 35, 55], "score": 0.7},
        {"image_id": 2, "category_id": 2, "bbox": [20, 70, 31, 40], "score": 0.95},
    ]
    reference = COCO(coco_gt)
    ev = COCOeval_faster(reference, reference.loadRes(results), "bbox")
    ev.evaluate()
    ev.accumulate()
    ev.summarize()
    assert [m["map"], m["map50"], m["map75"]] == pytest.approx(list(ev.stats[:3]), abs=1e-9)

    # PR curve of a at IoU 0.5: COCO's interpolated precision on the 101-point grid
    recall, precision = np.array(m["pr_curves"]["recall"]), np.array(m["pr_curves"]["precision"]["a"])
    assert len(recall) == len(precision) == 101 and recall[0] == 0 and recall[-1] == 1
    expected = np.where(recall <= 0.33 + 1e-9, 1.0, np.where(recall <= 0.66 + 1e-9, 2 / 3, 0.0))
    np.testing.assert_allclose(precision, expected)
    assert precision.mean() == pytest.approx(AP_A)


def test_an_image_without_ground_truth_still_counts_its_false_positives():
    # a third image, no true boxes, one class-a detection scoring above all others: FP, TP, FP, TP, FP
    # -> precision 0, 1/2, 1/3, 1/2, 2/5; interpolated 1/2 up to recall 2/3 (67 points): AP = 33.5 / 101
    m = detection_metrics([*PREDS, det((1, 1, 9, 9, 0.99, 0))], [*GTS, gt()], ["a", "b"], [*SIZES, (30, 10)])
    assert m["per_class"]["a"]["ap50"] == pytest.approx(33.5 / 101)
    assert m["per_class"]["b"]["ap50"] == pytest.approx(1.0)
    assert m["n_images"] == 3 and m["confusion"][2][0] == 3  # FP on image 3 + the two class-a FPs of the hand case


def test_perfect_predictions_give_one_and_a_diagonal_confusion():
    preds = [Det(b.copy(), np.full(len(b), 0.9, np.float32), lab.copy()) for b, lab in GTS]
    m = detection_metrics(preds, GTS, ["a", "b"], SIZES)
    assert m["map50"] == pytest.approx(1.0) and m["map"] == pytest.approx(1.0)
    assert all(v["ap"] == pytest.approx(1.0) for v in m["per_class"].values())
    assert m["confusion"] == [[3, 0, 0], [0, 1, 0], [0, 0, 0]]


def test_all_wrong_class_gives_zero():
    preds = [Det(b.copy(), np.full(len(b), 0.9, np.float32), 1 - lab) for b, lab in GTS]
    m = detection_metrics(preds, GTS, ["a", "b"], SIZES)
    assert m["map50"] == 0.0 and m["map"] == 0.0
    assert m["per_class"]["a"]["ap50"] == 0.0 and m["per_class"]["b"]["ap50"] == 0.0
    assert m["confusion"] == [[0, 3, 0], [1, 0, 0], [0, 0, 0]]  # matched by box, so a class confusion each


def test_confusion_matrix_misses_false_alarms_confusions_and_greedy_iou_matching():
    sizes = [(60, 100), (50, 50), (40, 80), (30, 30)]
    gts = [
        gt((0, 0, 20, 20, 0), (40, 0, 60, 20, 1)),
        gt((10, 10, 30, 30, 0)),
        gt(),
        gt((0, 0, 20, 20, 1)),
    ]
    preds = [
        det(
            (0, 0, 20, 20, 0.9, 0),  # a on a: diagonal
            (40, 0, 60, 20, 0.8, 0),  # a on b: class confusion (row b, column a)
            (70, 30, 90, 50, 0.7, 1),  # b on nothing: false alarm (background row)
            (1, 1, 20, 20, 0.6, 0),  # duplicate of the first (IoU 0.90), that box taken: false alarm
        ),
        det((10, 10, 30, 30, 0.1, 0)),  # below iou_conf: ignored, so the true a is missed (background column)
        det((0, 0, 10, 10, 0.5, 1)),  # an image without true boxes: false alarm
        # greedy by IoU, not by score: the a at IoU 0.95 takes the true b, the b at IoU 0.6 is left a false alarm
        det((0, 0, 20, 12, 0.9, 1), (0, 0, 20, 19, 0.5, 0)),
    ]
    m = detection_metrics(preds, gts, ["a", "b"], sizes, iou_conf=0.25, iou_match=0.5)
    #              predicted a  b  background
    assert m["confusion"] == [
        [1, 0, 1],  # true a
        [2, 0, 0],  # true b
        [1, 3, 0],  # background
    ]
    # at IoU 0.96 only the exact boxes match: the duplicate and image 4's a become false alarms, its b a miss
    strict = detection_metrics(preds, gts, ["a", "b"], sizes, iou_match=0.96)["confusion"]
    assert strict == [[1, 0, 1], [1, 0, 1], [2, 3, 0]]


def test_empty_predictions_give_zero_without_crashing():
    empty = [det() for _ in GTS]
    m = detection_metrics(empty, GTS, ["a", "b"], SIZES)
    assert m["map50"] == 0.0 and m["map"] == 0.0 and m["map75"] == 0.0 and m["n_pred"] == 0
    assert m["per_class"]["a"] == {"ap50": 0.0, "ap": 0.0, "n_gt": 3, "n_pred": 0}
    assert m["confusion"] == [[0, 0, 3], [0, 0, 1], [0, 0, 0]]
    assert set(m["pr_curves"]["precision"]["a"]) == {0.0}


def test_a_class_without_ground_truth_has_no_ap_and_stays_out_of_the_mean():
    preds = [*PREDS[:1], det((50, 5, 78, 40, 0.8, 2), (5, 5, 40, 60, 0.7, 0), (20, 70, 51, 110, 0.95, 1))]
    three = detection_metrics(preds, GTS, ["a", "b", "c"], SIZES)
    assert three["per_class"]["c"] == {"ap50": None, "ap": None, "n_gt": 0, "n_pred": 1}
    assert three["pr_curves"]["precision"]["c"] is None
    # c's detection was a's false positive in the hand case; without it a's detections are TP, TP, FP: precision 1
    # up to recall 2/3 (67 of the 101 points), so AP50(a) = 67/101, and the mean is over a and b only
    assert three["per_class"]["a"]["ap50"] == pytest.approx(67 / 101)
    assert three["map50"] == pytest.approx((67 / 101 + 1) / 2)
    assert three["confusion"][2] == [0, 0, 0, 0]  # no true c
    assert three["confusion"][3] == [1, 0, 1, 0]  # false alarms: a's duplicate and c's detection
    none = detection_metrics([det()], [gt()], ["a"], [(10, 10)])
    assert none["map50"] is None and none["map"] is None and none["per_class"]["a"]["ap50"] is None


def test_boxes_are_in_each_images_own_pixels():
    # a box at x 250..290 exists only in a 300-wide image: (H, W) = (100, 300) is fine, (300, 100) is refused
    g = [gt((250, 10, 290, 90, 0))]
    p = [det((250, 10, 290, 90, 0.9, 0))]
    assert detection_metrics(p, g, ["a"], [(100, 300)])["map"] == pytest.approx(1.0)
    with pytest.raises(DataError, match="outside the image"):
        detection_metrics(p, g, ["a"], [(300, 100)])
    with pytest.raises(DataError, match="predicted boxes"):
        detection_metrics([det((250, 10, 320, 90, 0.9, 0))], g, ["a"], [(100, 300)])


def test_inconsistent_input_is_refused():
    with pytest.raises(ValueError, match="one prediction, ground truth and image size"):
        detection_metrics(PREDS[:1], GTS, ["a", "b"], SIZES)
    with pytest.raises(ValueError, match="no images"):
        detection_metrics([], [], ["a"], [])
    with pytest.raises(DataError, match=r"class indices must lie in \[0, 1\)"):
        detection_metrics(PREDS, GTS, ["a"], SIZES)
    with pytest.raises(DataError, match="shape"):
        detection_metrics([Det(np.zeros((1, 5)), np.ones(1), np.zeros(1, np.int64))], [gt()], ["a"], [(9, 9)])
    with pytest.raises(DataError, match="scores"):
        detection_metrics([Det(np.ones((1, 4)), np.ones(2), np.zeros(1, np.int64))], [gt()], ["a"], [(9, 9)])
    with pytest.raises(DataError, match="x2 <= x1"):
        detection_metrics([det()], [gt((5, 1, 5, 4, 0))], ["a"], [(9, 9)])


def test_box_iou():
    a = np.array([[0, 0, 10, 10], [0, 0, 0, 5]], dtype=np.float64)
    b = np.array([[5, 0, 15, 10], [0, 0, 10, 10]], dtype=np.float64)
    np.testing.assert_allclose(box_iou(a, b), [[50 / 150, 1.0], [0.0, 0.0]])


def _png(path) -> tuple[int, int]:
    with Image.open(path) as im:
        im.load()
        return im.size


def test_report_figures_and_markdown(tmp_path):
    classes = ["a", "b", "c"]
    m = detection_metrics([*PREDS, det((1, 1, 9, 9, 0.99, 2))], [*GTS, gt()], classes, [*SIZES, (30, 10)])

    w, h = _png(write_pr_curves(m, classes, tmp_path / "pr.png"))
    assert w > 200 and h > 200

    files = write_det_confusion(m["confusion"], classes, tmp_path / "confusion_det")
    assert [f.name for f in files] == [
        "confusion_det.png",
        "confusion_det.csv",
        "confusion_det_norm.png",
        "confusion_det_norm.csv",
    ]
    assert all(min(_png(f)) > 100 for f in files if f.suffix == ".png")
    counts = (tmp_path / "confusion_det.csv").read_text().splitlines()
    assert counts[0] == "true \\ predicted,a,b,c,background" and counts[-1] == "background,2,0,1,0"
    norm = [r.split(",") for r in (tmp_path / "confusion_det_norm.csv").read_text().splitlines()[1:]]
    assert norm[0] == ["a", "0.6667", "0.0000", "0.0000", "0.3333"]  # 2 of a's 3 boxes found, 1 missed
    assert norm[2][1:] == ["0.0000"] * 4  # c has no true boxes: its row stays 0
    with pytest.raises(ValueError, match="4 x 4"):
        write_det_confusion(m["confusion"][:3], classes, tmp_path / "bad")

    grey = [np.full((1, h_, w_), 80, np.uint8) for h_, w_ in SIZES]  # (C, H, W) as the data pipeline holds them
    rgb = np.full((30, 10, 3), 80, np.uint8)  # (H, W, 3)
    grid = write_det_grid(
        [*grey, rgb], [*PREDS, det((1, 1, 9, 9, 0.99, 2))], [*GTS, gt()], classes, tmp_path / "grid.png"
    )
    with Image.open(grid) as im:
        px = np.asarray(im.convert("RGB")).reshape(-1, 3).astype(int)
    assert im.size[0] > 400
    lime = (px[:, 0] < 90) & (px[:, 1] > 200) & (px[:, 2] < 90)
    assert lime.sum() > 20  # the true boxes are drawn in green, and nothing else is
    no_gt = write_det_grid([*grey, rgb], [*PREDS, det((1, 1, 9, 9, 0.99, 2))], [gt()] * 3, classes, tmp_path / "g.png")
    with Image.open(no_gt) as im:
        px = np.asarray(im.convert("RGB")).reshape(-1, 3).astype(int)
    assert not ((px[:, 0] < 90) & (px[:, 1] > 200) & (px[:, 2] < 90)).any()
    with pytest.raises(ValueError, match="uint8"):
        write_det_grid([np.zeros((5, 5, 4), np.uint8)], PREDS[:1], GTS[:1], classes, tmp_path / "bad.png")

    md = "\n".join(render_det_markdown(m, classes))
    assert f"- mAP@0.5: {100 * m['map50']:.2f} %" in md
    assert f"| a | {100 * m['per_class']['a']['ap50']:.2f} % |" in md
    assert "| c | — | — | 0 | 1 |" in md
    assert "(pr_curves.png)" in md and "`confusion_det_norm.csv`" in md and "(det_grid.png)" in md
