"""Cross Stage Partial blocks, residual bottlenecks and max-pool pyramids of the YOLO detectors.

Sources: CSPNet (Wang et al. 2020, CVPRW) as used by YOLOv4's CSPDarknet53 (Bochkovskiy et al.
2020; YOLOv4 pruning paper §2.2.2, Fig. 5) and by YOLOv5's C3 block; SPP (He et al. 2015; paper
§2.2.2, Fig. 6, K = {1, 5, 9, 13}) and its chained form SPPF (YOLOv5 v6.0). Written from the
papers' descriptions; every conv is the plain ``Conv2d + BatchNorm2d + activation`` of
:class:`~defectlite.layers.dsc.ConvBnAct`, so BN-gamma pruning (``compress/``) sees every channel.
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

from defectlite.layers.dsc import ConvBnAct

ACTIVATIONS = ("leaky", "silu", "mish", "relu")


def make_act(name: str) -> nn.Module:
    """A fresh activation module: ``leaky`` (LeakyReLU 0.1, Darknet), ``silu``, ``mish`` or ``relu``.

    Raises:
        ValueError: unknown name.
    """
    if name == "leaky":
        return nn.LeakyReLU(0.1, inplace=True)
    if name == "silu":
        return nn.SiLU(inplace=True)
    if name == "mish":
        return nn.Mish(inplace=True)
    if name == "relu":
        return nn.ReLU(inplace=True)
    raise ValueError(f"activation must be one of {ACTIVATIONS}, got {name!r}")


class Bottleneck(nn.Module):
    """x + conv3x3(conv1x1(x)) (Darknet residual unit; no activation after the add, as Darknet's shortcut).

    Shapes: x (N, C, H, W) -> (N, C, H, W). ``has_residual`` tells
    :func:`defectlite.compress.layer_prune.residual_blocks` that the block can be replaced by the
    identity (paper §2.2.3: a shortcut and its two preceding convs are pruned together).

    Args:
        chans: C, input = output channels.
        hidden: channels between the two convs.
        act: activation name (:func:`make_act`).
        shortcut: add the input (False: a plain two-conv block, as in the PAN neck of YOLOv5).
    """

    def __init__(self, chans: int, hidden: int, act: str = "leaky", shortcut: bool = True) -> None:
        super().__init__()
        self.conv1 = ConvBnAct(chans, hidden, 1, act=make_act(act))
        self.conv2 = ConvBnAct(hidden, chans, 3, act=make_act(act))
        self.has_residual = shortcut

    def forward(self, x: Tensor) -> Tensor:
        y = self.conv2(self.conv1(x))
        return x + y if self.has_residual else y


class CSPBlock(nn.Module):
    """merge(cat(post(blocks(part_a(x))), part_b(x))): a Cross Stage Partial stage.

    The input goes through two 1x1 convs; one half runs ``n`` :class:`Bottleneck` blocks (an
    ``nn.Sequential``, so layer pruning can drop them), the other half skips them; a 1x1 conv merges
    the concatenation. With ``transition=True`` a 1x1 conv follows the bottlenecks (CSPDarknet53's
    stages); without it this is YOLOv5's C3.

    Shapes: x (N, C_in, H, W) -> (N, C_out, H, W).

    Args:
        in_chans, out_chans: C_in, C_out.
        n: number of bottlenecks (0 allowed: the stage keeps only its split / merge convs).
        hidden: channels of each half (default C_out / 2).
        block_hidden: inner channels of each bottleneck (default ``hidden``).
        act: activation name.
        shortcut: bottlenecks with residual adds.
        transition: a 1x1 conv after the bottlenecks.
    """

    def __init__(
        self,
        in_chans: int,
        out_chans: int,
        n: int = 1,
        *,
        hidden: int | None = None,
        block_hidden: int | None = None,
        act: str = "leaky",
        shortcut: bool = True,
        transition: bool = False,
    ) -> None:
        super().__init__()
        hidden = hidden or out_chans // 2
        block_hidden = block_hidden or hidden
        self.part_a = ConvBnAct(in_chans, hidden, 1, act=make_act(act))
        self.part_b = ConvBnAct(in_chans, hidden, 1, act=make_act(act))
        self.blocks = nn.Sequential(*(Bottleneck(hidden, block_hidden, act, shortcut) for _ in range(n)))
        self.post = ConvBnAct(hidden, hidden, 1, act=make_act(act)) if transition else nn.Identity()
        self.merge = ConvBnAct(2 * hidden, out_chans, 1, act=make_act(act))

    def forward(self, x: Tensor) -> Tensor:
        return self.merge(torch.cat((self.post(self.blocks(self.part_a(x))), self.part_b(x)), 1))


class MaxPoolPyramid(nn.Module):
    """cat(x, maxpool_k1(x), maxpool_k2(x), ...): SPP without its convs (stride 1, "same" padding).

    ``chained=True`` applies one k x k pool repeatedly (SPPF: pools 5, 5∘5 = 9, 5∘5∘5 = 13 equal
    the parallel 5 / 9 / 13 pools of SPP at a third of the cost), ``kernels`` then all equal.

    Shapes: x (N, C, H, W) -> (N, C * (1 + len(kernels)), H, W). No parameters.

    Raises:
        ValueError: an even kernel, or unequal kernels with ``chained``.
    """

    def __init__(self, kernels: tuple[int, ...] = (5, 9, 13), chained: bool = False) -> None:
        super().__init__()
        if any(k % 2 == 0 for k in kernels):
            raise ValueError(f"pool kernels must be odd, got {kernels}")
        if chained and len(set(kernels)) != 1:
            raise ValueError(f"a chained pyramid repeats one kernel, got {kernels}")
        self.chained = chained
        self.pools = nn.ModuleList(nn.MaxPool2d(k, 1, k // 2) for k in kernels)

    def forward(self, x: Tensor) -> Tensor:
        outs, y = [x], x
        for pool in self.pools:
            y = pool(y if self.chained else x)
            outs.append(y)
        return torch.cat(outs, 1)


class SPPF(nn.Sequential):
    """conv1x1 -> chained 5x5 max-pool pyramid -> conv1x1 (YOLOv5 v6.0's SPPF = SPP 5/9/13 of paper Fig. 6).

    Shapes: x (N, C_in, H, W) -> (N, C_out, H, W).
    """

    def __init__(self, in_chans: int, out_chans: int, kernel: int = 5, act: str = "leaky") -> None:
        hidden = in_chans // 2
        super().__init__(
            ConvBnAct(in_chans, hidden, 1, act=make_act(act)),
            MaxPoolPyramid((kernel,) * 3, chained=True),
            ConvBnAct(4 * hidden, out_chans, 1, act=make_act(act)),
        )
