"""Training-loop building blocks: schedules, weight averaging, augmentation switches, compare specs."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from defectlite.cli.compare import split_models
from defectlite.data.augment import train_augment
from defectlite.errors import ConfigError, DataError
from defectlite.models import create_model
from defectlite.train.averaging import WeightAverage
from defectlite.train.config import OptimCfg
from defectlite.train.loop import lr_at
from defectlite.workflows.comparison import parse_model_spec


def test_lr_schedules():
    cos = OptimCfg(epochs=10, lr=0.1, warmup_epochs=1, schedule="cosine")
    assert lr_at(0, cos) == pytest.approx(0.01)  # warm-up starts at lr / 10
    assert lr_at(1, cos) == pytest.approx(0.1)
    assert lr_at(5.5, cos) == pytest.approx(0.05)
    assert lr_at(10, cos) == pytest.approx(0.0)
    step = OptimCfg(epochs=25, lr=0.01, warmup_epochs=0, schedule="multistep", milestones=[15], gamma=0.1)
    assert lr_at(14.9, step) == pytest.approx(0.01) and lr_at(15, step) == pytest.approx(0.001)  # WeldNet paper
    swa = OptimCfg(epochs=10, lr=0.1, warmup_epochs=0, swa_epochs=3, swa_lr=0.02)
    assert lr_at(6.9, swa) > 0.02 and lr_at(7, swa) == 0.02
    with pytest.raises(ValueError, match="schedule"):
        lr_at(3, OptimCfg(schedule="linear", warmup_epochs=0))


def test_weight_average_swa_averages_epoch_ends():
    model = create_model("eg_repvgg", num_classes=3)
    avg = WeightAverage(model, OptimCfg(epochs=4, swa_epochs=2, ema_decay=0.0))
    assert avg.eval_model(model, 1) is model  # SWA has not begun
    p = next(model.parameters())
    seen = []
    for epoch in range(4):
        with torch.no_grad():
            p.fill_(float(epoch))
        seen.append(float(epoch))
        avg.after_epoch(model, epoch, lambda: [torch.randn(4, 1, 32, 32)])
    averaged = next(avg.eval_model(model, 3).parameters())
    assert torch.allclose(averaged, torch.full_like(averaged, (2 + 3) / 2))  # mean of the last 2 epoch ends
    with pytest.raises(ConfigError, match="not both"):
        WeightAverage(model, OptimCfg(swa_epochs=2, ema_decay=0.99))


def test_augment_switches_keep_uint8_shape():
    aug = train_augment(rotate_deg=10, brightness=0.2, contrast=0.2, erasing=1.0)
    x = torch.full((3, 1, 48, 48), 128, dtype=torch.uint8)
    y = aug(x)
    assert y.shape == x.shape and y.dtype == torch.uint8
    assert all((yi == 0).any() for yi in y)  # the erased rectangle (and rotation corners) are zero
    images, labels = aug.collate([(xi, torch.tensor(i)) for i, xi in enumerate(x)])
    assert images.shape == x.shape and labels.tolist() == [0, 1, 2]
    assert train_augment(hflip=False, vflip=False) is None


@pytest.mark.parametrize("size", [(200, 200), (120, 200)])
def test_batch_rotation_equals_torchvision_rotate_per_image(size):
    """Each image of the batch turns by its own angle exactly as ``torchvision``'s ``rotate`` turns it alone
    (a real NEU image; square and non-square)."""
    from PIL import Image
    from torchvision.transforms.v2 import InterpolationMode
    from torchvision.transforms.v2 import functional as TF

    from conftest import data_root
    from defectlite.data.augment import BatchRotation

    img = Image.open(data_root() / "neu-surface-defect" / "images" / "scratches_1.jpg").convert("L")
    x = torch.from_numpy(np.array(img.resize(size[::-1])))[None]
    angles = torch.tensor([-10.0, 3.5, 10.0, 90.0])
    ours = BatchRotation(10)(torch.stack([x] * 4), angles)
    for a, got in zip(angles.tolist(), ours):
        ref = TF.rotate(x, a, interpolation=InterpolationMode.BILINEAR)
        assert (got.int() - ref.int()).abs().max() <= 1, a  # equal here; 1 grey level of rounding allowed
    assert not torch.equal(ours[0], ours[2])  # each image its own angle
    with pytest.raises(DataError, match="degrees"):
        BatchRotation(0)


@pytest.mark.parametrize("mode", ["L", "RGB"])
def test_batch_flips_and_jitter_equal_torchvision_per_image(mode):
    """Each image of the batch is flipped and brightness / contrast-jittered by its own draw exactly as
    ``torchvision``'s ``horizontal_flip`` / ``adjust_brightness`` / ``adjust_contrast`` do it alone, in its own
    order (a real NEU image, grey and 3-channel)."""
    from PIL import Image
    from torchvision.transforms.v2 import functional as TF

    from conftest import data_root
    from defectlite.data.augment import BatchColorJitter, BatchFlip

    img = Image.open(data_root() / "neu-surface-defect" / "images" / "scratches_1.jpg").convert(mode)
    x = torch.from_numpy(np.array(img)).reshape(200, 200, -1).permute(2, 0, 1).contiguous()
    if mode == "RGB":
        x[0] //= 2  # channels that differ, so the grey mean of contrast matters
    n = 16
    g = torch.Generator().manual_seed(0)
    b = torch.empty(n).uniform_(0.5, 1.5, generator=g)
    c = torch.empty(n).uniform_(0.5, 1.5, generator=g)
    contrast_first = torch.arange(n) % 2 == 0
    flip = torch.arange(n) % 3 == 0
    flipped = BatchFlip(-1)(torch.stack([x] * n), flip)
    ours = BatchColorJitter(0.5, 0.5)(flipped, (b, c, contrast_first))
    for i in range(n):
        ref = TF.horizontal_flip(x) if flip[i] else x
        assert torch.equal(flipped[i], ref)
        bi, ci = b[i].item(), c[i].item()
        if contrast_first[i]:
            ref = TF.adjust_brightness(TF.adjust_contrast(ref, ci), bi)
        else:
            ref = TF.adjust_contrast(TF.adjust_brightness(ref, bi), ci)
        assert torch.equal(ours[i], ref), i
    swapped = BatchColorJitter(0.5, 0.5)(flipped, (b, c, ~contrast_first))
    assert not torch.equal(swapped, ours)  # the order per image matters, so the test can tell
    drawn = BatchColorJitter(0.2, 0.2)(torch.stack([x] * n))
    assert len({int(d.sum()) for d in drawn}) == n  # each image its own factors
    torch.manual_seed(0)
    strong = BatchColorJitter(1.5, 0)(torch.stack([x] * 64))
    black = sum(int(d.max()) == 0 for d in strong)  # factors from [0, 2.5] as torchvision's, not [-0.5, 2.5]
    assert black <= 1  # negative factors would blacken about 1 image in 6
    with pytest.raises(DataError, match="jitter"):
        BatchColorJitter(0, 0)


def test_compare_model_specs():
    assert split_models("a,dsc_cnn_140k[blurpool=true,se=true], timm:resnet18") == [
        "a",
        "dsc_cnn_140k[blurpool=true,se=true]",
        "timm:resnet18",
    ]
    assert parse_model_spec("dsc_cnn_140k[blurpool=true,se=false]") == ("dsc_cnn_140k", {"blurpool": True, "se": False})
    assert parse_model_spec("eg_repvgg") == ("eg_repvgg", {})


def test_autocast_auto_uses_bf16_only_on_native_hardware(monkeypatch):
    from defectlite.train import loop

    assert OptimCfg().amp == "auto"
    x = torch.randn(2, 4)
    w = torch.randn(4, 3)
    for native in (False, True):
        monkeypatch.setattr(torch.cpu, "_is_avx512_bf16_supported", lambda n=native: n)
        monkeypatch.setattr(torch.cpu, "_is_amx_tile_supported", lambda: False)
        assert loop.resolve_amp("auto", "cpu") == ("bf16" if native else "off")
        with loop.autocast("auto", "cpu"):
            assert (x @ w).dtype == (torch.bfloat16 if native else torch.float32)
    assert loop.resolve_amp("bf16") == "bf16" and loop.resolve_amp("fp32") == "off"
    with pytest.raises(ValueError, match="unknown amp mode 'fp16'"):
        loop.autocast("fp16")


def test_nhwc_unsafe_convs_are_exactly_the_1x1_strided_ones_on_under_16_channels():
    from defectlite.train.device import nhwc_unsafe_convs, resolve_memory_format

    def conv(c, k, s):
        return torch.nn.Sequential(torch.nn.Conv2d(8, 8, 3), torch.nn.Conv2d(c, 32, k, s))

    assert nhwc_unsafe_convs(conv(15, 1, 2)) == ["1"] and nhwc_unsafe_convs(conv(1, 1, (2, 1))) == ["1"]
    assert not any(nhwc_unsafe_convs(conv(*a)) for a in [(16, 1, 2), (15, 1, 1), (15, 3, 2), (1, 2, 2)])
    assert resolve_memory_format(conv(15, 1, 2), True, "cpu") == torch.contiguous_format
    assert resolve_memory_format(conv(16, 1, 2), True, "cpu") == torch.channels_last
    assert resolve_memory_format(conv(16, 1, 2), False, "cpu") == torch.contiguous_format


def test_time_limit_estimates_the_next_epoch_from_the_epochs_after_the_first():
    from defectlite.train.loop import _out_of_time
    from defectlite.train.state import StageState

    history = [{"epoch_s": 13.6}, {"epoch_s": 10.3}, {"epoch_s": 10.5}]  # epoch 0 is slower (kernel set-up)
    state = StageState(epoch=2, train_seconds=34.4)
    limit = (34.4 + 10.4 + 0.2) / 60  # room for a 10.4 s epoch (the median after the first), not a 11.5 s mean one
    assert not _out_of_time(OptimCfg(time_limit_minutes=limit), state, history)
    assert _out_of_time(OptimCfg(time_limit_minutes=(34.4 + 10.2) / 60), state, history)
    assert not _out_of_time(OptimCfg(time_limit_minutes=1e-9), StageState(), [])  # the first epoch always runs
    assert not _out_of_time(OptimCfg(), state, history)  # 0 = no limit


@pytest.mark.parametrize("name", ["cpu_repnet_m", "dsc_cnn_140k", "pdmsnet", "weldnet", "mobilenetv3_small_050",
                                  "eg_repvgg", "yolo_lite"])  # fmt: skip
def test_channels_last_convs_give_the_nchw_gradients(name, shared_data):
    """Where the loop trains NHWC (the default), each conv of the model, fed the input it sees on real NEU images,
    gives the NCHW weight and input gradients; models with oneDNN's broken 1x1 strided NHWC backward (oneDNN#6035:
    a crash or wrong weight gradients) are kept NCHW. Layer by layer, as a conv is linear: whole untrained nets are
    chaotic enough in float32 (a ReLU input ~0 flips with the summation order) to hide a kernel bug."""
    from PIL import Image

    from defectlite.models.yolo import yolo_lite
    from defectlite.train.device import autocast, nhwc_unsafe_convs, resolve_amp, resolve_memory_format

    files = [
        shared_data / "neu-surface-defect" / "images" / f"{c}_1.jpg" for c in ("crazing", "inclusion", "scratches")
    ]
    x = torch.from_numpy(np.stack([np.asarray(Image.open(f).convert("L")) for f in files])[:, None] / 255.0)
    x = x.float()[..., :160, :160]  # (3, 1, 160, 160): strides 8/16/32 divide it for the detector
    torch.manual_seed(0)
    model = yolo_lite(num_classes=6) if name == "yolo_lite" else create_model(name, num_classes=6, in_chans=1)
    fmt = resolve_memory_format(model, True, "cpu")
    assert (fmt == torch.contiguous_format) == (name == "eg_repvgg") == bool(nhwc_unsafe_convs(model))
    if fmt == torch.contiguous_format:
        return
    inputs: dict[str, torch.Tensor] = {}
    convs = {n: m for n, m in model.named_modules() if isinstance(m, torch.nn.Conv2d)}

    def keep_input(name):
        def hook(module, args, output):  # returns None: the output stays as it is
            inputs.setdefault(name, args[0])

        return hook

    hooks = [m.register_forward_hook(keep_input(n)) for n, m in convs.items()]
    with torch.no_grad():
        model(x)
    for h in hooks:
        h.remove()
    assert len(inputs) == len(convs) > 5

    def grads(conv, inp, memory_format, amp):
        conv = conv.to(memory_format=memory_format)
        conv.zero_grad()
        inp = inp.clone().contiguous(memory_format=memory_format).requires_grad_(True)
        with autocast(amp, "cpu"):
            out = conv(inp)
        out.float().backward(torch.linspace(-1, 1, out.numel()).view_as(out).contiguous(memory_format=memory_format))
        return conv.weight.grad.clone(), inp.grad.clone()

    # float32, and bf16 autocast (other oneDNN kernels) where training would use it; bf16 keeps 8 mantissa bits
    for amp, tol in [("off", 1e-4)] + [("bf16", 2e-2)] * (resolve_amp("auto", "cpu") == "bf16"):
        for n, conv in convs.items():
            nchw, nhwc = (
                grads(conv, inputs[n], torch.contiguous_format, amp),
                grads(conv, inputs[n], torch.channels_last, amp),
            )
            for a, b in zip(nchw, nhwc):
                assert float((b - a).abs().max()) <= tol * float(a.abs().max()) + 1e-7, (amp, n, conv)
