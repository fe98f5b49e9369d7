"""SqueezeNet fire module, optionally with BN, a shortcut, and a DMS expand (PDMSNet's "m-fire").

Sources: Iandola et al. 2016 (SqueezeNet, Fig. 1 and the "simple bypass" of §6); PDMSNet (Li et al.)
Fig. 1 ("fire module and m-fire module") and Table 2, whose parameter counts fix where BN sits:
after the squeeze and after each expand branch (744,262 - 738,502 = 2 x 2,880 expand/squeeze
channels), never after the stem.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import Tensor, nn

from defectlite.layers.dms import MixedDepthwiseSeparable


class Fire(nn.Module):
    """relu(cat(E1(s), E3(s))) (+ x) with s = relu(squeeze(x)); E1 is a 1x1 conv, E3 a 3x3 conv or a DMS.

    Shapes: x (N, C_in, H, W) -> (N, 2 * expand, H, W).

    Args:
        in_chans: C_in.
        squeeze: channels s of the 1x1 squeeze conv.
        expand: output channels of each expand branch (the module outputs 2 * expand).
        bn: BatchNorm after the squeeze and after each expand branch (before ReLU).
        shortcut: add the input to the output (only allowed when C_in == 2 * expand).
        expand3: None for SqueezeNet's 3x3 conv, else the depthwise kernel sizes of a
            :class:`MixedDepthwiseSeparable` ((3,) = depthwise-separable, (3, 5, 7) = DMS).

    Raises:
        ValueError: ``shortcut`` with C_in != 2 * expand.
    """

    def __init__(
        self,
        in_chans: int,
        squeeze: int,
        expand: int,
        *,
        bn: bool = False,
        shortcut: bool = False,
        expand3: Sequence[int] | None = None,
    ) -> None:
        super().__init__()
        if shortcut and in_chans != 2 * expand:
            raise ValueError(f"a shortcut needs in_chans == 2 * expand, got {in_chans} and {expand}")
        self.shortcut = shortcut
        self.has_residual = shortcut  # layer pruning (compress.layer_prune) may drop a fire with a shortcut
        self.squeeze = nn.Conv2d(in_chans, squeeze, 1)
        self.bn_s = nn.BatchNorm2d(squeeze) if bn else nn.Identity()
        self.expand1 = nn.Conv2d(squeeze, expand, 1)
        self.bn_1 = nn.BatchNorm2d(expand) if bn else nn.Identity()
        if expand3 is None:
            self.expand3: nn.Module = nn.Conv2d(squeeze, expand, 3, padding=1)
        else:
            self.expand3 = MixedDepthwiseSeparable(squeeze, expand, tuple(expand3))
        self.bn_3 = nn.BatchNorm2d(expand) if bn else nn.Identity()
        self.act = nn.ReLU(inplace=True)

    def forward(self, x: Tensor) -> Tensor:
        s = self.act(self.bn_s(self.squeeze(x)))
        y = torch.cat([self.act(self.bn_1(self.expand1(s))), self.act(self.bn_3(self.expand3(s)))], 1)
        return y + x if self.shortcut else y
