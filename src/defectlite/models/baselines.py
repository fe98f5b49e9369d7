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


def _torchvision_first_conv(model: nn.Module, path: str, in_chans: int) -> nn.Module:
    """Replace the Conv2d at ``path`` (dotted attribute path) with one taking ``in_chans`` inputs."""
    *parents, leaf = path.split(".")
    parent = model
    for p in parents:
        parent = parent[int(p)] if p.isdigit() else getattr(parent, p)
    old = parent[int(leaf)] if leaf.isdigit() else getattr(parent, leaf)
    new = nn.Conv2d(in_chans, old.out_channels, old.kernel_size, old.stride, old.padding, bias=old.bias is not None)
    if leaf.isdigit():
        parent[int(leaf)] = new
    else:
        setattr(parent, leaf, new)
    return model


@register_model(input_size=(1, 400, 487), paper="He et al. 2016; WeldNet paper Table 2")
def resnet34(*, num_classes: int, in_chans: int = 1, pretrained: bool = False) -> nn.Module:
    """ResNet-34 (timm): 21.28 M params at 6 classes, 1 channel (WeldNet Table 2: 2.13 x 10^7; input 1 x 400 x 487)."""
    return timm_model("resnet34", num_classes=num_classes, in_chans=in_chans, pretrained=pretrained)


@register_model(input_size=(1, 400, 487), paper="He et al. 2016; WeldNet paper Table 2")
def resnet50(*, num_classes: int, in_chans: int = 1, pretrained: bool = False) -> nn.Module:
    """ResNet-50 (timm): 23.51 M params at 6 classes, 1 channel (WeldNet Table 2: 2.35 x 10^7; input 1 x 400 x 487)."""
    return timm_model("resnet50", num_classes=num_classes, in_chans=in_chans, pretrained=pretrained)


@register_model(input_size=(1, 28, 28), paper="Sandler et al. 2018; casting paper Tables 2-3")
def mobilenetv2(*, num_classes: int, in_chans: int = 1, pretrained: bool = False) -> nn.Module:
    """MobileNetV2 1.0x (timm ``mobilenetv2_100``): 2.24 M params at 10 classes (casting paper Table 3: 3.5 M
    with ImageNet head; input 1 x 28 x 28)."""
    return timm_model("mobilenetv2_100", num_classes=num_classes, in_chans=in_chans, pretrained=pretrained)


@register_model(input_size=(1, 400, 487), paper="Howard et al. 2019; WeldNet Table 2")
def mobilenetv3_small_100(*, num_classes: int, in_chans: int = 1, pretrained: bool = False) -> nn.Module:
    """MobileNetV3-Small 1.0x (timm): 1.52 M params at 6 classes (WeldNet Table 2: 0.13 x 10^7; input 1 x 400 x 487)."""
    return timm_model("mobilenetv3_small_100", num_classes=num_classes, in_chans=in_chans, pretrained=pretrained)


@register_model(input_size=(1, 400, 487), paper="Howard et al. 2019; WeldNet Table 2; PDMSNet Table 5")
def mobilenetv3_large_100(*, num_classes: int, in_chans: int = 1, pretrained: bool = False) -> nn.Module:
    """MobileNetV3-Large 1.0x (timm): 4.21 M params at 6 classes (WeldNet: 0.42 x 10^7; PDMSNet Table 5: 4.21 M,
    226.44 M FLOPs at 224; input 1 x 400 x 487)."""
    return timm_model("mobilenetv3_large_100", num_classes=num_classes, in_chans=in_chans, pretrained=pretrained)


@register_model(input_size=(1, 224, 224), paper="Ma et al. 2018 (ShuffleNetV2)")
def shufflenetv2(*, num_classes: int, in_chans: int = 1) -> nn.Module:
    """ShuffleNetV2 1.0x (torchvision ``shufflenet_v2_x1_0``, stem conv rebuilt for ``in_chans``): 1.26 M params
    at 6 classes, 1 channel; input 1 x 224 x 224. Random weights only."""
    from torchvision.models import shufflenet_v2_x1_0

    return _torchvision_first_conv(shufflenet_v2_x1_0(num_classes=num_classes), "conv1.0", in_chans)


@register_model(input_size=(1, 224, 224), paper="Tan & Le 2019 (MixConv); PDMSNet Table 5")
def mixnet_s(*, num_classes: int, in_chans: int = 1, pretrained: bool = False) -> nn.Module:
    """MixNet-S (timm): 2.61 M params at 6 classes (PDMSNet Table 5 "MixNet": 4.13 M, 251.82 M FLOPs; input
    1 x 224 x 224)."""
    return timm_model("mixnet_s", num_classes=num_classes, in_chans=in_chans, pretrained=pretrained)


@register_model(input_size=(1, 400, 487), paper="Szegedy et al. 2016; WeldNet Table 2; casting paper Table 3")
def inception_v3(*, num_classes: int, in_chans: int = 1, pretrained: bool = False) -> nn.Module:
    """Inception-v3 (timm, no aux head): 21.80 M params at 6 classes (WeldNet Table 2: 2.18 x 10^7; input
    1 x 400 x 487). Needs at least 75 x 75 pixels."""
    return timm_model("inception_v3", num_classes=num_classes, in_chans=in_chans, pretrained=pretrained)


@register_model(input_size=(1, 224, 224), paper="Simonyan & Zisserman 2015")
def vgg16(*, num_classes: int, in_chans: int = 1, pretrained: bool = False) -> nn.Module:
    """VGG-16 (timm, conv-MLP head that pools inputs under 224 px): 134.3 M params at 6 classes; input 1 x 224 x 224."""
    return timm_model("vgg16", num_classes=num_classes, in_chans=in_chans, pretrained=pretrained)


@register_model(input_size=(1, 224, 224), paper="Iandola et al. 2016 (SqueezeNet 1.1)")
def squeezenet1_1(*, num_classes: int, in_chans: int = 1) -> nn.Module:
    """SqueezeNet 1.1 (torchvision, stem conv rebuilt for ``in_chans``): 724,422 params at 6 classes, 1 channel;
    input 1 x 224 x 224. Random weights only. (SqueezeNet 1.0, PDMSNet's base, is ``squeezenet1_0``.)"""
    from torchvision.models import squeezenet1_1 as tv_squeezenet1_1

    return _torchvision_first_conv(tv_squeezenet1_1(num_classes=num_classes), "features.0", in_chans)


@register_model(input_size=(1, 224, 224), paper="Dosovitskiy et al. 2021; casting paper Tables 2-3")
def vit_tiny(*, num_classes: int, in_chans: int = 1, pretrained: bool = False) -> nn.Module:
    """ViT-Tiny/16 (timm ``vit_tiny_patch16_224``, ``img_size`` = 224, the registry input): 5.43 M params at
    6 classes. Position embeddings are interpolated for other sizes and inputs are padded to a multiple
    of 16 (``dynamic_img_size``, ``dynamic_img_pad``), so any input of at least 16 x 16 works."""
    return timm_model(
        "vit_tiny_patch16_224",
        num_classes=num_classes,
        in_chans=in_chans,
        pretrained=pretrained,
        img_size=224,
        dynamic_img_size=True,
        dynamic_img_pad=True,
    )
