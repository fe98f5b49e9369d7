"""Small plain CNNs of 140 K / 340 K / 590 K parameters, 3x3 vs depthwise-separable (casting paper, Table 2).

Source: Lal, Bolla, E, "Efficient Neural Net Approaches in Metal Casting Defect Detection"
(efficient-dsc-cnn-casting-defects.md), §3.2-3.3, Table 2 (layer patterns), Table 1 (BlurPool, SE),
Table 3 (parameter counts). Data: GC10-DET crops, 10 classes, grey 28 x 28 (§3.1).

Table 2 gives each model's layer pattern, not its widths; we chose the widths so that each model
has the paper's parameter count at 10 classes and a 1-channel input:

==============  =========================================================  ======  ==========  =======
registry name   pattern (cN 3x3 conv, dN depthwise-separable, M max pool)  paper   our params  MACs*
==============  =========================================================  ======  ==========  =======
conv3_cnn_140k  c16 c16 M c32 c32 M c64 c64 M c120                         140 K   142,586     7.96 M
dsc_cnn_140k    c16 c16 M d32 c32 M d64 c64 M d128 d192 d260               140 K   141,882     6.55 M
conv3_cnn_340k  c16 c32 M c64 c64 M c96 c96 M c160                         340 K   339,194     22.58 M
dsc_cnn_340k    c16 c16 M d32 c32 M d64 c64 M d128 d192 d256 d320 d352     340 K   343,114     8.34 M
conv3_cnn_590k  c16 c32 c32 M c64 c64 M c128 c128 M c256                   590 K   589,370     35.28 M
dsc_cnn_590k    c16 c32 M d32 c64 M d64 c128 M d128 d192 d256 d320 d384    590 K   591,130     15.76 M
                d448
==============  =========================================================  ======  ==========  =======

(*) at 1 x 28 x 28 (the paper gives no FLOPs). Pattern of every DSC model, as Table 2 writes it:
2 Conv3 + 1 ConvDW + 1 Conv3 + 1 ConvDW + 1 Conv3 + n ConvDW (n = 3, 5, 6), then GAP and a linear
classifier. Where the paper is silent we chose: conv -> BN -> ReLU (see :mod:`defectlite.layers.dsc`),
three 2x2 max pools placed as in the table, no dropout.

Options (Table 1, applied to any of the six): ``blurpool=True`` replaces each max pool by
max pool (2x2, stride 1) + ``timm.layers.BlurPool2d`` (3-tap binomial, stride 2), the MaxBlurPool of
Zhang 2019 (parameter-free); ``se=True`` adds a ``timm.layers.SEModule`` (bottleneck 1/16 of the
channels rounded to a multiple of 8, ReLU, sigmoid gate) after every conv layer, which adds
6-86 K parameters (dsc_cnn_590k: 591,130 -> 677,586).
"""

from __future__ import annotations

from dataclasses import dataclass

from torch import Tensor, nn

from defectlite.layers.dsc import ConvBnAct, SeparableConvBnAct
from defectlite.models._registry import register_model

_PAPER = "Lal et al. (casting defects), Table 2"


@dataclass(frozen=True)
class DscCnnCfg:
    """Layer pattern of one custom model of the casting paper (Table 2), with its Table 1 options."""

    layers: str = "c16 c16 M d32 c32 M d64 c64 M d128 d192 d260"  # cN: 3x3 conv, dN: DSC conv, M: pool
    blurpool: bool = False  # anti-aliased downsampling (max pool stride 1 + BlurPool2d) instead of max pool
    se: bool = False  # squeeze-excite after every conv layer
    se_ratio: float = 1 / 16  # SE bottleneck width / channels (timm's and Hu et al.'s default)


def _pool(channels: int, blurpool: bool) -> nn.Module:
    if not blurpool:
        return nn.MaxPool2d(2)
    from timm.layers import BlurPool2d

    return nn.Sequential(nn.MaxPool2d(2, stride=1), BlurPool2d(channels, filt_size=3, stride=2))


class DscCnn(nn.Module):
    """A plain stack of 3x3 / depthwise-separable conv layers and pools, then GAP and a linear head.

    Shapes: x (N, in_chans, H, W) -> logits (N, num_classes); features (N, C_last, ~H/8, ~W/8).

    Raises:
        ValueError: a layer token other than cN, dN or M, or a pattern without conv layers.
    """

    def __init__(self, cfg: DscCnnCfg, *, num_classes: int, in_chans: int = 1) -> None:
        super().__init__()
        self.cfg, self.num_classes, self.in_chans = cfg, num_classes, in_chans
        layers: list[nn.Module] = []
        c = in_chans
        for token in cfg.layers.split():
            kind, width = token[0], token[1:]
            if token == "M":
                layers.append(_pool(c, cfg.blurpool))
            elif kind in "cd" and width.isdigit() and int(width) > 0:
                block = ConvBnAct if kind == "c" else SeparableConvBnAct
                layers.append(block(c, int(width)))
                c = int(width)
                if cfg.se:
                    from timm.layers import SEModule

                    layers.append(SEModule(c, rd_ratio=cfg.se_ratio))
            else:
                raise ValueError(f"bad layer token {token!r} in {cfg.layers!r} (use cN, dN or M)")
        if not any(isinstance(m, (ConvBnAct, SeparableConvBnAct)) for m in layers):
            raise ValueError(f"layer pattern {cfg.layers!r} has no conv layer")
        self.features = nn.Sequential(*layers)
        self.num_features = c
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.head = nn.Linear(c, num_classes)

    def forward_features(self, x: Tensor) -> Tensor:
        """(N, C, H, W) -> (N, C_last, H', W') feature map."""
        return self.features(x)

    def forward_head(self, x: Tensor) -> Tensor:
        """(N, C_last, H', W') -> logits (N, num_classes)."""
        return self.head(self.pool(x).flatten(1))

    def forward(self, x: Tensor) -> Tensor:
        return self.forward_head(self.forward_features(x))


def _build(layers: str, num_classes: int, in_chans: int, blurpool: bool, se: bool) -> DscCnn:
    return DscCnn(DscCnnCfg(layers=layers, blurpool=blurpool, se=se), num_classes=num_classes, in_chans=in_chans)


_LAYERS = {
    "conv3_140k": "c16 c16 M c32 c32 M c64 c64 M c120",
    "dsc_140k": "c16 c16 M d32 c32 M d64 c64 M d128 d192 d260",
    "conv3_340k": "c16 c32 M c64 c64 M c96 c96 M c160",
    "dsc_340k": "c16 c16 M d32 c32 M d64 c64 M d128 d192 d256 d320 d352",
    "conv3_590k": "c16 c32 c32 M c64 c64 M c128 c128 M c256",
    "dsc_590k": "c16 c32 M d32 c64 M d64 c128 M d128 d192 d256 d320 d384 d448",
}


@register_model(input_size=(1, 28, 28), paper=f"{_PAPER}, Custom 0.14 M 3x3")
def conv3_cnn_140k(*, num_classes: int, in_chans: int = 1, blurpool: bool = False, se: bool = False) -> DscCnn:
    """Custom 140 K model with 3x3 convs (casting paper Table 2: 7 Conv3 + GAP; input 1 x 28 x 28):
    142,586 params, 7.96 M MACs at 10 classes (paper: 140 K params, no FLOPs given)."""
    return _build(_LAYERS["conv3_140k"], num_classes, in_chans, blurpool, se)


@register_model(input_size=(1, 28, 28), paper=f"{_PAPER}, Custom 0.14 M depthwise")
def dsc_cnn_140k(*, num_classes: int, in_chans: int = 1, blurpool: bool = False, se: bool = False) -> DscCnn:
    """Custom 140 K model with DSC convs (casting paper Table 2: 9 layers, 3 ConvDW at the end + GAP;
    input 1 x 28 x 28): 141,882 params, 6.55 M MACs at 10 classes (paper: 140 K params)."""
    return _build(_LAYERS["dsc_140k"], num_classes, in_chans, blurpool, se)


@register_model(input_size=(1, 28, 28), paper=f"{_PAPER}, Custom 0.34 M 3x3")
def conv3_cnn_340k(*, num_classes: int, in_chans: int = 1, blurpool: bool = False, se: bool = False) -> DscCnn:
    """Custom 340 K model with 3x3 convs (casting paper Table 2: 7 Conv3 + GAP; input 1 x 28 x 28):
    339,194 params, 22.58 M MACs at 10 classes (paper: 340 K params)."""
    return _build(_LAYERS["conv3_340k"], num_classes, in_chans, blurpool, se)


@register_model(input_size=(1, 28, 28), paper=f"{_PAPER}, Custom 0.34 M depthwise")
def dsc_cnn_340k(*, num_classes: int, in_chans: int = 1, blurpool: bool = False, se: bool = False) -> DscCnn:
    """Custom 340 K model with DSC convs (casting paper Table 2: 11 layers, 5 ConvDW at the end + GAP;
    input 1 x 28 x 28): 343,114 params, 8.34 M MACs at 10 classes (paper: 340 K params)."""
    return _build(_LAYERS["dsc_340k"], num_classes, in_chans, blurpool, se)


@register_model(input_size=(1, 28, 28), paper=f"{_PAPER}, Custom 0.59 M 3x3")
def conv3_cnn_590k(*, num_classes: int, in_chans: int = 1, blurpool: bool = False, se: bool = False) -> DscCnn:
    """Custom 590 K model with 3x3 convs (casting paper Table 2: 8 Conv3 + GAP; input 1 x 28 x 28):
    589,370 params, 35.28 M MACs at 10 classes (paper: 590 K params; 80.83 % on GC10-DET)."""
    return _build(_LAYERS["conv3_590k"], num_classes, in_chans, blurpool, se)


@register_model(input_size=(1, 28, 28), paper=f"{_PAPER}, Custom 0.59 M depthwise")
def dsc_cnn_590k(*, num_classes: int, in_chans: int = 1, blurpool: bool = False, se: bool = False) -> DscCnn:
    """Custom 590 K model with DSC convs (casting paper Table 2: 12 layers, 6 ConvDW at the end + GAP;
    input 1 x 28 x 28): 591,130 params, 15.76 M MACs at 10 classes (paper: 590 K params; 81.87 %,
    83.98 % with BlurPool, 82.98 % with SE). ``se=True``: 677,586 params (see the module docstring)."""
    return _build(_LAYERS["dsc_590k"], num_classes, in_chans, blurpool, se)
