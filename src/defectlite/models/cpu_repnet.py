"""CpuRepNet: EG-RepVGG's ideas in a shape that ONNX Runtime runs fast on a CPU (defectlite design).

Kept from Xie & Shen 2022 (KD-EG-RepVGG): a plain stack of RepVGG blocks trained with 3x3, 1x1 and
identity branches and fused into single 3x3 convs (Ding et al. 2021), EG-RepVGG's depth pattern
(one block at 1/8, four at 1/16, one wide block at 1/32), global average pooling and a linear head,
optional ECA channel attention (Wang et al. 2020), logits for distillation. Changed, each by
measurement (ORT per-op profile, interleaved latency against timm ``mobilenetv3_small_050``):

- widths in multiples of 16, the fp32 lane count of AVX-512: every conv then runs in ORT's blocked
  NCHWc kernels with its activation fused in (EG-RepVGG's 19- and 38-channel convs fall back to
  plain NCHW convs; at batch 1 the cost of aligned 3x3 convs is close to proportional to their MACs);
- ReLU instead of exact GELU: ORT 1.32 fuses ReLU and HardSwish into the conv, while GELU (exact
  or tanh) and SiLU stay separate ops;
- EG-RepVGG's two stride-2 blocks at 100 x 100 and 50 x 50 become one 4 x 4 / stride-4 patch conv
  (:class:`~defectlite.layers.patch_stem.PatchStem`): the 16 -> 16 conv at 50 x 50 alone cost
  about as much as the three blocks at 1/16;
- no ECA by default; where enabled it follows the activation, so Conv + ReLU still fuse.

Layout of ``cpu_repnet_s`` at 1 x 200 x 200 (``cpu_repnet_m``: last width 256):

==========  ===============================  ======  ========  =======
block       training form                    stride  channels  output
==========  ===============================  ======  ========  =======
stem        4x4 conv + BN + ReLU             4       16        50 x 50
stage 1     D-block, S-block (RepConv3x3)    2, 1    16        25 x 25
stage 2     D-block, 3 S-blocks              2, 1    32        13 x 13
stage 3     D-block                          2       128       7 x 7
head        GAP + linear                     -       K         1 x 1
==========  ===============================  ======  ========  =======

D-blocks (stride 2) have 3x3 and 1x1 branches, S-blocks (stride 1) also the identity branch.
"""

from __future__ import annotations

from dataclasses import dataclass

from torch import Tensor, nn

from defectlite.layers.eca import Eca
from defectlite.layers.patch_stem import PatchStem
from defectlite.layers.rep_conv import RepConv3x3
from defectlite.models._registry import register_model

_ACTS = {"relu": nn.ReLU, "hardswish": nn.Hardswish, "gelu": nn.GELU}
_ECA = ("none", "stage", "block")


@dataclass(frozen=True)
class CpuRepNetCfg:
    """Stage layout of a CpuRepNet."""

    patch: int = 4  # stem kernel and stride (200 px -> 50 x 50)
    stem_chans: int = 16  # stem output channels (multiples of 16 run in ORT's NCHWc kernels on AVX-512)
    widths: tuple[int, ...] = (16, 32, 128)  # output channels per stage
    depths: tuple[int, ...] = (2, 4, 1)  # RepConv3x3 blocks per stage: one D-block (stride 2), then S-blocks
    act: str = "relu"  # relu | hardswish (both fused into the conv by ORT) | gelu (EG-RepVGG's; a separate op)
    eca: str = "none"  # ECA after the activation of: none | stage (each stage's last block) | block (every block)
    eca_kernel: int = 3  # Conv1d kernel of the ECA attention
    head_hidden: int = 0  # > 0: GAP -> Linear(hidden) -> ReLU -> Linear; 0: GAP -> Linear


class CpuRepNet(nn.Module):
    """Patch stem, stages of :class:`RepConv3x3` blocks, global average pooling, linear head.

    Shapes: x (N, in_chans, H, W) -> logits (N, num_classes); features (N, widths[-1], H', W') with
    H' = ceil(floor(H / patch) / 2^len(widths)), e.g. 7 x 7 at 200 x 200.

    Raises:
        ValueError: widths and depths differ in length, a depth < 1, or an unknown act / eca.
    """

    def __init__(self, cfg: CpuRepNetCfg, *, num_classes: int, in_chans: int = 1) -> None:
        super().__init__()
        if len(cfg.widths) != len(cfg.depths) or min(cfg.depths, default=0) < 1:
            raise ValueError(f"widths {cfg.widths} and depths {cfg.depths} must pair up, depths >= 1")
        if cfg.act not in _ACTS or cfg.eca not in _ECA:
            raise ValueError(f"act must be one of {list(_ACTS)} and eca one of {list(_ECA)}: {cfg.act!r}, {cfg.eca!r}")
        self.cfg, self.num_classes, self.in_chans = cfg, num_classes, in_chans
        self.stem = PatchStem(in_chans, cfg.stem_chans, patch=cfg.patch)
        stages, c = [], cfg.stem_chans
        for w, d in zip(cfg.widths, cfg.depths):
            blocks: list[nn.Module] = []
            for j in range(d):
                blocks.append(RepConv3x3(c, w, stride=2 if j == 0 else 1, act=_ACTS[cfg.act]()))
                if cfg.eca == "block" or (cfg.eca == "stage" and j == d - 1):
                    blocks.append(Eca(w, kernel_size=cfg.eca_kernel))
                c = w
            stages.append(nn.Sequential(*blocks))
        self.stages = nn.Sequential(*stages)
        self.num_features = c
        self.pool = nn.AdaptiveAvgPool2d(1)
        if cfg.head_hidden:
            self.head = nn.Sequential(nn.Linear(c, cfg.head_hidden), nn.ReLU(), nn.Linear(cfg.head_hidden, num_classes))
        else:
            self.head = nn.Linear(c, num_classes)

    def forward_features(self, x: Tensor) -> Tensor:
        """(N, C, H, W) -> (N, widths[-1], H', W') feature map."""
        return self.stages(self.stem(x))

    def forward_head(self, x: Tensor) -> Tensor:
        """(N, widths[-1], H', W') -> logits (N, num_classes)."""
        return self.head(self.pool(x).flatten(1))

    def forward(self, x: Tensor) -> Tensor:
        return self.forward_head(self.forward_features(x))


_PAPER = "defectlite; RepVGG blocks after Xie & Shen 2022"


@register_model(input_size=(1, 200, 200), reparameterizable=True, paper=_PAPER)
def cpu_repnet_s(*, num_classes: int, in_chans: int = 1) -> CpuRepNet:
    """CpuRepNet-S: 4x4 patch stem (16), RepConv3x3 stages 16 (x2) - 32 (x4) - 128, ReLU, GAP + linear.

    75,062 deployed params, 10.8 M MACs at 1 x 200 x 200 (6 classes). ONNX Runtime 1.32 on a 2-core
    AMD EPYC (Zen 4, AVX-512 + VNNI), same run as timm mobilenetv3_small_050 at 200 x 200: batch-1
    latency (1 thread) 0.30x fp32, 0.18x int8 (vs its int8); batch-64 throughput (2 threads) ~4x fp32.
    """
    return CpuRepNet(CpuRepNetCfg(), num_classes=num_classes, in_chans=in_chans)


@register_model(input_size=(1, 200, 200), reparameterizable=True, paper=_PAPER)
def cpu_repnet_m(*, num_classes: int, in_chans: int = 1) -> CpuRepNet:
    """CpuRepNet-M: CpuRepNet-S with a 256-wide last stage, as EG-RepVGG's 256-channel last block.

    112,822 deployed params, 12.6 M MACs at 1 x 200 x 200 (6 classes). Same machine and run as
    ``cpu_repnet_s``: batch-1 latency 0.35x fp32, 0.20x int8; batch-64 throughput ~3.4x fp32.
    """
    return CpuRepNet(CpuRepNetCfg(widths=(16, 32, 256)), num_classes=num_classes, in_chans=in_chans)
