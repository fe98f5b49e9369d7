"""CpuRepNet: layout, SIMD-aligned widths, and fusion equality of the non-default options (act, ECA, MLP head)."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from defectlite.compress.reparam import reparameterize
from defectlite.evaluate.profile import count_macs, count_params
from defectlite.models import create_model
from defectlite.models.cpu_repnet import CpuRepNet, CpuRepNetCfg
from test_models import randomize_bn


@pytest.mark.parametrize(
    ("name", "params", "channels"), [("cpu_repnet_s", 75_062, 128), ("cpu_repnet_m", 112_822, 256)]
)
def test_registered_sizes_layout_and_cost(name, params, channels):
    model = reparameterize(create_model(name, num_classes=6, in_chans=1))
    assert count_params(model) == params
    assert 10e6 < count_macs(model, (1, 1, 200, 200)) < 13e6
    assert model.forward_features(torch.zeros(1, 1, 200, 200)).shape == (1, channels, 7, 7)
    convs = [m for m in model.modules() if isinstance(m, nn.Conv2d)]
    assert len(convs) == 8 and all(c.out_channels % 16 == 0 for c in convs)  # ORT NCHWc block on AVX-512


@pytest.mark.parametrize(
    "cfg",
    [
        CpuRepNetCfg(act="hardswish", eca="stage"),
        CpuRepNetCfg(act="gelu", eca="block", head_hidden=32),
        CpuRepNetCfg(patch=5, widths=(32, 64), depths=(1, 2)),
    ],
)
def test_options_fuse_equal(cfg):
    torch.manual_seed(0)
    model = randomize_bn(CpuRepNet(cfg, num_classes=7)).eval()
    x = torch.randn(2, 1, 96, 96)
    with torch.no_grad():
        ref, fused = model(x), reparameterize(model)(x)
    assert (ref - fused).abs().max().item() <= 1e-4 * max(1.0, ref.abs().max().item())


def test_bad_config_is_refused():
    with pytest.raises(ValueError, match="pair up"):
        CpuRepNet(CpuRepNetCfg(widths=(16, 32), depths=(1,)), num_classes=6)
    with pytest.raises(ValueError, match="act must be"):
        CpuRepNet(CpuRepNetCfg(act="silu"), num_classes=6)
