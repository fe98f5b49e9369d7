"""Plain 3x3 conv block and its depthwise-separable twin (Chollet 2017; casting paper §3.2.4, Fig. 7).

Both map (N, C_in, H, W) -> (N, C_out, H, W) (stride 1, "same" padding) and end in BN + ReLU, so
a network can swap one for the other layer by layer (the 3x3 vs DSC ablation of Table 2).
"""

from __future__ import annotations

from torch import Tensor, nn


class ConvBnAct(nn.Sequential):
    """act(BN(conv_kxk(x))): the "Conv3" layer of the casting paper's Table 2.

    Shapes: x (N, C_in, H, W) -> (N, C_out, ceil(H / stride), ceil(W / stride)).
    Parameters: C_in * C_out * k * k + 2 * C_out. ``act`` defaults to ReLU (the YOLO blocks of
    :mod:`defectlite.layers.csp` pass LeakyReLU, SiLU or Mish).
    """

    def __init__(
        self, in_chans: int, out_chans: int, kernel_size: int = 3, stride: int = 1, act: nn.Module | None = None
    ) -> None:
        super().__init__(
            nn.Conv2d(in_chans, out_chans, kernel_size, stride, kernel_size // 2, bias=False),
            nn.BatchNorm2d(out_chans),
            nn.ReLU(inplace=True) if act is None else act,
        )


class SeparableConvBnAct(nn.Module):
    """act(BN(pw1x1(dw3x3(x)))): the "ConvDW" layer (depthwise 3x3, then pointwise 1x1, as Keras' SeparableConv2D).

    No norm or activation sits between the depthwise and the pointwise conv (Xception style).
    Shapes: x (N, C_in, H, W) -> (N, C_out, ceil(H / stride), ceil(W / stride)).
    Parameters: 9 * C_in + C_in * C_out + 2 * C_out (vs 9 * C_in * C_out for :class:`ConvBnAct`).
    """

    def __init__(self, in_chans: int, out_chans: int, kernel_size: int = 3, stride: int = 1) -> None:
        super().__init__()
        self.dw = nn.Conv2d(in_chans, in_chans, kernel_size, stride, kernel_size // 2, groups=in_chans, bias=False)
        self.pw = nn.Conv2d(in_chans, out_chans, 1, bias=False)
        self.bn = nn.BatchNorm2d(out_chans)
        self.act = nn.ReLU(inplace=True)

    def forward(self, x: Tensor) -> Tensor:
        return self.act(self.bn(self.pw(self.dw(x))))
