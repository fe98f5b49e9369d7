"""WeldBlock: 3x3 conv, 3x3 average pool carrying the stride, two 1x1 convs with expansion e (WeldNet §2.3).

Source: Wang et al., "WeldNet: a lightweight deep learning model for welding defect recognition",
§2.3 and Fig. 7 (the figure itself is missing from our copy). The text fixes the four layers and
why the stride sits in the average pool: a stride-2 1x1 conv (ResNet's downsampling) skips three
of every four pixels. Where the text is silent we chose: BN + ReLU after each conv except the last
(BN only), a ResNet-style shortcut (the paper calls WeldNet "slightly similar to ResNet") that is the
identity when shapes agree and otherwise the same strided 3x3 average pool plus a 1x1 conv + BN.
"""

from __future__ import annotations

from torch import Tensor, nn


def _conv_bn(in_chans: int, out_chans: int, kernel_size: int, act: bool) -> nn.Sequential:
    layers = [
        nn.Conv2d(in_chans, out_chans, kernel_size, padding=kernel_size // 2, bias=False),
        nn.BatchNorm2d(out_chans),
    ]
    return nn.Sequential(*layers, nn.ReLU(inplace=True)) if act else nn.Sequential(*layers)


class WeldBlock(nn.Module):
    """relu(pw2(pw1(avgpool_s(conv3x3(x)))) + shortcut(x)).

    conv3x3: C_in -> C_in; avgpool: 3x3, stride s, padding 1; pw1: C_in -> e * C_in; pw2: e * C_in -> C_out.

    Shapes: x (N, C_in, H, W) -> (N, C_out, floor((H - 1) / s) + 1, floor((W - 1) / s) + 1).
    Parameters: 9 C_in^2 + e C_in^2 + e C_in C_out + BN (+ C_in C_out + BN for a projection shortcut).

    Args:
        in_chans: C_in.
        out_chans: C_out.
        stride: s, carried by the average pool (1 or 2).
        expansion: e, width factor of the hidden 1x1 layer.

    Raises:
        ValueError: ``stride`` not 1 or 2, or ``expansion`` gives no hidden channel.
    """

    def __init__(self, in_chans: int, out_chans: int, *, stride: int = 1, expansion: float = 2.0) -> None:
        super().__init__()
        if stride not in (1, 2):
            raise ValueError(f"stride must be 1 or 2, got {stride}")
        hidden = round(in_chans * expansion)
        if hidden < 1:
            raise ValueError(f"expansion {expansion} leaves no hidden channels for {in_chans} inputs")
        self.conv = _conv_bn(in_chans, in_chans, 3, act=True)
        self.pool = nn.AvgPool2d(3, stride, 1, count_include_pad=False) if stride > 1 else nn.Identity()
        self.pw1 = _conv_bn(in_chans, hidden, 1, act=True)
        self.pw2 = _conv_bn(hidden, out_chans, 1, act=False)
        if stride == 1 and in_chans == out_chans:
            self.shortcut: nn.Module = nn.Identity()
            self.has_residual = True  # identity shortcut: layer pruning may drop the block
        else:
            pool = nn.AvgPool2d(3, stride, 1, count_include_pad=False) if stride > 1 else nn.Identity()
            self.shortcut = nn.Sequential(pool, _conv_bn(in_chans, out_chans, 1, act=False))
            self.has_residual = False
        self.act = nn.ReLU(inplace=True)

    def forward(self, x: Tensor) -> Tensor:
        return self.act(self.pw2(self.pw1(self.pool(self.conv(x)))) + self.shortcut(x))
