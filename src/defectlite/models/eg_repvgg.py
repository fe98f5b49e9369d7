"""EG-RepVGG: RepVGG blocks with ECA attention and GELU (Xie & Shen 2022, Electronics 11, 4218).

Table 1 of the paper, at a 200 x 200 input:

=================  ======  ========  ==============  ===================
block              output  channels  train params*   inference params*
=================  ======  ========  ==============  ===================
D-RepVGGBlock1     100     9         309             252
D-RepVGGBlock2     50      9         849             738
D-RepVGGBlock3     25      19        1,789           1,558
S-RepVGGBlock1     25      19        3,727           3,268
D-RepVGGBlock4     13      38        7,375           6,536
S-RepVGGBlock2-4   13      38        14,671 each     13,034 each
D-RepVGGBlock5     7       256       98,307          87,808
classifier         1       6         1,542           1,542
=================  ======  ========  ==============  ===================

(*) with a 3-channel input. The paper's training counts include the 3 weights of each ECA
Conv1d, its inference counts leave them out; we count them in both, and our blocks match the
table exactly (a test checks it). With ``in_chans=1`` (grey, our default) and 6 classes the model
has 157,731 training and 140,669 inference parameters (paper: 0.14 M) and 17.6 M MACs per
200 x 200 image (10.3 M at 160 x 160; paper: "0.03 G FLOPs", abstract "22.3 M").

Where the paper is silent we chose: ECA then GELU after the branch sum (Section 2.3: "GELU is
applied after the ECA network"), so neither is touched by re-parameterisation; D-blocks
(stride 2) have no identity branch, S-blocks (stride 1, equal widths) do.
"""

from __future__ import annotations

from dataclasses import dataclass

from torch import Tensor, nn

from defectlite.layers.eca import Eca
from defectlite.layers.rep_conv import RepConv3x3
from defectlite.models._registry import register_model


@dataclass(frozen=True)
class EgRepVggCfg:
    """Stage layout of EG-RepVGG (Xie & Shen 2022, Table 1)."""

    widths: tuple[int, ...] = (9, 9, 19, 19, 38, 38, 38, 38, 256)  # output channels per block
    strides: tuple[int, ...] = (2, 2, 2, 1, 2, 1, 1, 1, 2)  # 2 = D-block, 1 = S-block (identity branch)
    eca_kernel: int = 3  # Conv1d kernel of the ECA attention (0 = no ECA)
    act: str = "gelu"  # "gelu" (EG-RepVGG) or "relu" (plain RepVGG)


class EgRepVgg(nn.Module):
    """A plain stack of :class:`RepConv3x3` blocks, then global average pooling and a linear head.

    Shapes: x (N, in_chans, H, W) -> logits (N, num_classes); features (N, widths[-1], H/32, W/32).
    """

    def __init__(self, cfg: EgRepVggCfg, *, num_classes: int, in_chans: int = 1) -> None:
        super().__init__()
        if len(cfg.widths) != len(cfg.strides):
            raise ValueError(f"widths and strides differ in length: {cfg.widths} vs {cfg.strides}")
        self.cfg, self.num_classes, self.in_chans = cfg, num_classes, in_chans
        blocks, c = [], in_chans
        for w, s in zip(cfg.widths, cfg.strides):
            attn = Eca(w, kernel_size=cfg.eca_kernel) if cfg.eca_kernel else None
            act = nn.GELU() if cfg.act == "gelu" else nn.ReLU()
            blocks.append(RepConv3x3(c, w, stride=s, attn=attn, act=act))
            c = w
        self.blocks = nn.Sequential(*blocks)
        self.num_features = c
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.head = nn.Linear(c, num_classes)

    def forward_features(self, x: Tensor) -> Tensor:
        """(N, C, H, W) -> (N, widths[-1], H', W') feature map."""
        return self.blocks(x)

    def forward_head(self, x: Tensor) -> Tensor:
        """(N, widths[-1], H', W') -> logits (N, num_classes)."""
        return self.head(self.pool(x).flatten(1))

    def forward(self, x: Tensor) -> Tensor:
        return self.forward_head(self.forward_features(x))


@register_model(input_size=(1, 200, 200), reparameterizable=True, paper="Xie & Shen 2022, Table 1")
def eg_repvgg(
    *,
    num_classes: int,
    in_chans: int = 1,
    act: str = "gelu",
    eca_kernel: int = 3,
    widths: tuple[int, ...] | list[int] | None = None,
) -> EgRepVgg:
    """EG-RepVGG as in Table 1: 140,669 inference params (1 x 200 x 200, 6 classes; paper 0.14 M).

    ``act``, ``eca_kernel`` and ``widths`` (9 block widths) exist for the ablation from Table 1 to
    ``cpu_repnet`` (benchmarks/ablation.py); the defaults are the paper's.
    """
    cfg = EgRepVggCfg(act=act, eca_kernel=eca_kernel, **({"widths": tuple(widths)} if widths else {}))
    return EgRepVgg(cfg, num_classes=num_classes, in_chans=in_chans)


@register_model(input_size=(1, 200, 200), reparameterizable=True, paper="Xie & Shen 2022, Table 3 (no ECA/GELU)")
def repvgg_tiny(*, num_classes: int, in_chans: int = 1) -> EgRepVgg:
    """The EG-RepVGG layout with plain RepVGG blocks (ReLU, no ECA): the ablation baseline."""
    return EgRepVgg(EgRepVggCfg(eca_kernel=0, act="relu"), num_classes=num_classes, in_chans=in_chans)


@register_model(input_size=(1, 200, 200), reparameterizable=True, paper="defectlite: 2x-wide EG-RepVGG teacher")
def eg_repvgg_x2(*, num_classes: int, in_chans: int = 1) -> EgRepVgg:
    """EG-RepVGG with every width doubled (558,415 inference params at 6 classes): a CPU-cheap teacher."""
    cfg = EgRepVggCfg(widths=(18, 18, 38, 38, 76, 76, 76, 76, 512))
    return EgRepVgg(cfg, num_classes=num_classes, in_chans=in_chans)
