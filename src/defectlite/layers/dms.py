"""DMS: a depthwise-separable conv whose depthwise part mixes kernel sizes 3/5/7 (PDMSNet, Li et al.).

Source: "Steel surface defect recognition based on a lightweight convolutional neural network"
(PDMSNet), Fig. 3 and Table 3 (kernel sets 3 / 3,5 / 3,5,7 / 3,5,7,9; 3,5,7 is the one kept). The
mixed depthwise conv is MixConv (Tan & Le 2019) and comes from timm (``timm.layers.MixedConv2d``):
the C_in channels are split into len(kernel_sizes) near-equal groups (the remainder goes to the
first, smallest-kernel group), each group gets its own depthwise kernel, and the groups are
concatenated again. With ``kernel_sizes=(3,)`` this is a plain depthwise-separable conv (the
"+DSC" row of the paper's Table 2).
"""

from __future__ import annotations

from collections.abc import Sequence

from torch import Tensor, nn


class MixedDepthwiseSeparable(nn.Module):
    """pw1x1(mixed_dw(x)): mixed-kernel depthwise conv, then a pointwise conv (no norm/act inside).

    Shapes: x (N, C_in, H, W) -> (N, C_out, H, W) (stride 1, "same" padding for every kernel).
    Parameters (bias=True): sum_g(k_g^2 * c_g) + C_in + C_in * C_out + C_out.

    Args:
        in_chans: C_in.
        out_chans: C_out.
        kernel_sizes: odd depthwise kernel sizes, one channel group each (paper: 3, 5, 7).
        bias: biases on both convs (the paper's parameter counts imply them).

    Raises:
        ValueError: an even kernel size, or more kernel sizes than input channels.
    """

    def __init__(self, in_chans: int, out_chans: int, kernel_sizes: Sequence[int] = (3, 5, 7), bias: bool = True):
        super().__init__()
        from timm.layers import MixedConv2d

        if any(k % 2 == 0 for k in kernel_sizes):
            raise ValueError(f"kernel sizes must be odd, got {tuple(kernel_sizes)}")
        if len(kernel_sizes) > in_chans:
            raise ValueError(f"{len(kernel_sizes)} kernel groups need at least as many channels, got {in_chans}")
        self.dw = MixedConv2d(in_chans, in_chans, list(kernel_sizes), depthwise=True, bias=bias)
        self.pw = nn.Conv2d(in_chans, out_chans, 1, bias=bias)

    def forward(self, x: Tensor) -> Tensor:
        return self.pw(self.dw(x))
