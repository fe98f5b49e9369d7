"""Reference networks built by timm (never with downloaded weights): the papers' teachers and baselines."""

from __future__ import annotations

from torch import nn

from defectlite.models._registry import register_model


def timm_model(name: str, *, num_classes: int, in_chans: int = 1, pretrained: bool = False, **kwargs) -> nn.Module:
    """Build ``timm.create_model(name)`` with ``num_classes`` and ``in_chans``.

    ``pretrained=True`` needs weights in the local timm / Hugging Face cache; nothing is downloaded
    on machines without network access (the call fails with timm's own error).
    """
    import timm

    return timm.create_model(name, pretrained=pretrained, num_classes=num_classes, in_chans=in_chans, **kwargs)


@register_model(input_size=(1, 200, 200), reparameterizable=True, paper="Ding et al. 2021; teacher of Xie & Shen 2022")
def repvgg_a0(*, num_classes: int, in_chans: int = 1, pretrained: bool = False) -> nn.Module:
    """RepVGG-A0 (timm), the KD-EG-RepVGG paper's teacher: 7.04 M params, 1.36 G FLOPs at 224 (paper)."""
    return timm_model("repvgg_a0", num_classes=num_classes, in_chans=in_chans, pretrained=pretrained)


@register_model(input_size=(1, 200, 200), paper="He et al. 2016")
def resnet18(*, num_classes: int, in_chans: int = 1, pretrained: bool = False) -> nn.Module:
    """ResNet-18 (timm): 11.2 M params with 6 classes."""
    return timm_model("resnet18", num_classes=num_classes, in_chans=in_chans, pretrained=pretrained)


@register_model(input_size=(1, 200, 200), paper="Howard et al. 2019")
def mobilenetv3_small_050(*, num_classes: int, in_chans: int = 1, pretrained: bool = False) -> nn.Module:
    """MobileNetV3-Small 0.5x (timm): the CPU-latency yardstick of the benchmarks."""
    return timm_model("mobilenetv3_small_050", num_classes=num_classes, in_chans=in_chans, pretrained=pretrained)
