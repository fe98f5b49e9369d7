"""Detectors (yolo_lite, yolov4), the detection loss and its distillation, NumPy decoding + NMS, ONNX, pruning."""

from __future__ import annotations

import math
import os
import subprocess
import sys
import warnings
from pathlib import Path

import numpy as np
import pytest
import torch
from torch import nn

from defectlite.compress.channel_prune import prune_channels, replay
from defectlite.compress.layer_prune import prune_layers, residual_blocks
from defectlite.errors import CheckpointError, ConfigError, DataError
from defectlite.evaluate.profile import count_params
from defectlite.models import create_model, list_models, model_info
from defectlite.models.yolo import DetectorExport, flatten_outputs, yolo_lite
from defectlite.onnx_file import ort_session
from defectlite.tasks.detect.decode import box_iou, decode, nms, postprocess
from defectlite.tasks.detect.loss import DetectionDistill, DetectionLoss, decode_cells, yolov5_gains
from test_models import randomize_bn

K = 7  # a number no default uses
SIDE = 256
CLASSES = [f"c{i}" for i in range(K)]
# One 40 x 24 px box centred at (101, 59) px, class 2 (hand-checked assignment below).
TARGET = torch.tensor([[0, 2, 81, 47, 121, 71]], dtype=torch.float32)


@pytest.fixture(autouse=True, scope="module")
def _one_thread():
    """One intra-op thread: on the shared 2-core machine, 2 contended threads run these small models 10-20x slower."""
    prev = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(prev)


def logit(p: float) -> float:
    return math.log(p / (1 - p))


def encode(cx, cy, w, h, gi, gj, stride, anchor_wh) -> list[float]:
    """Raw tx, ty, tw, th of the prediction at cell (gi, gj) decoding to the box (cx, cy, w, h) px (inverse of
    xy = (2 sig - 0.5 + cell) * s, wh = (2 sig)^2 * anchor)."""
    tx, ty = (logit((c / stride - g + 0.5) / 2) for c, g in ((cx, gi), (cy, gj)))
    tw, th = (logit(math.sqrt(v / a) / 2) for v, a in ((w, anchor_wh[0]), (h, anchor_wh[1])))
    return [tx, ty, tw, th]


def zero_maps(n: int = 1, side: int = SIDE, obj: float = -20.0) -> list[torch.Tensor]:
    """Raw maps (n, 3 * (5 + K), side / s, side / s) with every objectness logit at ``obj``, the rest 0."""
    maps = [torch.zeros(n, 3, 5 + K, side // s, side // s) for s in (8, 16, 32)]
    for m in maps:
        m[:, :, 4] = obj
    return [m.flatten(1, 2) for m in maps]


def fill_assigned(crit, maps, targets, shift=(0.0, 0.0), obj=20.0):
    """Write, at every prediction assigned to a target, raw values decoding to the target box shifted by
    ``shift`` px, objectness logit ``obj`` and a confident correct class."""
    for level, lt in enumerate(crit.assign(maps, targets)):
        view = maps[level].view(maps[level].shape[0], 3, 5 + K, *maps[level].shape[-2:])
        s = crit.strides[level]
        for b, a, gj, gi in zip(lt.b.tolist(), lt.a.tolist(), lt.gj.tolist(), lt.gi.tolist()):
            x1, y1, x2, y2 = targets[0, 2:].tolist()
            cx, cy = (x1 + x2) / 2 + shift[0], (y1 + y2) / 2 + shift[1]
            raw = encode(cx, cy, x2 - x1, y2 - y1, gi, gj, s, crit.anchors[level, a].tolist())
            view[b, a, :4, gj, gi] = torch.tensor(raw)
            view[b, a, 4, gj, gi] = obj
            view[b, a, 5:, gj, gi] = -20.0
            view[b, a, 5 + int(targets[0, 1]), gj, gi] = 20.0
    return maps


def ciou_by_hand(w, h, dx, dy) -> float:
    """CIoU of a w x h box and its copy shifted by (dx, dy) (same aspect: v = 0), Eq. 4-6."""
    inter = (w - abs(dx)) * (h - abs(dy))
    iou = inter / (2 * w * h - inter)
    return iou - (dx**2 + dy**2) / ((w + abs(dx)) ** 2 + (h + abs(dy)) ** 2)


# --- models ---------------------------------------------------------------------------------------
@pytest.mark.parametrize("name", list_models(task="detect"))
def test_detector_forward_backward(name):
    assert model_info(name).task == "detect" and name not in list_models()
    torch.manual_seed(0)
    model = create_model(name, num_classes=K, in_chans=1).train()
    maps = model(torch.randn(2, 1, SIDE, SIDE))
    assert [tuple(m.shape) for m in maps] == [(2, 3 * (5 + K), SIDE // s, SIDE // s) for s in (8, 16, 32)]
    assert all(torch.isfinite(m).all() for m in maps)
    assert model.strides == (8, 16, 32) and model.anchors.shape == (3, 3, 2)
    assert [c.out_channels for c in model.head_convs()] == [3 * (5 + K)] * 3
    sum(m.float().square().mean() for m in maps).backward()
    assert all(p.grad is not None for p in model.parameters())
    with pytest.raises(ConfigError, match="multiple of 32"):
        model(torch.zeros(1, 1, 100, 96))


def test_builders_validate_and_count_as_documented():
    model = yolo_lite(num_classes=K)
    assert 1e6 < count_params(model) < 3e6
    assert count_params(create_model("yolov4", num_classes=4, in_chans=3)) == 63_953_841  # paper Table 5
    with pytest.raises(ConfigError, match="sorted by area"):
        yolo_lite(num_classes=K, anchors=[[100, 100]] + [[10, 10]] * 8)
    with pytest.raises(ConfigError, match="9 positive"):
        yolo_lite(num_classes=K, anchors=[[10, 10]] * 8)
    with pytest.raises(TypeError):
        yolo_lite(K)  # keyword-only
    wide = yolo_lite(num_classes=K, width=0.5, anchors=[[i, i] for i in range(10, 100, 10)])
    assert count_params(wide) > 3 * count_params(model) and wide.anchors[2, 2].tolist() == [90, 90]
    bias = model.head_convs()[0].bias.view(3, 5 + K)  # YOLOv5 priors: 8 objects / 640^2, class 0.6 / (K - 1)
    assert abs(bias[:, 4].mean().item() - math.log(8 / 80**2)) < 0.2
    assert abs(bias[:, 5:].mean().item() - math.log(0.6 / (K - 0.99999))) < 0.2


def test_flatten_outputs_orders_rows_level_anchor_y_x():
    maps = [torch.randn(2, 3 * (5 + K), SIDE // s, SIDE // s) for s in (8, 16, 32)]
    flat = flatten_outputs(maps)
    assert flat.shape == (2, 3 * (32 * 32 + 16 * 16 + 8 * 8), 5 + K)
    row = 3 * 32 * 32 + 2 * 16 * 16 + 3 * 16 + 5  # level 1, anchor 2, y 3, x 5
    assert torch.equal(flat[1, row], maps[1][1, 2 * (5 + K) : 3 * (5 + K), 3, 5])


# --- loss ------------------------------------------------------------------------------------------
def test_assignment_picks_the_expected_cells_and_anchors():
    model = yolo_lite(num_classes=K)  # default anchors, see NEU_ANCHORS_320
    crit = DetectionLoss(model.anchors, model.strides, K)
    lts = crit.assign(zero_maps(), TARGET)
    got = [{(a, gj, gi) for a, gj, gi in zip(lt.a.tolist(), lt.gj.tolist(), lt.gi.tolist())} for lt in lts]
    # stride 8: centre (12.625, 7.375) -> cell x 12, y 7, nearer neighbours x 13 and y 6; box (5, 3) cells
    # is within 4x of all three anchors (2, 3.5), (5, 2.25), (3.75, 7).
    assert got[0] == {(a, gj, gi) for a in range(3) for gj, gi in ((7, 12), (7, 13), (6, 12))}
    # stride 16: centre (6.31, 3.69) -> cell (6, 3), neighbours x 5 and y 4; only anchor (4.5, 2.5) within 4x.
    assert got[1] == {(0, 3, 6), (0, 3, 5), (0, 4, 6)}
    assert got[2] == set()  # stride 32 anchors are more than 4x larger
    centre = [i for i, (gj, gi) in enumerate(zip(lts[0].gj.tolist(), lts[0].gi.tolist())) if (gj, gi) == (7, 13)]
    assert torch.allclose(lts[0].tbox[centre[0]], torch.tensor([-0.375, 0.375, 5.0, 3.0]))


def test_loss_vanishes_on_an_exact_prediction_and_gives_the_hand_computed_ciou_on_a_shifted_one():
    model = yolo_lite(num_classes=K)
    crit = DetectionLoss(model.anchors, model.strides, K, box=1.0)
    out = crit(fill_assigned(crit, zero_maps(), TARGET), None, TARGET)
    assert out["box"].item() < 1e-5 and out["cls"].item() < 1e-6
    assert out["obj"].item() < 1e-4  # objectness 1 at the assigned cells (target CIoU = 1), 0 elsewhere
    maps = fill_assigned(crit, zero_maps(), TARGET, shift=(2.0, -2.0), obj=0.0)
    ciou = ciou_by_hand(40, 24, 2, -2)  # IoU 836 / 1084 = 0.7712, d^2 / c^2 = 8 / 2440 -> 0.7679
    lts = crit.assign(maps, TARGET)
    for level, lt in enumerate(lts[:2]):  # objectness logit = logit(CIoU) is the BCE optimum: zero gradient there
        maps[level].view(1, 3, 5 + K, *maps[level].shape[-2:])[lt.b, lt.a, 4, lt.gj, lt.gi] = logit(ciou)
    maps = [m.requires_grad_() for m in maps]
    out = crit(maps, None, TARGET)
    assert out["box"].item() == pytest.approx(2 * (1 - ciou), abs=1e-5)  # 2 levels, mean over cells
    out["loss"].backward()
    for level, lt in enumerate(lts[:2]):
        g = maps[level].grad.view(1, 3, 5 + K, *maps[level].shape[-2:])
        assert g[lt.b, lt.a, 4, lt.gj, lt.gi].abs().max() < 1e-7 and g[lt.b, lt.a, 0, lt.gj, lt.gi].abs().min() > 0


def test_loss_float32_under_bf16_autocast_batch_scaling_errors_and_student_only_gradients():
    torch.manual_seed(0)
    model = yolo_lite(num_classes=K)
    crit = DetectionLoss(model.anchors, model.strides, K)
    x = torch.randn(2, 1, 64, 64)
    targets = torch.tensor([[0, 1, 5, 6, 40, 30], [1, 6, 20, 20, 64, 64]], dtype=torch.float32)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        maps = model(x)
        out = crit(maps, x, targets)
    assert maps[0].dtype == torch.bfloat16 and out["loss"].dtype == torch.float32 and torch.isfinite(out["loss"])
    total = out["box"] + out["obj"] + out["cls"]
    assert out["loss"].item() == pytest.approx(2 * total.item(), rel=1e-6)  # YOLOv5: loss * batch size
    assert crit(maps, x, torch.zeros(0, 6))["box"].item() == 0.0  # a batch of negatives
    for bad in (torch.zeros(3, 5), torch.tensor([[0.0, 9, 0, 0, 5, 5]]), torch.tensor([[0.0, 1, 5, 0, 5, 5]])):
        with pytest.raises(DataError):
            crit(maps, x, bad)
    with pytest.raises(ConfigError):
        DetectionLoss(model.anchors, model.strides, K, anchor_t=1.0)
    teacher = yolo_lite(num_classes=K)  # distillation trains the student only
    out = DetectionDistill(teacher, model.anchors, model.strides, K).train()(model.train()(x), x, targets)
    assert all(out[k] > 0 for k in ("obj_soft", "cls_soft")) and torch.isfinite(out["loss"])
    out["loss"].backward()
    assert all(p.grad is not None for p in model.parameters()) and all(p.grad is None for p in teacher.parameters())


class FixedMaps(nn.Module):
    """A 'teacher' returning given head maps."""

    def __init__(self, maps):
        super().__init__()
        self.maps = maps

    def forward(self, x):
        return [m.clone() for m in self.maps]


def test_distillation_mixes_soft_targets_and_bounds_the_box_term_by_the_teacher():
    torch.manual_seed(0)
    model = randomize_bn(yolo_lite(num_classes=K)).eval()
    x = torch.randn(1, 1, SIDE, SIDE)
    hard = DetectionLoss(model.anchors, model.strides, K)(model(x), x, TARGET)
    kd = DetectionDistill(model, model.anchors, model.strides, K, temperature=3.0, alpha=0.25)
    out = kd.train()(model(x), x, TARGET)  # teacher = student: soft terms vanish, alpha only rescales
    assert not kd.teacher.training and not any(p.requires_grad for p in kd.teacher.parameters())
    assert out["obj_soft"].abs().item() < 1e-6 and out["cls_soft"].abs().item() < 1e-6 and out["box_bound"] == 0
    assert out["obj"].item() == pytest.approx(0.75 * hard["obj"].item(), rel=1e-4)
    assert out["cls"].item() == pytest.approx(0.75 * hard["cls"].item(), rel=1e-4)
    assert out["box"].item() == pytest.approx(hard["box"].item(), rel=1e-4)

    crit = DetectionLoss(model.anchors, model.strides, K)
    exact = fill_assigned(crit, zero_maps(), TARGET)
    shifted = fill_assigned(crit, zero_maps(), TARGET, shift=(2.0, -2.0))
    for student, teacher, bound in ((exact, shifted, 0.0), (shifted, exact, 2 * (1 - ciou_by_hand(40, 24, 2, -2)))):
        kd = DetectionDistill(FixedMaps(teacher), model.anchors, model.strides, K, bound_weight=0.5, box=1.0)
        out = kd(student, x, TARGET)  # Eq. 16: L_b counts only where the student is not better than the teacher
        assert out["box_bound"].item() == pytest.approx(bound, abs=1e-5)
        plain = DetectionLoss(model.anchors, model.strides, K, box=1.0)(student, x, TARGET)["box"]
        assert out["box"].item() == pytest.approx(plain.item() + 0.5 * bound, abs=1e-5)
    with pytest.raises(ConfigError, match="differ"):
        DetectionDistill(FixedMaps(zero_maps(side=128)), model.anchors, model.strides, K)(exact, x, TARGET)
    other = yolo_lite(num_classes=K, anchors=[[i, i] for i in range(10, 100, 10)])
    with pytest.raises(ConfigError, match="anchors differ"):
        DetectionDistill(other, model.anchors, model.strides, K)


OVERFIT_SIDE = 64
OVERFIT_BOX = [20, 15, 50, 40]


@pytest.fixture(scope="module")
def overfit():
    """yolo_lite after 30 Adam steps on one synthetic image (a bright rectangle) and its mirror, BN statistics
    re-estimated on that batch (30 steps leave the running ones behind). -> (model in eval, images, targets, losses)."""
    torch.manual_seed(0)
    side, (x1, y1, x2, y2) = OVERFIT_SIDE, OVERFIT_BOX
    x = torch.zeros(2, 1, side, side)
    x[0, :, y1:y2, x1:x2] = 1.0
    x[1] = x[0].flip(-1)
    targets = torch.tensor([[0, 1, x1, y1, x2, y2], [1, 1, side - x2, y1, side - x1, y2]], dtype=torch.float32)
    model = yolo_lite(num_classes=2).train()
    crit = DetectionLoss(model.anchors, model.strides, 2)
    opt = torch.optim.Adam(model.parameters(), lr=1e-2)
    losses = []
    for _ in range(30):
        out = crit(model(x), x, targets)
        opt.zero_grad()
        out["loss"].backward()
        opt.step()
        losses.append(out["loss"].item())
    for bn in model.modules():
        if isinstance(bn, nn.BatchNorm2d):
            bn.reset_running_stats()
            bn.momentum = None  # cumulative average: one pass sets the running statistics to this batch's
    with torch.no_grad():
        model(x)
    return model.eval(), x, targets, losses


def test_a_few_steps_overfit_one_synthetic_image(overfit):
    model, x, targets, losses = overfit
    assert losses[-1] < 0.3 * losses[0]  # about 3.0 -> 0.5
    with torch.no_grad():
        raw = flatten_outputs(model(x)).numpy()
    dets = postprocess(raw, model.decode_meta((OVERFIT_SIDE,) * 2, ["a", "b"]), conf=0.25)
    for det, target in zip(dets, targets):
        assert len(det.boxes) and set(det.labels.tolist()) == {1}
        assert box_iou(target[2:].numpy(), det.boxes).max() > 0.5


# --- NumPy decoding ---------------------------------------------------------------------------------
def test_decode_inverts_the_encoding_and_matches_the_loss_decoding():
    model = yolo_lite(num_classes=K)
    anchors = model.anchors.numpy()
    maps = [torch.randn(2, 3 * (5 + K), SIDE // s, SIDE // s) for s in (8, 16, 32)]
    # rows (level, anchor, y, x) -> box (cx, cy, w, h) px, each within reach of its cell and anchor
    picks = {(0, 1, 7, 12): (101.0, 59.0, 40.0, 24.0), (1, 2, 3, 5): (90.0, 60.0, 150.0, 100.0),
             (2, 0, 6, 1): (60.0, 200.0, 300.0, 90.0)}  # fmt: skip
    for (level, a, gy, gx), (cx, cy, w, h) in picks.items():
        s = (8, 16, 32)[level]
        raw = encode(cx, cy, w, h, gx, gy, s, anchors[level, a])
        maps[level].view(2, 3, 5 + K, SIDE // s, SIDE // s)[0, a, :4, gy, gx] = torch.tensor(raw)
    flat = flatten_outputs(maps)
    boxes, obj, cls = decode(flat.numpy(), anchors.reshape(9, 2).tolist(), (8, 16, 32), (SIDE, SIDE))
    assert boxes.shape == (2, flat.shape[1], 4) and obj.shape == (2, flat.shape[1]) and cls.shape[-1] == K
    offsets = np.cumsum([0] + [3 * (SIDE // s) ** 2 for s in (8, 16)])
    for (level, a, gy, gx), (cx, cy, w, h) in picks.items():
        s, n = 8 << level, SIDE // (8 << level)
        row = offsets[level] + (a * n + gy) * n + gx
        np.testing.assert_allclose(boxes[0, row], [cx - w / 2, cy - h / 2, cx + w / 2, cy + h / 2], atol=1e-3)
        ref = decode_cells(flat[1, row][None], torch.from_numpy(anchors[level, a]) / s)[0].numpy() * s  # loss' decoding
        centre = ref[:2] + np.array([gx, gy]) * s
        np.testing.assert_allclose(boxes[1, row], np.r_[centre - ref[2:] / 2, centre + ref[2:] / 2], atol=1e-4)
    np.testing.assert_allclose(obj, torch.sigmoid(flat[..., 4]).numpy(), atol=1e-6)
    with pytest.raises(DataError, match="does not match"):
        decode(flat.numpy()[:, :-1], anchors, (8, 16, 32), (SIDE, SIDE))


@pytest.mark.parametrize("iou", [0.3, 0.5, 0.7])
def test_nms_equals_torchvision(iou):
    from torchvision.ops import nms as tv_nms

    rng = np.random.default_rng(int(iou * 10))
    xy = rng.uniform(0, 200, (400, 2)).astype(np.float32)
    boxes = np.concatenate((xy, xy + rng.uniform(5, 60, (400, 2)).astype(np.float32)), 1)
    scores = rng.random(400).astype(np.float32)
    ref = tv_nms(torch.from_numpy(boxes), torch.from_numpy(scores), iou).numpy()
    np.testing.assert_array_equal(nms(boxes, scores, iou), ref)


def test_postprocess_scales_clips_and_is_class_aware():
    model = yolo_lite(num_classes=K)
    meta = model.decode_meta((SIDE, SIDE), CLASSES)
    maps = zero_maps(2)
    anchors = model.anchors
    view = maps[1].view(2, 3, 5 + K, 16, 16)
    for a, (cx, cy, w, h, c) in enumerate([(100, 80, 60, 40, 3), (104, 82, 60, 40, 5), (230, 60, 70, 40, 3)]):
        gx, gy = int(cx // 16), int(cy // 16)  # two overlapping boxes of classes 3 and 5, one past the right edge
        view[0, a, :4, gy, gx] = torch.tensor(encode(cx, cy, w, h, gx, gy, 16, anchors[1, a].tolist()))
        view[0, a, 4, gy, gx], view[0, a, 5 + c, gy, gx] = 5.0, 5.0
    raw = flatten_outputs(maps).numpy()
    dets = postprocess(raw, meta, conf=0.5, orig_sizes=[(512, 384), (100, 100)])
    assert len(dets) == 2 and len(dets[1].boxes) == 0
    d = dets[0]
    assert d.boxes.dtype == np.float32 and d.scores.dtype == np.float32 and d.labels.dtype == np.int64
    assert sorted(d.labels.tolist()) == [3, 3, 5]
    first = d.boxes[(d.labels == 3) & (d.boxes[:, 0] < 200)][0]
    np.testing.assert_allclose(first, [70 * 1.5, 60 * 2, 130 * 1.5, 100 * 2], atol=1e-2)  # x * 384 / 256, y * 2
    assert d.boxes[:, 2].max() == pytest.approx(384.0)  # clipped (input box 195 .. 265 px)
    assert len(postprocess(raw, meta, conf=0.5, agnostic=True)[0].boxes) == 2
    assert len(postprocess(raw, meta, conf=0.5, max_det=1)[0].boxes) == 1
    bad = ({"meta": {}}, CheckpointError), ({"conf": 2.0}, ConfigError), ({"orig_sizes": [(5, 5)]}, DataError)
    for kwargs, error in bad:
        with pytest.raises(error):
            postprocess(**{"raw": raw, "meta": meta, **kwargs})


@pytest.mark.parametrize("conf", [0.0, 0.05, 0.3, 0.9])
def test_postprocess_filters_on_objectness_first_without_losing_a_box(conf):
    """Only rows whose objectness passes ``conf`` are decoded (score = objectness x class prob <= objectness):
    the answer equals decoding every row and thresholding the scores after."""
    model = yolo_lite(num_classes=K)
    meta = model.decode_meta((SIDE, SIDE), CLASSES)
    raw = flatten_outputs([torch.randn(2, 3 * (5 + K), SIDE // s, SIDE // s) * 3 for s in (8, 16, 32)]).numpy()
    boxes, obj, cls = decode(raw, meta["anchors"], meta["strides"], meta["input_size"])
    for d, b, o, c in zip(postprocess(raw, meta, conf=conf, iou=1.0, max_det=10**6), boxes, obj, cls):
        scores = o * c.max(1)
        passed = np.sort(scores[scores > conf])[::-1]
        assert len(d.scores) == len(passed) and len(passed) > 0
        np.testing.assert_array_equal(d.scores, passed)
        np.testing.assert_array_equal(np.sort(d.boxes[:, 0]), np.sort(np.clip(b[scores > conf, 0], 0, SIDE)))


def test_decoding_module_imports_without_torch():
    code = "import sys; sys.modules['torch'] = None; import defectlite.tasks.detect.decode as d; print(d.nms)"
    env = {**os.environ, "PYTHONPATH": str(Path(__file__).parents[1] / "src")}
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, timeout=60)
    assert done.returncode == 0, done.stderr


# --- export and compression ------------------------------------------------------------------------
def test_onnx_export_matches_pytorch_and_decodes_to_the_same_boxes(overfit, tmp_path):
    import onnx

    model, x, _, _ = overfit  # trained: a few confident boxes (a random model gives hundreds of near-ties)
    wrapped = DetectorExport(model).eval()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        program = torch.onnx.export(
            wrapped, (x[:1],), None, dynamo=True, opset_version=20, input_names=["input"], output_names=["raw"],
            dynamic_shapes=({0: torch.export.Dim("batch")},), verbose=False,
        )  # fmt: skip
    onnx.save_model(program.model_proto, str(tmp_path / "det.onnx"))
    batch = torch.cat((x, torch.rand(1, *x.shape[1:])))  # 3 images: another batch size than exported
    with torch.no_grad():
        ref = wrapped(batch).numpy()
    sess = ort_session(tmp_path / "det.onnx", threads=1)
    got = sess.run(None, {"input": batch.numpy()})[0]
    assert got.shape == ref.shape and np.abs(got - ref).max() <= 1e-4
    meta = model.decode_meta((OVERFIT_SIDE,) * 2, ["a", "b"])
    a, b = (postprocess(r, meta, conf=0.25, orig_sizes=[(200, 300)] * 3) for r in (ref, got))
    assert len(a[0].boxes) and len(a[1].boxes)
    for da, db in zip(a, b):
        np.testing.assert_array_equal(da.labels, db.labels)
        np.testing.assert_allclose(da.boxes, db.boxes, atol=1e-3)
        np.testing.assert_allclose(da.scores, db.scores, atol=1e-5)


def test_channel_and_layer_pruning_keep_a_working_detector():
    torch.manual_seed(0)
    model = randomize_bn(yolo_lite(num_classes=K)).eval()
    x = torch.randn(2, 1, SIDE, SIDE)
    shapes = [m.shape for m in model(x)]
    before = count_params(model)
    history = prune_channels(model, (1, 1, 128, 128), 0.5)  # head convs kept by pruning_ignored_layers()
    assert count_params(model) < 0.5 * before
    assert [m.shape for m in model(x)] == shapes and [c.out_channels for c in model.head_convs()] == [36] * 3
    rebuilt = replay(yolo_lite(num_classes=K), history, (1, 1, 128, 128))
    rebuilt.load_state_dict(model.state_dict())
    with torch.no_grad():
        assert all(torch.allclose(a, b) for a, b in zip(model(x), rebuilt.eval()(x)))

    blocks = residual_blocks(model, (1, 1, 128, 128))  # backbone bottlenecks only (the neck's have no shortcut)
    assert set(blocks) == {f"stage{i}.1.blocks.{j}" for i, n in ((2, 1), (3, 2), (4, 3), (5, 1)) for j in range(n)}
    removed = prune_layers(model, (1, 1, 128, 128), 2)
    assert len(removed) == 2 and all(isinstance(model.get_submodule(n), nn.Identity) for n in removed)
    out = model(x)
    assert [m.shape for m in out] == shapes and all(torch.isfinite(m).all() for m in out)


def test_yolov5_gains_scale_hyp_to_classes_and_size():
    """YOLOv5 train.py: cls * nc / 80 * 3 / nl, obj * (imgsz / 640)^2 * 3 / nl, box * 3 / nl."""
    g = yolov5_gains(6, [256, 256])
    assert g == pytest.approx({"box": 0.05, "obj": 1.0 * 0.4**2, "cls": 0.5 * 6 / 80})
    assert yolov5_gains(80, [640, 480]) == pytest.approx({"box": 0.05, "obj": 1.0, "cls": 0.5})  # what hyp is for
    assert yolov5_gains(80, [640, 640], levels=4) == pytest.approx({"box": 0.0375, "obj": 0.75, "cls": 0.375})
    with pytest.raises(ConfigError):
        yolov5_gains(0, [256, 256])
