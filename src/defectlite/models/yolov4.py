"""YOLOv4 (Bochkovskiy et al. 2020) as the YOLOv4 pruning paper uses it (§2.2.2, Fig. 5-7).

CSPDarknet53 backbone with Mish (5 CSP stages of 1, 2, 8, 8, 4 residual units, each after a
3x3 stride-2 conv: 416 -> 208 -> 104 -> 52 -> 26 -> 13), SPP with max-pools 5 / 9 / 13 plus the
identity (K = {1, 5, 9, 13}), an FPN + PAN neck with LeakyReLU(0.1) and three heads (strides 8,
16, 32), laid out as Darknet's ``yolov4.cfg``. With a 3-channel input and 4 classes it has
63,953,841 parameters, exactly the paper's Table 5 (244 MB in float32); with our grey input 576
fewer (63,953,265).

Where it differs from the paper's network: the heads decode as YOLOv5 (``(2 sigmoid)^2 * anchor``
sizes, ``2 sigmoid - 0.5`` offsets; Darknet YOLOv4 uses ``exp(t) * anchor`` and ``scale_x_y``) and
train with the YOLOv5 assignment and loss of :mod:`defectlite.tasks.detect.loss`, so Darknet weights
do not load into it; there is no ImageNet pre-training; the default anchors are the paper's
K-means++ anchors (§2.1.2, 416 px) sorted by area.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import Tensor, nn

from defectlite.layers.csp import CSPBlock, MaxPoolPyramid, make_act
from defectlite.layers.dsc import ConvBnAct
from defectlite.models._registry import register_model
from defectlite.models.yolo import YoloDetector, anchor_tensor

# The paper's K-means++ anchors at 416 px (§2.1.2), sorted by area (the paper lists (41, 17) third).
PAPER_ANCHORS_416 = [[15, 42], [41, 17], [26, 45], [36, 41], [48, 34], [72, 70], [161, 109], [113, 161], [184, 172]]


def _cbl(c_in: int, c_out: int, k: int = 1, s: int = 1) -> ConvBnAct:
    """Conv + BN + LeakyReLU(0.1), Darknet's neck layer."""
    return ConvBnAct(c_in, c_out, k, s, act=make_act("leaky"))


def _five_convs(c_in: int, c: int) -> nn.Sequential:
    """1x1 (c) / 3x3 (2c) / 1x1 / 3x3 / 1x1 convs: the PAN block of ``yolov4.cfg``."""
    return nn.Sequential(_cbl(c_in, c), _cbl(c, 2 * c, 3), _cbl(2 * c, c), _cbl(c, 2 * c, 3), _cbl(2 * c, c))


class CSPDarknet53(nn.Module):
    """Backbone: x (N, C, H, W) -> (P3 (N, 256, H/8, W/8), P4 (N, 512, H/16), P5 (N, 1024, H/32)).

    Stage 1 keeps 64 channels in both CSP halves (bottleneck width 32), later stages halve them,
    as in ``yolov4.cfg``; every residual unit is a :class:`~defectlite.layers.csp.Bottleneck`
    (``has_residual``), so layer pruning finds the paper's 23 shortcut blocks.
    """

    def __init__(self, in_chans: int = 1) -> None:
        super().__init__()

        def stage(c_in: int, c_out: int, n: int, hidden: int, block_hidden: int) -> nn.Sequential:
            down = ConvBnAct(c_in, c_out, 3, 2, act=make_act("mish"))
            kw = {"hidden": hidden, "block_hidden": block_hidden, "act": "mish", "transition": True}
            return nn.Sequential(down, CSPBlock(c_out, c_out, n, **kw))

        self.stem = ConvBnAct(in_chans, 32, 3, 1, act=make_act("mish"))
        self.stage1 = stage(32, 64, 1, 64, 32)
        self.stage2 = stage(64, 128, 2, 64, 64)
        self.stage3 = stage(128, 256, 8, 128, 128)
        self.stage4 = stage(256, 512, 8, 256, 256)
        self.stage5 = stage(512, 1024, 4, 512, 512)

    def forward(self, x: Tensor) -> list[Tensor]:
        p3 = self.stage3(self.stage2(self.stage1(self.stem(x))))
        p4 = self.stage4(p3)
        return [p3, p4, self.stage5(p4)]


class YoloV4(YoloDetector):
    """CSPDarknet53 + SPP + FPN/PAN + 3 heads; neck maps (256, 512, 1024) channels at strides 8 / 16 / 32."""

    def __init__(self, *, num_classes: int, in_chans: int, anchors: Tensor) -> None:
        super().__init__((256, 512, 1024), num_classes=num_classes, anchors=anchors)
        self.backbone = CSPDarknet53(in_chans)
        self.spp = nn.Sequential(
            _cbl(1024, 512),
            _cbl(512, 1024, 3),
            _cbl(1024, 512),
            MaxPoolPyramid((5, 9, 13)),
            _cbl(2048, 512),
            _cbl(512, 1024, 3),
            _cbl(1024, 512),
        )
        self.up = nn.Upsample(scale_factor=2, mode="nearest")
        self.lat5, self.route4, self.td4 = _cbl(512, 256), _cbl(512, 256), _five_convs(512, 256)
        self.lat4, self.route3, self.td3 = _cbl(256, 128), _cbl(256, 128), _five_convs(256, 128)
        self.down3, self.bu4 = _cbl(128, 256, 3, 2), _five_convs(512, 256)
        self.down4, self.bu5 = _cbl(256, 512, 3, 2), _five_convs(1024, 512)
        self.out3, self.out4, self.out5 = _cbl(128, 256, 3), _cbl(256, 512, 3), _cbl(512, 1024, 3)

    def forward_features(self, x: Tensor) -> list[Tensor]:
        p3, p4, p5 = self.backbone(x)
        n5 = self.spp(p5)
        n4 = self.td4(torch.cat((self.route4(p4), self.up(self.lat5(n5))), 1))
        n3 = self.td3(torch.cat((self.route3(p3), self.up(self.lat4(n4))), 1))
        o4 = self.bu4(torch.cat((self.down3(n3), n4), 1))
        o5 = self.bu5(torch.cat((self.down4(o4), n5), 1))
        return [self.out3(n3), self.out4(o4), self.out5(o5)]


@register_model(input_size=(1, 416, 416), task="detect", paper="Bochkovskiy et al. 2020; YOLOv4 pruning paper §2.2.2")
def yolov4(*, num_classes: int, in_chans: int = 1, anchors: Sequence[Sequence[float]] | None = None) -> YoloV4:
    """YOLOv4 (CSPDarknet53 + SPP + PAN): 63,953,841 params with 3 channels and 4 classes (paper Table 5).

    A GPU model (about 30 G MACs at 416 px): the teacher / starting point of the paper's
    sparsity training, channel and layer pruning and distillation.

    Args:
        num_classes: K >= 1.
        in_chans: input channels (1 = grey; the paper uses 3).
        anchors: 9 ``[w, h]`` in input pixels sorted by area (default :data:`PAPER_ANCHORS_416`).

    Raises:
        ConfigError: bad anchors or num_classes < 1.
    """
    return YoloV4(num_classes=num_classes, in_chans=in_chans, anchors=anchor_tensor(anchors, PAPER_ANCHORS_416))
