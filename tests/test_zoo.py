"""The model zoo of issue 3: every registry model trains a step; paper parameter counts; fused forms.

CPU budget: forward + backward at the smallest input each model is meant for (batch 2), so the
whole file runs in well under a minute on 2 cores, vgg16 and resnet50 included.
"""

from __future__ import annotations

import pytest
import torch
from torch import nn

from defectlite.compress.reparam import reparameterize
from defectlite.evaluate.profile import count_params
from defectlite.layers.dms import MixedDepthwiseSeparable
from defectlite.layers.fire import Fire
from defectlite.layers.weld_block import WeldBlock
from defectlite.models import create_model, list_models, model_info
from test_models import randomize_bn

NUM_CLASSES = 7  # a number no default uses


def small_side(name: str) -> int:
    """Smallest square input we test a model at (Inception-v3 needs at least 75 px)."""
    return 75 if name == "inception_v3" else 32


@pytest.mark.parametrize("name", list_models())
def test_zoo_model_trains_a_step(name):
    torch.manual_seed(0)
    model = create_model(name, num_classes=NUM_CLASSES, in_chans=1).train()
    side = small_side(name)
    out = model(torch.randn(2, 1, side, side))
    assert out.shape == (2, NUM_CLASSES) and torch.isfinite(out).all()
    out.logsumexp(1).sum().backward()
    missing = [n for n, p in model.named_parameters() if p.requires_grad and p.grad is None]
    assert not missing, f"no gradient for {missing[:3]}"


@pytest.mark.parametrize("name", list_models())
def test_zoo_model_info_is_complete(name):
    info = model_info(name)
    assert info.paper and len(info.input_size) == 3
    assert info.fn.__doc__


# PDMSNet Table 2 (3 x 224 x 224 input, 6 classes): registry name -> paper's parameter count.
PDMSNET_TABLE2 = {
    "squeezenet1_0": 738_502,
    "squeezenet_bn_sc": 744_262,
    "squeezenet_dsc": 255_942,
    "squeezenet_dms": 261_446,
    "pdmsnet": 168_014,
}


@pytest.mark.parametrize("name", list(PDMSNET_TABLE2))
def test_pdmsnet_ablation_matches_table2_params(name):
    n = count_params(create_model(name, num_classes=6, in_chans=3))
    assert abs(n - PDMSNET_TABLE2[name]) <= 0.05 * PDMSNET_TABLE2[name]
    if name in ("squeezenet1_0", "squeezenet_bn_sc", "squeezenet_dsc"):
        assert n == PDMSNET_TABLE2[name]  # these three are exact


def test_weldnet_is_about_3m_params_and_a_quarter_of_resnet18():
    weldnet = count_params(create_model("weldnet", num_classes=6, in_chans=1))
    resnet18 = count_params(create_model("resnet18", num_classes=6, in_chans=1))
    assert abs(weldnet - 3.0e6) <= 0.1 * 3.0e6
    assert abs(weldnet / resnet18 - 0.268) < 0.01  # paper: 26.8 %


@pytest.mark.parametrize("size", ["140k", "340k", "590k"])
def test_casting_cnns_have_the_papers_sizes(size):
    target = int(size[:-1]) * 1000
    for family in ("dsc_cnn", "conv3_cnn"):
        n = count_params(create_model(f"{family}_{size}", num_classes=10, in_chans=1))
        assert abs(n - target) <= 0.05 * target, (family, n)


def test_casting_cnn_blurpool_and_se_options():
    plain = create_model("dsc_cnn_590k", num_classes=10)
    both = create_model("dsc_cnn_590k", num_classes=10, blurpool=True, se=True)
    from timm.layers import BlurPool2d, SEModule

    assert sum(isinstance(m, BlurPool2d) for m in both.modules()) == 3
    assert sum(isinstance(m, SEModule) for m in both.modules()) == 12
    assert count_params(both) > count_params(plain)
    assert both(torch.randn(2, 1, 28, 28)).shape == (2, 10)


@pytest.mark.parametrize("name", [n for n in list_models() if model_info(n).reparameterizable])
def test_zoo_reparameterized_equals_training_form(name):
    torch.manual_seed(0)
    model = randomize_bn(create_model(name, num_classes=NUM_CLASSES, in_chans=1)).eval()
    x = torch.randn(1, 1, 48, 48)
    with torch.no_grad():
        ref = model(x)
        fused = reparameterize(model)(x)
    assert (ref - fused).abs().max().item() <= 1e-4 * max(1.0, ref.abs().max().item())


def test_blocks_shapes_and_errors():
    x = torch.randn(2, 8, 15, 16)
    assert WeldBlock(8, 16, stride=2, expansion=3).eval()(x).shape == (2, 16, 8, 8)
    dms = MixedDepthwiseSeparable(16, 32)  # 16 channels -> kernel groups 6/5/5
    assert count_params(dms) == 9 * 6 + 25 * 5 + 49 * 5 + 16 + 16 * 32 + 32
    fire = Fire(16, 8, 8, bn=True, shortcut=True, expand3=(3, 5, 7))
    assert fire(torch.randn(2, 16, 9, 9)).shape == (2, 16, 9, 9)
    with pytest.raises(ValueError, match="shortcut"):
        Fire(16, 8, 16, shortcut=True)
    with pytest.raises(ValueError, match="odd"):
        MixedDepthwiseSeparable(8, 8, (3, 4))
    with pytest.raises(ValueError, match="stride"):
        WeldBlock(8, 8, stride=3)
    assert isinstance(create_model("squeezenet1_1", num_classes=3, in_chans=1).features[0], nn.Conv2d)
