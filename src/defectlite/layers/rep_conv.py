"""RepVGG block with optional attention and a configurable activation (structural re-parameterisation).

Source: Ding et al., "RepVGG: Making VGG-style ConvNets Great Again", CVPR 2021; the ECA + GELU
variant is Xie & Shen 2022 ("KD-EG-RepVGG", Electronics 11, 4218), Section 2.1-2.3, Eq. 1-4.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn


def fuse_conv_bn(weight: Tensor, bn: nn.BatchNorm2d) -> tuple[Tensor, Tensor]:
    """Fold a bias-free conv followed by BN into one conv (Xie & Shen 2022, Eq. 4).

    Args:
        weight: conv kernel (C_out, C_in / groups, kH, kW).
        bn: the BatchNorm2d that follows it, with running statistics.

    Returns:
        (kernel, bias): kernel scaled by gamma / sqrt(var + eps), shape as ``weight``; bias (C_out,).
    """
    std = (bn.running_var + bn.eps).sqrt()
    scale = bn.weight / std
    return weight * scale.reshape(-1, 1, 1, 1), bn.bias - bn.running_mean * scale


class RepConv3x3(nn.Module):
    """Trained as act(attn(BN(conv3x3 x) + BN(conv1x1 x) + BN(x))), deployed as act(attn(conv3x3 x + b)).

    Shapes: x (N, C_in, H, W) -> (N, C_out, ceil(H / stride), ceil(W / stride)).
    The identity branch (the "S-block" of Xie & Shen 2022) exists only when C_in == C_out and
    stride == 1; otherwise it is a "D-block". ``attn`` and ``act`` act after the branch sum, so they
    are untouched by fusion.

    Args:
        in_chans: input channels C_in.
        out_chans: output channels C_out.
        stride: 1 or 2.
        attn: module applied to the summed branches (e.g. ECA), or None.
        act: activation module (default ReLU, as in RepVGG).
        identity: allow the identity branch when shapes permit (default True).
    """

    def __init__(
        self,
        in_chans: int,
        out_chans: int,
        *,
        stride: int = 1,
        attn: nn.Module | None = None,
        act: nn.Module | None = None,
        identity: bool = True,
    ) -> None:
        super().__init__()
        self.in_chans, self.out_chans, self.stride = in_chans, out_chans, stride
        self.conv3 = nn.Conv2d(in_chans, out_chans, 3, stride, 1, bias=False)
        self.bn3 = nn.BatchNorm2d(out_chans)
        self.conv1 = nn.Conv2d(in_chans, out_chans, 1, stride, 0, bias=False)
        self.bn1 = nn.BatchNorm2d(out_chans)
        has_id = identity and in_chans == out_chans and stride == 1
        self.bn_id = nn.BatchNorm2d(out_chans) if has_id else None
        self.fused: nn.Conv2d | None = None
        self.attn = attn if attn is not None else nn.Identity()
        self.act = act if act is not None else nn.ReLU()

    def forward(self, x: Tensor) -> Tensor:
        if self.fused is not None:
            y = self.fused(x)
        else:
            y = self.bn3(self.conv3(x)) + self.bn1(self.conv1(x))
            if self.bn_id is not None:
                y = y + self.bn_id(x)
        return self.act(self.attn(y))

    @torch.no_grad()
    def fused_kernel_bias(self) -> tuple[Tensor, Tensor]:
        """Equivalent single 3x3 kernel (C_out, C_in, 3, 3) and bias (C_out,) (RepVGG Fig. 4)."""
        k3, b3 = fuse_conv_bn(self.conv3.weight, self.bn3)
        k1, b1 = fuse_conv_bn(self.conv1.weight, self.bn1)
        kernel, bias = k3 + F.pad(k1, [1, 1, 1, 1]), b3 + b1
        if self.bn_id is not None:
            eye = torch.zeros_like(self.conv3.weight)
            idx = torch.arange(self.conv3.in_channels)  # not self.in_chans: channel pruning may have changed it
            eye[idx, idx, 1, 1] = 1.0
            kid, bid = fuse_conv_bn(eye, self.bn_id)
            kernel, bias = kernel + kid, bias + bid
        return kernel, bias

    def reparameterize(self) -> None:
        """Fuse the branches into one biased 3x3 conv (eval mode only). Idempotent.

        Raises:
            RuntimeError: called in training mode (BN batch statistics differ from running ones).
        """
        if self.fused is not None:
            return
        if self.training:
            raise RuntimeError("reparameterize() needs eval mode: call model.eval() first")
        kernel, bias = self.fused_kernel_bias()
        conv = nn.Conv2d(kernel.shape[1], kernel.shape[0], 3, self.stride, 1, bias=True)  # shape after any pruning
        conv.weight.data.copy_(kernel)
        conv.bias.data.copy_(bias)
        conv.to(self.conv3.weight.device)
        self.fused = conv
        for name in ("conv3", "bn3", "conv1", "bn1", "bn_id"):
            delattr(self, name)
        self.bn_id = None
