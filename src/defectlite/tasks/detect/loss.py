"""Detection objectives: the YOLO loss (paper Eq. 3-8, YOLOv5's assignment) and its distillation (Eq. 13-17).

Both take the raw head maps of a :mod:`defectlite.models.yolo` detector, the image batch and the
collated targets, and return a dict whose ``loss`` the loop back-propagates. Written from the
published methods (YOLOv5 ``utils/loss.py`` read as a reference, no code taken; Ultralytics is AGPL).

Conventions:
    maps: list of 3 tensors (N, A * (5 + K), H / s, W / s), strides 8 / 16 / 32.
    targets: float (M, 6) rows ``[image_index, class, x1, y1, x2, y2]`` in input pixels.
    Grid units: pixels / stride of the level; a cell (gi, gj) covers [gi, gi + 1) x [gj, gj + 1).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torchvision.ops import complete_box_iou_loss

from defectlite.errors import ConfigError, DataError


@dataclass(frozen=True)
class LevelTargets:
    """The predictions of one level that learn a target (n rows, n >= 0), all tensors (n,) or (n, k).

    Attributes:
        b, a, gj, gi: image, anchor, row and column of each assigned prediction (int64).
        tbox: target box (n, 4) ``[cx - gi, cy - gj, w, h]`` in grid units (centre offset in [-0.5, 1.5)).
        tcls: class index (n,).
        anchor_wh: the assigned anchor (n, 2) in grid units.
    """

    b: Tensor
    a: Tensor
    gj: Tensor
    gi: Tensor
    tbox: Tensor
    tcls: Tensor
    anchor_wh: Tensor


def _xyxy(cxcywh: Tensor) -> Tensor:
    return torch.cat((cxcywh[:, :2] - cxcywh[:, 2:] / 2, cxcywh[:, :2] + cxcywh[:, 2:] / 2), 1)


def decode_cells(raw: Tensor, anchor_wh: Tensor) -> Tensor:
    """Boxes ``[cx, cy, w, h]`` (n, 4) in grid units relative to their cell from raw ``tx, ty, tw, th`` (n, >= 4).

    YOLOv5's parametrisation: ``xy = 2 sigmoid(t) - 0.5``, ``wh = (2 sigmoid(t))^2 * anchor_wh``;
    :func:`defectlite.tasks.detect.decode.decode` is its NumPy twin for whole maps.
    """
    xy = raw[:, :2].sigmoid() * 2 - 0.5
    wh = (raw[:, 2:4].sigmoid() * 2) ** 2 * anchor_wh
    return torch.cat((xy, wh), 1)


def yolov5_gains(
    num_classes: int, image_size: Sequence[int], levels: int = 3, box: float = 0.05, obj: float = 1.0, cls: float = 0.5
) -> dict[str, float]:
    """The term weights YOLOv5's ``train.py`` derives from ``hyp.scratch-low`` (box 0.05, obj 1.0, cls 0.5),
    which were tuned for 80 classes, 640 px and 3 levels: ``box * 3 / L``, ``cls * K / 80 * 3 / L`` and
    ``obj * (S / 640)^2 * 3 / L``, with S the larger side of ``image_size`` (pixels) and L the levels.

    Without this, a 6-class detector at 256 px weighs objectness 6.25 x and classes 13 x more against the box
    term than YOLOv5 does, and localisation (hence mAP@0.5) trains slowly.

    Returns:
        ``{"box", "obj", "cls"}`` for :class:`DetectionLoss`.

    Raises:
        ConfigError: num_classes < 1, levels < 1 or an image side <= 0.
    """
    if num_classes < 1 or levels < 1 or not image_size or min(image_size) <= 0:
        raise ConfigError(f"need num_classes >= 1, levels >= 1, image sides > 0; got {num_classes}, {levels}, "
                          f"{tuple(image_size)}")  # fmt: skip
    per_level = 3 / levels
    return {"box": box * per_level, "obj": obj * (max(image_size) / 640) ** 2 * per_level,
            "cls": cls * num_classes / 80 * per_level}  # fmt: skip


class DetectionLoss(nn.Module):
    """L = N * (box * L_CIoU + obj * L_conf + cls * L_cls)  (paper Eq. 3; YOLOv5 ``ComputeLoss``).

    Assignment (YOLOv5 ``build_targets``): a target is learnt by every anchor of every level whose
    width and height ratios to the target are both within ``anchor_t`` (max(r, 1 / r) < anchor_t),
    at the cell holding its centre plus the horizontally and the vertically nearest neighbour cell
    (when inside the grid): up to 3 cells per matched anchor. Terms, per level:

    * box: mean over assigned predictions of 1 - CIoU (Eq. 4-6, ``torchvision.ops.complete_box_iou_loss``);
    * obj: BCE over all cells, target CIoU.detach().clamp(0) at assigned cells, 0 elsewhere (Eq. 7 with
      the IoU-aware target of YOLOv5), weighted by ``balance`` (stride 8, 16, 32);
    * cls: BCE on the assigned predictions (Eq. 8), one-hot targets smoothed to
      ``1 - eps / 2`` / ``eps / 2``; skipped for K = 1 (as YOLOv5).

    Summed over levels, weighted by ``box``, ``obj``, ``cls`` (used as given: :func:`yolov5_gains` gives the
    weights YOLOv5's ``train.py`` uses for a class count and image size), and multiplied by the batch size N.
    Computed in float32 (autocast is switched off inside).

    Args:
        anchors: (3, A, 2) or (3 * A, 2) ``[w, h]`` in input pixels (the model's ``anchors`` buffer).
        strides: (8, 16, 32).
        num_classes: K >= 1.
        box, obj, cls: term weights (YOLOv5 hyp.scratch-low: 0.05, 1.0, 0.5).
        anchor_t: width / height ratio threshold (> 1).
        balance: objectness weight per level.
        label_smoothing: eps in [0, 1).

    Forward args:
        maps: the detector's raw maps; images: the batch (unused here, the teacher of
        :class:`DetectionDistill` reads it); targets: (M, 6) in input pixels.

    Returns (forward):
        ``loss`` (scalar with gradient) and the detached weighted per-image terms ``box``, ``obj``,
        ``cls`` (``loss = N * (box + obj + cls)``).

    Raises:
        ConfigError: inconsistent anchors / strides / balance or an option out of range.
        DataError (forward): targets not (M, 6), an image index outside the batch, a class outside
            [0, K), or a box with x2 <= x1 or y2 <= y1.
    """

    def __init__(
        self,
        anchors: Tensor | Sequence,
        strides: Sequence[int],
        num_classes: int,
        *,
        box: float = 0.05,
        obj: float = 1.0,
        cls: float = 0.5,
        anchor_t: float = 4.0,
        balance: Sequence[float] = (4.0, 1.0, 0.4),
        label_smoothing: float = 0.0,
    ) -> None:
        super().__init__()
        try:
            anchors = torch.as_tensor(anchors, dtype=torch.float32).clone().reshape(len(strides), -1, 2)
        except (RuntimeError, TypeError, ValueError):
            raise ConfigError(f"anchors must be {len(strides)} groups of [w, h] pairs, got {anchors!r}") from None
        if len(balance) != len(strides):
            raise ConfigError(f"balance needs one weight per stride {tuple(strides)}, got {tuple(balance)}")
        if num_classes < 1 or anchor_t <= 1 or min(box, obj, cls) < 0 or not 0 <= label_smoothing < 1:
            raise ConfigError(
                f"need num_classes >= 1, anchor_t > 1, weights >= 0, 0 <= label_smoothing < 1; got "
                f"{num_classes}, {anchor_t}, ({box}, {obj}, {cls}), {label_smoothing}"
            )
        self.register_buffer("anchors", anchors)
        self.strides, self.num_classes = tuple(int(s) for s in strides), num_classes
        self.weights, self.anchor_t, self.balance = (box, obj, cls), anchor_t, tuple(balance)
        self.cls_pos, self.cls_neg = 1.0 - 0.5 * label_smoothing, 0.5 * label_smoothing

    def _check(self, maps: Sequence[Tensor], targets: Tensor) -> None:
        if len(maps) != len(self.strides):
            raise ConfigError(f"expected {len(self.strides)} head maps, got {len(maps)}")
        if targets.ndim != 2 or targets.shape[1] != 6:
            raise DataError(f"targets must be (M, 6) [image, class, x1, y1, x2, y2], got {tuple(targets.shape)}")
        if len(targets):
            i, c = targets[:, 0], targets[:, 1]
            if bool((i < 0).any() or (i >= maps[0].shape[0]).any()):
                raise DataError(f"target image index outside the batch of {maps[0].shape[0]}")
            if bool((c < 0).any() or (c >= self.num_classes).any()):
                raise DataError(f"target class outside [0, {self.num_classes})")
            if bool((targets[:, 4] <= targets[:, 2]).any() or (targets[:, 5] <= targets[:, 3]).any()):
                raise DataError("target box with x2 <= x1 or y2 <= y1 (empty boxes must be dropped)")

    def assign(self, maps: Sequence[Tensor], targets: Tensor) -> list[LevelTargets]:
        """The predictions that learn each target, per level (see the class docstring).

        Raises:
            DataError, ConfigError: as :meth:`forward`.
        """
        self._check(maps, targets)
        targets = targets.float()
        out = []
        for level, (m, s) in enumerate(zip(maps, self.strides)):
            h, w = m.shape[-2:]
            anchors = self.anchors[level].to(m.device) / s  # (A, 2) grid units
            centre = (targets[:, 2:4] + targets[:, 4:6]) / (2 * s)  # (M, 2)
            size = (targets[:, 4:6] - targets[:, 2:4]) / s
            r = size[None] / anchors[:, None]  # (A, M, 2)
            a, t = (torch.max(r, 1 / r).amax(2) < self.anchor_t).nonzero(as_tuple=True)
            g = centre[t]
            cell = g.floor().long()
            limit = torch.tensor([w, h], device=m.device)
            step = torch.where(g - cell < 0.5, -1, 1)  # towards the nearer neighbour, per axis
            cells, keep = [cell], [torch.ones_like(t, dtype=torch.bool)]
            for axis in (0, 1):
                nb = cell.clone()
                nb[:, axis] += step[:, axis]
                cells.append(nb)
                keep.append((nb[:, axis] >= 0) & (nb[:, axis] < limit[axis]))
            cell_all = torch.cat(cells).clamp(min=torch.zeros_like(limit), max=limit - 1)
            keep_all = torch.cat(keep)
            a3, t3, cell_all = a.repeat(3)[keep_all], t.repeat(3)[keep_all], cell_all[keep_all]
            tbox = torch.cat((g.repeat(3, 1)[keep_all] - cell_all, size[t3]), 1)
            b, c = targets[t3, 0].long(), targets[t3, 1].long()
            out.append(LevelTargets(b, a3, cell_all[:, 1], cell_all[:, 0], tbox, c, anchors[a3]))
        return out

    def _level(self, p: Tensor, lt: LevelTargets) -> tuple[Tensor, Tensor, Tensor, Tensor, Tensor]:
        """Hard terms of one level. p (N, A, H, W, 5 + K) float32 -> (box, obj BCE, cls, ps (n, 5 + K), ciou (n,))."""
        zero = p.new_zeros(())
        tobj = torch.zeros_like(p[..., 4])
        ps = p[lt.b, lt.a, lt.gj, lt.gi]
        lbox = lcls = zero
        ciou = ps.new_zeros(0)
        if len(ps):
            ciou = 1 - complete_box_iou_loss(_xyxy(decode_cells(ps, lt.anchor_wh)), _xyxy(lt.tbox))
            lbox = (1 - ciou).mean()
            tobj[lt.b, lt.a, lt.gj, lt.gi] = ciou.detach().clamp(0)
            if self.num_classes > 1:
                tcls = torch.full_like(ps[:, 5:], self.cls_neg)
                tcls[torch.arange(len(ps)), lt.tcls] = self.cls_pos
                lcls = F.binary_cross_entropy_with_logits(ps[:, 5:], tcls)
        lobj = F.binary_cross_entropy_with_logits(p[..., 4], tobj)
        return lbox, lobj, lcls, ps, ciou

    def _grid(self, m: Tensor) -> Tensor:
        """(N, A * (5 + K), H, W) -> float32 (N, A, H, W, 5 + K)."""
        n, c, h, w = m.shape
        a = self.anchors.shape[1]
        if c != a * (5 + self.num_classes):
            raise ConfigError(f"head map has {c} channels, expected {a} x (5 + {self.num_classes})")
        return m.float().view(n, a, c // a, h, w).permute(0, 1, 3, 4, 2)

    def _total(self, n: int, lbox: Tensor, lobj: Tensor, lcls: Tensor, **extra: Tensor) -> dict[str, Tensor]:
        box, obj, cls = (wt * term for wt, term in zip(self.weights, (lbox, lobj, lcls)))
        out = {"loss": (box + obj + cls) * n, "box": box.detach(), "obj": obj.detach(), "cls": cls.detach()}
        return out | {k: v.detach() for k, v in extra.items()}

    def forward(self, maps: Sequence[Tensor], images: Tensor, targets: Tensor) -> dict[str, Tensor]:
        with torch.autocast(maps[0].device.type, enabled=False):
            lbox = lobj = lcls = maps[0].new_zeros((), dtype=torch.float32)
            for level, lt in enumerate(self.assign(maps, targets)):
                b, o, c, _, _ = self._level(self._grid(maps[level]), lt)
                lbox, lobj, lcls = lbox + b, lobj + o * self.balance[level], lcls + c
            return self._total(maps[0].shape[0], lbox, lobj, lcls)


def binary_kd(student: Tensor, teacher: Tensor, temperature: float) -> Tensor:
    """T^2 * mean KL(Bernoulli(sigmoid(teacher / T)) || Bernoulli(sigmoid(student / T))) over all elements.

    A sigmoid is the softmax of the two logits {z, 0}, so this is Eq. 13-14's soft target for a
    yes / no output (objectness); zero when student = teacher. Shapes: equal, any.
    """
    t = temperature
    target = torch.sigmoid(teacher / t)
    ce = F.binary_cross_entropy_with_logits(student / t, target)
    return (ce - F.binary_cross_entropy_with_logits(teacher / t, target)) * t * t


class DetectionDistill(DetectionLoss):
    """The YOLO loss with a frozen teacher detector (YOLOv4 pruning paper §2.2.4, Eq. 13-17; Chen et al. 2017).

    For fine-tuning a pruned student with its unpruned self (or any detector with the same anchors,
    strides and classes, so that both predict the same cells). What is implemented, against the paper:

    * Eq. 13-15, classes: ``L_cls = (1 - alpha) * L_hard + alpha * L_soft`` with ``L_hard`` the BCE
      class term of :class:`DetectionLoss` and ``L_soft`` the mean over the K class outputs of the binary KL
      at temperature T (:func:`binary_kd`, with the T^2 the paper asks to "consider in advance"), at the same
      assigned predictions as the hard term (K > 1 only). The class outputs are K sigmoids trained by BCE,
      not a softmax, so each is a yes / no output like objectness; a softmax KL over their logits measured
      40-50x the hard term on a pruned yolo_lite at T = 4 (13x for the binary KL) and fine-tuning with it
      reached 13 % mAP@0.5 against 40 % without distillation.
    * The same mix for objectness (the paper's confidence term, Eq. 7): ``(1 - alpha) * L_conf +
      alpha * T^2 * binary KL`` (:func:`binary_kd`, the two-logit softmax of Eq. 13-14) over all cells
      and levels, with the level weights ``balance``.
    * Eq. 16-17, box: ``L_reg = L_box(R_s, y) + v * L_b``, ``L_b`` the mean over assigned predictions
      of ``L_box(R_s, y)`` where ``L_box(R_s, y) + m > L_box(R_t, y)`` and 0 elsewhere: the student is
      pushed further only where it is not better than the teacher by the margin ``m``. ``L_box`` is
      1 - CIoU (Eq. 6) in both places, where the paper writes smooth-L1 (Eq. 17) and L2 (Eq. 16, the
      box-offset regression of Chen et al.); CIoU is what the detector trains with and has no scale
      to tune. With ``m = 0`` this is "student worse than teacher".

    ``loss = N * (box * L_reg + obj * L_obj + cls * L_cls)`` with ``N`` the batch size. The teacher
    runs in eval mode without gradients on the same ``images``; the paper gives no T or alpha (only
    T > 1): the defaults here are ours.

    Args:
        teacher: detector returning the raw maps of the same shapes as the student's.
        anchors, strides, num_classes, **loss_kwargs: as :class:`DetectionLoss`.
        temperature: T > 0.
        alpha: weight of the soft terms, in [0, 1] (the paper's lambda).
        margin: m >= 0, in units of 1 - CIoU.
        bound_weight: v >= 0.

    Returns (forward):
        As :class:`DetectionLoss` plus, detached and before alpha and the term weights, ``box_bound``
        (L_b summed over levels), ``obj_soft`` (the binary KL, level-weighted by ``balance`` like
        ``obj``) and ``cls_soft`` (the class KL summed over levels).

    Raises:
        ConfigError: an option out of range, a teacher with other anchors, or teacher maps of other
            shapes than the student's.
    """

    def __init__(
        self,
        teacher: nn.Module,
        anchors: Tensor | Sequence,
        strides: Sequence[int],
        num_classes: int,
        temperature: float = 4.0,
        alpha: float = 0.5,
        *,
        margin: float = 0.0,
        bound_weight: float = 0.5,
        **loss_kwargs: float | Sequence[float],
    ) -> None:
        super().__init__(anchors, strides, num_classes, **loss_kwargs)
        if temperature <= 0 or not 0 <= alpha <= 1 or margin < 0 or bound_weight < 0:
            raise ConfigError(
                f"need temperature > 0, 0 <= alpha <= 1, margin >= 0, bound_weight >= 0; got "
                f"{temperature}, {alpha}, {margin}, {bound_weight}"
            )
        own = getattr(teacher, "anchors", None)
        if isinstance(own, Tensor) and not (
            own.numel() == self.anchors.numel()
            and torch.equal(own.detach().cpu().float().reshape(self.anchors.shape), self.anchors)
        ):
            raise ConfigError("the teacher's anchors differ from the student's: its raw maps would decode differently")
        self.teacher = teacher.eval().requires_grad_(False)
        self.temperature, self.alpha, self.margin, self.bound_weight = temperature, alpha, margin, bound_weight

    def train(self, mode: bool = True) -> DetectionDistill:
        super().train(mode)
        self.teacher.eval()  # the teacher's BN statistics never move
        return self

    def forward(self, maps: Sequence[Tensor], images: Tensor, targets: Tensor) -> dict[str, Tensor]:
        with torch.no_grad():
            teacher_maps = self.teacher(images)
        if [tuple(m.shape) for m in teacher_maps] != [tuple(m.shape) for m in maps]:
            shapes = [tuple(m.shape) for m in teacher_maps], [tuple(m.shape) for m in maps]
            raise ConfigError(f"teacher and student head maps differ: {shapes[0]} vs {shapes[1]}")
        t, alpha = self.temperature, self.alpha
        with torch.autocast(maps[0].device.type, enabled=False):
            zero = maps[0].new_zeros((), dtype=torch.float32)
            lbox = lobj = lcls = bound = obj_soft = cls_soft = zero
            for level, lt in enumerate(self.assign(maps, targets)):
                p, pt = self._grid(maps[level]), self._grid(teacher_maps[level])
                b, o, c, ps, ciou = self._level(p, lt)
                soft_o = binary_kd(p[..., 4], pt[..., 4], t)
                lbox, obj_soft = lbox + b, obj_soft + soft_o * self.balance[level]
                lobj = lobj + ((1 - alpha) * o + alpha * soft_o) * self.balance[level]
                soft_c = zero
                if len(ps):
                    pts = pt[lt.b, lt.a, lt.gj, lt.gi]
                    ciou_t = 1 - complete_box_iou_loss(_xyxy(decode_cells(pts, lt.anchor_wh)), _xyxy(lt.tbox))
                    loss_s, loss_t = 1 - ciou, 1 - ciou_t
                    bound = bound + torch.where(loss_s + self.margin > loss_t, loss_s, zero).mean()
                    if self.num_classes > 1:
                        soft_c = binary_kd(ps[:, 5:], pts[:, 5:], t)
                cls_soft = cls_soft + soft_c
                lcls = lcls + (1 - alpha) * c + alpha * soft_c
            lbox = lbox + self.bound_weight * bound
            return self._total(
                maps[0].shape[0], lbox, lobj, lcls, box_bound=bound, obj_soft=obj_soft, cls_soft=cls_soft
            )
