"""Anchor-based YOLO detectors: the shared head / anchor / export plumbing and ``yolo_lite``.

Every detector maps x float (N, C, H, W), H and W multiples of 32, to a list of 3 raw head maps
``(N, A * (5 + K), H / s, W / s)`` for strides ``s = 8, 16, 32`` (A = 3 anchors per level), in
training and in eval mode alike. Per anchor the 5 + K channels are ``tx, ty, tw, th, t_obj,
t_cls_1..K``; they decode (YOLOv5, also in :mod:`defectlite.tasks.detect.loss` and, for deployment
and validation, :func:`defectlite.tasks.detect.decode.decode`) to

    x, y = (2 * sigmoid(tx, ty) - 0.5 + cell) * s       box centre, input pixels
    w, h = (2 * sigmoid(tw, th)) ** 2 * anchor_wh       input pixels (at most 4 x the anchor)
    objectness = sigmoid(t_obj), class probabilities = sigmoid(t_cls)

``flatten_outputs`` turns the maps into the one tensor the ONNX file outputs, and
:class:`DetectorExport` wraps a detector for ``torch.onnx.export``.

``yolo_lite`` (our design, written from the published methods, no code taken from YOLOv5): a
CSP backbone of YOLOv5's C3 stages, SPPF, a PAN neck (Liu et al. 2018, YOLOv4 paper §2.2.2 Fig. 7)
and 1x1 output convs, all ``Conv2d + BatchNorm2d + LeakyReLU(0.1)``. LeakyReLU rather than SiLU:
ONNX Runtime's CPU provider folds the BN and fuses the LeakyRelu into the conv node (FusedConv, or
the NCHWc Conv at ORT_ENABLE_ALL: 57 of the 60 convs, all but the outputs), while SiLU exports as
Sigmoid + Mul, which ORT turns into a separate element-wise node after every conv (57 QuickGelu
nodes; ~3 % slower at 320 px, 1 thread, on our shared machine). At the default width 0.25 /
depth 0.33 and 7 classes: 1,771,804 parameters, 0.31 G MACs at 256 px and 0.48 G MACs at 320 px
(``defectlite.evaluate.profile``).
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
from torch import Tensor, nn

from defectlite.errors import ConfigError
from defectlite.layers.csp import ACTIVATIONS, SPPF, CSPBlock, make_act
from defectlite.layers.dsc import ConvBnAct
from defectlite.models._registry import register_model

STRIDES = (8, 16, 32)
NUM_ANCHORS = 3
# Hand-set for NEU-DET-like steel defects resized from 200 to 320 px (not clustered: NEU-DET's boxes
# range from ~20 px inclusions to full-width scratch / crazing strips, and many are elongated, so each
# level holds a horizontal, a vertical and a square anchor). Sorted by area, 3 per stride 8 / 16 / 32.
# Re-cluster on your own boxes with defectlite.tasks.detect.anchors.kmeans_anchors (paper §2.1.2, Eq. 1-5).
NEU_ANCHORS_320 = [[16, 28], [40, 18], [30, 56], [72, 40], [48, 110], [110, 96], [240, 72], [90, 250], [220, 230]]
OBJECTS_PER_640 = 8  # YOLOv5's objectness prior: ~8 objects in a 640 x 640 image


def make_divisible(chans: float, divisor: int = 8) -> int:
    """``chans`` rounded up to a multiple of ``divisor`` (SIMD-friendly widths)."""
    return max(divisor, int(math.ceil(chans / divisor) * divisor))


def anchor_tensor(anchors: Sequence[Sequence[float]] | None, default: Sequence[Sequence[float]]) -> Tensor:
    """Validate 9 ``[w, h]`` anchors in input pixels, sorted by area, and shape them (3, 3, 2).

    Raises:
        ConfigError: not 9 positive ``[w, h]`` pairs, or not sorted by area (w * h).
    """
    anchors = default if anchors is None else anchors
    try:
        t = torch.tensor([[float(w), float(h)] for w, h in anchors], dtype=torch.float32)
    except (TypeError, ValueError):
        raise ConfigError(f"anchors must be a list of [w, h] pairs in pixels, got {anchors!r}") from None
    if t.shape != (len(STRIDES) * NUM_ANCHORS, 2) or not bool((t > 0).all()):
        raise ConfigError(f"anchors must be {len(STRIDES) * NUM_ANCHORS} positive [w, h] pairs, got {anchors!r}")
    area = t.prod(1)
    if bool((area[1:] < area[:-1]).any()):
        raise ConfigError(f"anchors must be sorted by area w * h (small ones go to stride 8), got {anchors!r}")
    return t.view(len(STRIDES), NUM_ANCHORS, 2)


class DetectHead(nn.Module):
    """One 1x1 output conv per level: (N, C_l, H / s, W / s) -> (N, A * (5 + K), H / s, W / s).

    Bias initialisation (YOLOv5 ``Detect._initialize_biases``, after Lin et al. 2017 §3.3): the
    objectness bias starts at log(8 / (640 / s)^2) (about 8 objects per 640 x 640 image), the class
    biases at log(0.6 / (K - 0.99999)), so the first losses are not dominated by the background.
    """

    def __init__(self, in_chans: Sequence[int], num_classes: int, strides: Sequence[int] = STRIDES) -> None:
        super().__init__()
        self.num_outputs = 5 + num_classes
        self.convs = nn.ModuleList(nn.Conv2d(c, NUM_ANCHORS * self.num_outputs, 1) for c in in_chans)
        with torch.no_grad():
            for conv, s in zip(self.convs, strides):
                b = conv.bias.view(NUM_ANCHORS, self.num_outputs)
                b[:, 4] += math.log(OBJECTS_PER_640 / (640 / s) ** 2)
                b[:, 5:] += math.log(0.6 / (num_classes - 0.99999))

    def forward(self, feats: Sequence[Tensor]) -> list[Tensor]:
        return [conv(f) for conv, f in zip(self.convs, feats)]


class YoloDetector(nn.Module):
    """Base of the detectors: ``forward_features`` (subclass) -> :class:`DetectHead`.

    Attributes:
        anchors: buffer (3, A, 2), [w, h] in input pixels, one row per stride.
        strides: (8, 16, 32).
        num_classes: K.

    Raises (forward):
        ConfigError: H or W is not a multiple of 32.
    """

    def __init__(self, head_chans: Sequence[int], *, num_classes: int, anchors: Tensor) -> None:
        super().__init__()
        if num_classes < 1:
            raise ConfigError(f"num_classes must be at least 1, got {num_classes}")
        self.num_classes, self.strides = num_classes, STRIDES
        self.register_buffer("anchors", anchors.clone())
        self.head = DetectHead(head_chans, num_classes, STRIDES)

    def forward_features(self, x: Tensor) -> list[Tensor]:
        """(N, C, H, W) -> 3 neck maps (N, C_l, H / s, W / s); implemented by each family."""
        raise NotImplementedError

    def forward(self, x: Tensor) -> list[Tensor]:
        h, w = x.shape[-2:]
        if h % STRIDES[-1] or w % STRIDES[-1]:
            raise ConfigError(f"detector input must be a multiple of {STRIDES[-1]} px, got {h} x {w}")
        return self.head(self.forward_features(x))

    def head_convs(self) -> list[nn.Conv2d]:
        """The 3 output convs (stride 8, 16, 32): their channels are the anchor x (5 + K) layout."""
        return list(self.head.convs)

    def pruning_ignored_layers(self) -> list[nn.Module]:
        """Layers channel pruning must not touch (:func:`defectlite.compress.channel_prune.prune_channels`)."""
        return self.head_convs()

    def decode_meta(self, input_size: Sequence[int], classes: Sequence[str]) -> dict:
        """The ``meta`` dict :func:`defectlite.tasks.detect.decode.postprocess` needs (and the ONNX metadata holds)."""
        return {
            "anchors": self.anchors.flatten(0, 1).tolist(),
            "strides": list(self.strides),
            "input_size": [int(s) for s in input_size],
            "classes": list(classes),
        }


def flatten_outputs(maps: Sequence[Tensor]) -> Tensor:
    """Concatenate the raw head maps into one tensor (N, P, 5 + K), rows ordered (level, anchor, y, x).

    Args:
        maps: per level (N, A * (5 + K), H_l, W_l); P = sum over levels of A * H_l * W_l.
    """
    out = []
    for m in maps:
        n, c, h, w = m.shape
        out.append(
            m.view(n, NUM_ANCHORS, c // NUM_ANCHORS, h, w).permute(0, 1, 3, 4, 2).reshape(n, -1, c // NUM_ANCHORS)
        )
    return torch.cat(out, 1)


class DetectorExport(nn.Module):
    """``x (N, C, H, W) -> flatten_outputs(model(x)) (N, P, 5 + K)``: the module exported to ONNX."""

    def __init__(self, model: nn.Module) -> None:
        super().__init__()
        self.model = model

    def forward(self, x: Tensor) -> Tensor:
        return flatten_outputs(self.model(x))


class YoloLite(YoloDetector):
    """CSP backbone (C3 stages) + SPPF + PAN neck, channels (64, 128, 256, 512, 1024) x ``width``.

    Shapes: x (N, in_chans, H, W) -> neck maps of (c3, c4, c5) channels at strides 8 / 16 / 32.

    Args:
        num_classes: K >= 1.
        in_chans: 1 (grey) or 3.
        anchors: (3, 3, 2) tensor from :func:`anchor_tensor`.
        width: channel multiplier (0.25 -> 16 ... 256 channels).
        depth: bottleneck-count multiplier on (3, 6, 9, 3) backbone and 3 neck blocks per CSP stage.
        act: activation name (:func:`defectlite.layers.csp.make_act`).
    """

    def __init__(
        self,
        *,
        num_classes: int,
        in_chans: int,
        anchors: Tensor,
        width: float = 0.25,
        depth: float = 0.33,
        act: str = "leaky",
    ) -> None:
        if width <= 0 or depth <= 0:
            raise ConfigError(f"width and depth must be > 0, got width={width}, depth={depth}")
        if act not in ACTIVATIONS:
            raise ConfigError(f"act must be one of {ACTIVATIONS}, got {act!r}")
        c1, c2, c3, c4, c5 = (make_divisible(c * width) for c in (64, 128, 256, 512, 1024))
        n2, n3, n4, n5, nn_ = (max(1, round(n * depth)) for n in (3, 6, 9, 3, 3))
        super().__init__((c3, c4, c5), num_classes=num_classes, anchors=anchors)

        def stage(c_in: int, c_out: int, n: int) -> nn.Sequential:
            return nn.Sequential(ConvBnAct(c_in, c_out, 3, 2, act=make_act(act)), CSPBlock(c_out, c_out, n, act=act))

        def csp(c_in: int, c_out: int) -> CSPBlock:
            return CSPBlock(c_in, c_out, nn_, act=act, shortcut=False)

        self.stem = ConvBnAct(in_chans, c1, 3, 2, act=make_act(act))  # /2
        self.stage2, self.stage3, self.stage4 = stage(c1, c2, n2), stage(c2, c3, n3), stage(c3, c4, n4)  # /4 /8 /16
        self.stage5 = stage(c4, c5, n5)  # /32
        self.sppf = SPPF(c5, c5, act=act)
        self.up = nn.Upsample(scale_factor=2, mode="nearest")
        self.lat5, self.td4 = ConvBnAct(c5, c4, 1, act=make_act(act)), csp(2 * c4, c4)
        self.lat4, self.td3 = ConvBnAct(c4, c3, 1, act=make_act(act)), csp(2 * c3, c3)
        self.down3, self.bu4 = ConvBnAct(c3, c3, 3, 2, act=make_act(act)), csp(2 * c3, c4)
        self.down4, self.bu5 = ConvBnAct(c4, c4, 3, 2, act=make_act(act)), csp(2 * c4, c5)

    def forward_features(self, x: Tensor) -> list[Tensor]:
        p3 = self.stage3(self.stage2(self.stem(x)))
        p4 = self.stage4(p3)
        l5 = self.lat5(self.sppf(self.stage5(p4)))
        l4 = self.lat4(self.td4(torch.cat((self.up(l5), p4), 1)))
        o3 = self.td3(torch.cat((self.up(l4), p3), 1))
        o4 = self.bu4(torch.cat((self.down3(o3), l4), 1))
        o5 = self.bu5(torch.cat((self.down4(o4), l5), 1))
        return [o3, o4, o5]


@register_model(input_size=(1, 320, 320), task="detect", paper="defectlite: CSP + SPPF + PAN (YOLOv4 paper §2.2.2)")
def yolo_lite(
    *,
    num_classes: int,
    in_chans: int = 1,
    anchors: Sequence[Sequence[float]] | None = None,
    width: float = 0.25,
    depth: float = 0.33,
    act: str = "leaky",
) -> YoloLite:
    """Small YOLO for grey 256-320 px inputs: 1.77 M params, 0.48 G MACs at 320 px (7 classes).

    Args:
        num_classes: K >= 1.
        in_chans: input channels.
        anchors: 9 ``[w, h]`` in input pixels sorted by area (default :data:`NEU_ANCHORS_320`).
        width: channel multiplier (default 0.25: 16 ... 256 channels).
        depth: bottleneck-count multiplier (default 0.33: 1, 2, 3, 1 backbone bottlenecks).
        act: ``leaky`` (default, fused by ONNX Runtime on CPU), ``silu``, ``mish`` or ``relu``.

    Raises:
        ConfigError: bad anchors, width / depth <= 0, unknown act, or num_classes < 1.
    """
    return YoloLite(
        num_classes=num_classes,
        in_chans=in_chans,
        anchors=anchor_tensor(anchors, NEU_ANCHORS_320),
        width=width,
        depth=depth,
        act=act,
    )
