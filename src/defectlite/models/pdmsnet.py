"""PDMSNet and its ablation steps: SqueezeNet 1.0 + BN + shortcuts + (partial) mixed-kernel DSC expand.

Source: Li, Wang, Liu, Chen, "Steel surface defect recognition based on a lightweight convolutional
neural network" (PDMSNet; NEU-CLS, 6 classes). Our copy is an OCR of the Chinese text: the abstract
and Tables 2/4 are reliable, the prose and Fig. 1-3 are not. One registry name per Table 2 row:

================  ===============================  ============  ===========  ==========  ===========
registry name     Table 2 row                      paper params  our params   paper FLOPs  our MACs
================  ===============================  ============  ===========  ==========  ===========
squeezenet1_0     SqueezeNet                       738,502       738,502      743.53 M    732.9 M
squeezenet_bn_sc  +BN, SC                          744,262       744,262      749.61 M    732.9 M
squeezenet_dsc    +depthwise-separable expand      255,942       255,942      360.57 M    343.5 M
squeezenet_dms    +mixed kernels 3/5/7 (DMS)       261,446       261,766      366.27 M    349.6 M
pdmsnet           +partial splicing (PDMSNet)      168,014       162,438      272.00 M    268.4 M
================  ===============================  ============  ===========  ==========  ===========

Counts are at the paper's setting, 3 x 224 x 224 input and 6 classes (with our default
``in_chans=1`` every model has 9,408 fewer stem weights and 111.8 M fewer MACs). The paper's "FLOPs"
are multiply-accumulates plus one op per output element of every conv bias, BN, ReLU and pooling
(the ptflops convention; it reproduces row 1 exactly: 732.92 + 4.18 + 4.18 + 2.26 = 743.53 M); our
MACs count convolutions and linear layers only.

What the counts pin down and what we chose:

- Row 1 is torchvision's ``squeezenet1_0`` (same layers, same 738,502 parameters); we drop its ReLU
  after the classifier conv (it clips logits at zero; no parameters). Input 224 x 224: NEU's
  200 x 200 images resized, which is what the paper's FLOPs imply.
- Row 2: BN after every squeeze and expand conv but not after the stem (+5,760 exactly); SC =
  SqueezeNet's parameter-free "simple bypass" around fire3/5/7/9, where input and output widths agree.
- Row 3: each 3x3 expand becomes depthwise 3x3 + pointwise 1x1, both with bias (exactly 255,942).
- Row 4: the depthwise kernels become 3/5/7 on near-equal channel thirds (timm's MixConv split;
  16 -> 6/5/5 channels). The paper's extra 5,504 parameters imply a slightly different split that
  its text does not give; ours adds 5,824 (+0.12 %).
- Row 5 ("partial"): the rule is illegible in our copy; its Fig. 7 calls it "partial splicing"
  with two on/off switches, (T, T) being PDMSNet. Our reading: in every m-fire but the last, each
  expand branch keeps half its channels, so the spliced (concatenated) output and the next squeeze
  input are halved; the last fire keeps its full 512 channels for the classifier. This gives 162,438
  parameters (-3.3 % vs 168,014) and 268.4 M MACs at 3 x 224 x 224 (paper: 272.00 M FLOPs, which
  add element-wise ops to the MACs), matching both counts better than any channel split of the
  squeeze output, which cannot remove the paper's 93,432 parameters (at most 66,064). The reading
  is ours, not the paper's text.
"""

from __future__ import annotations

from dataclasses import dataclass, replace

from torch import Tensor, nn

from defectlite.layers.fire import Fire
from defectlite.models._registry import register_model

POOL = 0  # marker in PdmsNetCfg.fires: 3x3 stride-2 max pool (ceil mode)
_PAPER = "Li et al. (PDMSNet), Table 2"


@dataclass(frozen=True)
class PdmsNetCfg:
    """SqueezeNet 1.0 layout plus the PDMSNet switches (defaults = plain SqueezeNet 1.0)."""

    stem_chans: int = 96  # output channels of the 7x7 stride-2 stem conv
    fires: tuple = ((16, 64), (16, 64), (32, 128), POOL, (32, 128), (48, 192), (48, 192), (64, 256), POOL, (64, 256))
    # ^ (squeeze, expand) per fire module (output = 2 * expand channels); POOL = max pool
    bn: bool = False  # BN after every squeeze / expand conv ("+BN")
    shortcut: bool = False  # identity bypass around fires whose input and output widths agree ("SC")
    expand3: tuple[int, ...] | None = None  # None: 3x3 conv; (3,): DSC; (3, 5, 7): DMS
    partial: bool = False  # "partial splicing": halve both expand branches of every fire but the last
    dropout: float = 0.5  # before the classifier conv, as in SqueezeNet


class PdmsNet(nn.Module):
    """Stem conv 7x7/2 + max pool, fire modules with two more max pools, dropout, 1x1 conv classifier, GAP.

    Shapes: x (N, in_chans, H, W) -> logits (N, num_classes); at 224 x 224 the fires run at 54, 27
    and 13 pixels and the features are (N, 512, 13, 13).
    """

    def __init__(self, cfg: PdmsNetCfg, *, num_classes: int, in_chans: int = 1) -> None:
        super().__init__()
        self.cfg, self.num_classes, self.in_chans = cfg, num_classes, in_chans
        c = cfg.stem_chans
        layers: list[nn.Module] = [
            nn.Conv2d(in_chans, c, 7, 2),
            nn.ReLU(inplace=True),
            nn.MaxPool2d(3, 2, ceil_mode=True),
        ]
        last = max(i for i, spec in enumerate(cfg.fires) if spec != POOL)
        for i, spec in enumerate(cfg.fires):
            if spec == POOL:
                layers.append(nn.MaxPool2d(3, 2, ceil_mode=True))
                continue
            squeeze, expand = spec
            if cfg.partial and i != last:
                expand //= 2
            sc = cfg.shortcut and c == 2 * expand
            layers.append(Fire(c, squeeze, expand, bn=cfg.bn, shortcut=sc, expand3=cfg.expand3))
            c = 2 * expand
        self.features = nn.Sequential(*layers)
        self.num_features = c
        self.drop = nn.Dropout(cfg.dropout)
        self.head = nn.Conv2d(c, num_classes, 1)
        self.pool = nn.AdaptiveAvgPool2d(1)

    def forward_features(self, x: Tensor) -> Tensor:
        """(N, C, H, W) -> (N, 512, H', W') feature map."""
        return self.features(x)

    def forward_head(self, x: Tensor) -> Tensor:
        """(N, 512, H', W') -> logits (N, num_classes)."""
        return self.pool(self.head(self.drop(x))).flatten(1)

    def forward(self, x: Tensor) -> Tensor:
        return self.forward_head(self.forward_features(x))


_BASE = PdmsNetCfg()
_BN_SC = replace(_BASE, bn=True, shortcut=True)
_DSC = replace(_BN_SC, expand3=(3,))
_DMS = replace(_BN_SC, expand3=(3, 5, 7))
_PDMS = replace(_DMS, partial=True)


@register_model(input_size=(1, 224, 224), paper=f"{_PAPER}, row 1; Iandola et al. 2016")
def squeezenet1_0(*, num_classes: int, in_chans: int = 1) -> PdmsNet:
    """SqueezeNet 1.0 (PDMSNet Table 2 row 1; input 224 x 224): 738,502 params and 732.9 M MACs at
    3 x 224 x 224 and 6 classes (paper: 738,502 and 743.53 M "FLOPs", ptflops convention)."""
    return PdmsNet(_BASE, num_classes=num_classes, in_chans=in_chans)


@register_model(input_size=(1, 224, 224), paper=f"{_PAPER}, row 2")
def squeezenet_bn_sc(*, num_classes: int, in_chans: int = 1) -> PdmsNet:
    """SqueezeNet 1.0 + BN + shortcuts (PDMSNet Table 2 row 2; input 224 x 224): 744,262 params,
    732.9 M MACs at 3 x 224 x 224 and 6 classes (paper: 744,262 and 749.61 M FLOPs)."""
    return PdmsNet(_BN_SC, num_classes=num_classes, in_chans=in_chans)


@register_model(input_size=(1, 224, 224), paper=f"{_PAPER}, row 3")
def squeezenet_dsc(*, num_classes: int, in_chans: int = 1) -> PdmsNet:
    """Row 2 with depthwise-separable 3x3 expands (PDMSNet Table 2 row 3; input 224 x 224): 255,942
    params, 343.5 M MACs at 3 x 224 x 224 and 6 classes (paper: 255,942 and 360.57 M FLOPs)."""
    return PdmsNet(_DSC, num_classes=num_classes, in_chans=in_chans)


@register_model(input_size=(1, 224, 224), paper=f"{_PAPER}, row 4")
def squeezenet_dms(*, num_classes: int, in_chans: int = 1) -> PdmsNet:
    """Row 2 with DMS (3/5/7 mixed depthwise) expands (PDMSNet Table 2 row 4; input 224 x 224):
    261,766 params, 349.6 M MACs at 3 x 224 x 224 and 6 classes (paper: 261,446 and 366.27 M FLOPs;
    the channel split of the kernels differs, see the module docstring)."""
    return PdmsNet(_DMS, num_classes=num_classes, in_chans=in_chans)


@register_model(input_size=(1, 224, 224), paper=f"{_PAPER}, row 5; Table 4")
def pdmsnet(*, num_classes: int, in_chans: int = 1) -> PdmsNet:
    """PDMSNet (PDMSNet Table 2 row 5 and Table 4; input 224 x 224): 162,438 params, 268.4 M MACs at
    3 x 224 x 224 and 6 classes (paper: 168,014 and 272.00 M FLOPs; -3.3 %, with our reading of the
    illegible "partial splicing" rule, see the module docstring)."""
    return PdmsNet(_PDMS, num_classes=num_classes, in_chans=in_chans)
