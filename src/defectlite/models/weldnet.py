"""WeldNet: a 32-channel stem, four stages of WeldBlocks, GAP and a linear head (Wang et al., §2.3).

Source: Wang, Wang, He, Zhu, Zuo, "WeldNet: a lightweight deep learning model for welding defect
recognition" (TIG Al5083, 6 classes, grey 1 x 400 x 487 input, §3.1). The layer table (Fig. 7) is
missing from our copy of the paper; what the text fixes is: a first conv with 32 output channels,
WeldBlocks (:class:`~defectlite.layers.weld_block.WeldBlock`: 3x3 conv, 3x3 average pool carrying
the stride s, two 1x1 convs with expansion e), a style "slightly similar to ResNet", and 0.30 x 10^7
parameters, 26.8 % of ResNet-18 (Tables 2 and 4).

The design we chose, because it is the plainest ResNet-18-like reading that lands on that count:

==========  ==================  =======  =========  ==================  ========================
stage       block               stride   channels   output (400 x 487)  params (1 ch, 6 classes)
==========  ==================  =======  =========  ==================  ========================
stem        3x3 conv + BN+ReLU  2        32         200 x 244           352
stage 1     1 WeldBlock, e = 3  2        64         100 x 122           20,992
stage 2     2 WeldBlocks        2, 1     128        50 x 61             329,984
stage 3     2 WeldBlocks        2, 1     256        25 x 31             1,315,328
stage 4     1 WeldBlock         2        512        13 x 16             1,314,816
head        GAP + linear        -        6          1 x 1               3,078
==========  ==================  =======  =========  ==================  ========================

Totals at 6 classes, 1 x 400 x 487: 2,984,550 parameters (paper: 0.30 x 10^7; 26.7 % of the
11,173,318 of timm's ResNet-18 with 1 input channel and 6 classes; paper: 26.8 %) and 3.90 G MACs
(ResNet-18: 6.92 G at this size). The paper gives no FLOPs; it reports 41.4 FPS on an
i7-11700K CPU. There is nothing to re-parameterise.
"""

from __future__ import annotations

from dataclasses import dataclass

from torch import Tensor, nn

from defectlite.layers.weld_block import WeldBlock
from defectlite.models._registry import register_model


@dataclass(frozen=True)
class WeldNetCfg:
    """Layout of WeldNet (our reading of Wang et al. §2.3; Fig. 7 is missing)."""

    stem_chans: int = 32  # output channels of the first 3x3 conv ("32" in §2.3)
    stem_stride: int = 2  # stride of the first conv
    widths: tuple[int, ...] = (64, 128, 256, 512)  # output channels per stage (ResNet-18's)
    depths: tuple[int, ...] = (1, 2, 2, 1)  # WeldBlocks per stage; the first of each has stride 2
    expansion: float = 3.0  # e: hidden width of each block's 1x1 pair = input channels x e


class WeldNet(nn.Module):
    """Stem conv, stages of :class:`WeldBlock`, global average pooling, linear head.

    Shapes: x (N, in_chans, H, W) -> logits (N, num_classes); features (N, widths[-1], ~H/32, ~W/32).

    Raises:
        ValueError: ``widths`` and ``depths`` differ in length or a depth is below 1.
    """

    def __init__(self, cfg: WeldNetCfg, *, num_classes: int, in_chans: int = 1) -> None:
        super().__init__()
        if len(cfg.widths) != len(cfg.depths) or min(cfg.depths) < 1:
            raise ValueError(f"need one depth >= 1 per width, got widths {cfg.widths} and depths {cfg.depths}")
        self.cfg, self.num_classes, self.in_chans = cfg, num_classes, in_chans
        c = cfg.stem_chans
        self.stem = nn.Sequential(
            nn.Conv2d(in_chans, c, 3, cfg.stem_stride, 1, bias=False), nn.BatchNorm2d(c), nn.ReLU(inplace=True)
        )
        blocks = []
        for width, depth in zip(cfg.widths, cfg.depths):
            for i in range(depth):
                blocks.append(WeldBlock(c, width, stride=2 if i == 0 else 1, expansion=cfg.expansion))
                c = width
        self.blocks = nn.Sequential(*blocks)
        self.num_features = c
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.head = nn.Linear(c, num_classes)

    def forward_features(self, x: Tensor) -> Tensor:
        """(N, C, H, W) -> (N, widths[-1], H', W') feature map."""
        return self.blocks(self.stem(x))

    def forward_head(self, x: Tensor) -> Tensor:
        """(N, widths[-1], H', W') -> logits (N, num_classes)."""
        return self.head(self.pool(x).flatten(1))

    def forward(self, x: Tensor) -> Tensor:
        return self.forward_head(self.forward_features(x))


@register_model(input_size=(1, 400, 487), paper="Wang et al. (WeldNet), §2.3, Tables 2 and 4")
def weldnet(*, num_classes: int, in_chans: int = 1) -> WeldNet:
    """WeldNet (WeldNet paper §2.3; input 1 x 400 x 487, §3.1): stem 32, WeldBlocks (1, 2, 2, 1), e = 3.

    2,984,550 params and 3.90 G MACs at 6 classes and 1 x 400 x 487 (paper: 0.30 x 10^7 params,
    26.8 % of ResNet-18; no FLOPs given). Layer table chosen by us: see the module docstring.
    """
    return WeldNet(WeldNetCfg(), num_classes=num_classes, in_chans=in_chans)
