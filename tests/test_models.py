"""Registry, EG-RepVGG against Table 1, and re-parameterisation equivalence with random BN statistics."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from defectlite.compress.reparam import reparameterize
from defectlite.errors import UnknownModelError
from defectlite.evaluate.profile import count_macs, count_params
from defectlite.layers.rep_conv import RepConv3x3
from defectlite.models import create_model, list_models, model_info


def randomize_bn(model: nn.Module, seed: int = 0) -> nn.Module:
    """Random BN statistics and affine parameters (default ones hide fusion bugs)."""
    g = torch.Generator().manual_seed(seed)
    for m in model.modules():
        if isinstance(m, nn.BatchNorm2d):
            n = m.num_features
            m.running_mean.copy_(torch.randn(n, generator=g) * 0.5)
            m.running_var.copy_(torch.rand(n, generator=g) + 0.5)
            m.weight.data.copy_(torch.rand(n, generator=g) + 0.5)
            m.bias.data.copy_(torch.randn(n, generator=g) * 0.2)
    return model


def test_eg_repvgg_matches_table1_parameter_counts():
    # Table 1 of Xie & Shen 2022 lists inference params per block with a 3-channel input; the
    # paper omits the 3 ECA weights of each block there, we count them.
    model = reparameterize(create_model("eg_repvgg", num_classes=6, in_chans=3))
    per_block = [count_params(b) - 3 for b in model.blocks]
    assert per_block == [252, 738, 1558, 3268, 6536, 13034, 13034, 13034, 87808]
    assert count_params(model.head) == 1542
    train = create_model("eg_repvgg", num_classes=6, in_chans=3)
    assert [count_params(b) for b in train.blocks] == [309, 849, 1789, 3727, 7375, 14671, 14671, 14671, 98307]


def test_eg_repvgg_grey_input_is_under_016m_params():
    model = create_model("eg_repvgg", num_classes=6, in_chans=1)
    deployed = reparameterize(model)
    assert count_params(deployed) == 140_669 <= 160_000
    macs = count_macs(deployed, (1, 1, 200, 200))
    assert 15e6 < macs < 25e6  # paper: 22.3 M / "0.03 G" FLOPs


@pytest.mark.parametrize("name", [n for n in list_models() if model_info(n).reparameterizable])
def test_reparameterized_model_equals_training_form(name):
    torch.manual_seed(0)
    model = randomize_bn(create_model(name, num_classes=7, in_chans=1)).eval()
    x = torch.randn(2, 1, 96, 96)
    with torch.no_grad():
        ref = model(x)
        fused = reparameterize(model)(x)
    scale = ref.abs().max().item()
    assert (ref - fused).abs().max().item() <= 1e-4 * max(1.0, scale)
    assert not any(isinstance(m, nn.BatchNorm2d) for m in reparameterize(model).modules() if name != "repvgg_a0")


def test_rep_conv_refuses_training_mode_and_is_idempotent():
    block = RepConv3x3(4, 4)
    with pytest.raises(RuntimeError, match="eval mode"):
        block.reparameterize()
    block.eval().reparameterize()
    block.reparameterize()
    assert block.fused is not None


@pytest.mark.parametrize("name", list_models())
def test_every_model_forward_backward(name):
    model = create_model(name, num_classes=7, in_chans=1)
    x = torch.randn(2, 1, 96, 96)
    out = model(x)
    assert out.shape == (2, 7) and torch.isfinite(out).all()
    out.sum().backward()
    assert all(p.grad is not None for p in model.parameters() if p.requires_grad)


def test_timm_models_and_unknown_names():
    m = create_model("timm:mobilenetv3_small_050", num_classes=3, in_chans=1)
    assert m(torch.randn(1, 1, 64, 64)).shape == (1, 3)
    with pytest.raises(UnknownModelError, match="did you mean eg_repvgg"):
        create_model("eg_repvg", num_classes=6)
    with pytest.raises(UnknownModelError, match="unknown timm model"):
        create_model("timm:not_a_model_xyz", num_classes=6)
    with pytest.raises(ValueError, match="num_classes"):
        create_model("eg_repvgg", num_classes=0)
