"""Where training runs and in which precision and layout: device choice, bf16 autocast where the hardware has it,
and NHWC (channels_last) where oneDNN computes it right."""

from __future__ import annotations

import contextlib

import torch
from torch import nn


def resolve_device(device: str = "auto") -> torch.device:
    """``auto`` = CUDA when available, else CPU; otherwise the named device (``cpu``, ``cuda``, ``cuda:1``)."""
    if device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(device)


def native_bf16(device: torch.device | str = "cpu") -> bool:
    """Whether ``device`` computes bf16 in hardware: CUDA with bf16 support, or a CPU with AVX512-BF16 or
    AMX. Without it PyTorch emulates bf16 and training is slower than in float32 (measured on an AVX2-only
    CPU, 2 threads: EG-RepVGG 2.2x, PDMSNet 2.6x slower per step at 64 x 1 x 160 x 160)."""
    device = torch.device(device)
    if device.type == "cuda":
        return torch.cuda.is_bf16_supported()
    return bool(torch.cpu._is_avx512_bf16_supported() or torch.cpu._is_amx_tile_supported())


def resolve_amp(amp: str, device: torch.device | str = "cpu") -> str:
    """``auto`` -> ``bf16`` where :func:`native_bf16`, else ``off``; ``bf16`` / ``off`` pass through.

    Raises:
        ValueError: an unknown mode.
    """
    if amp == "auto":
        return "bf16" if native_bf16(device) else "off"
    modes = {"bf16": "bf16", "off": "off", "none": "off", "fp32": "off"}
    if amp not in modes:
        raise ValueError(f"unknown amp mode {amp!r} (auto, bf16 or off)")
    return modes[amp]


def autocast(amp: str, device: torch.device | str = "cpu"):
    """Autocast context for ``amp`` (see :func:`resolve_amp`): bf16 autocast, or a no-op for ``off``.

    Raises:
        ValueError: an unknown mode.
    """
    if resolve_amp(amp, device) == "bf16":
        return torch.autocast(torch.device(device).type, dtype=torch.bfloat16)
    return contextlib.nullcontext()


# oneDNN's 1x1 strided convolution, backward by weights, with an NHWC source and fewer input channels than its
# channel block (16 floats on AVX-512, 8 on AVX2) writes past its workspace: a crash (heap corruption) or silently
# wrong gradients (uxlfoundation/oneDNN#6035, open; torch 2.14.1). Measured here at 64 x C x 100 x 100: C < 16
# crashes on AVX-512; on AVX2, C < 8 crashes or gives wrong weight gradients. Such a model trains in NCHW.
ONEDNN_NHWC_MIN_CHANNELS = 16


def nhwc_unsafe_convs(model: nn.Module) -> list[str]:
    """Names of the ``Conv2d`` layers of ``model`` that oneDNN's NHWC backward computes wrong on CPUs: kernel 1 x 1,
    stride > 1, fewer than :data:`ONEDNN_NHWC_MIN_CHANNELS` input channels (uxlfoundation/oneDNN#6035)."""
    return [
        name
        for name, m in model.named_modules()
        if isinstance(m, nn.Conv2d)
        and m.kernel_size == (1, 1)
        and m.stride != (1, 1)
        and m.in_channels < ONEDNN_NHWC_MIN_CHANNELS
    ]


def resolve_memory_format(
    model: nn.Module, channels_last: bool, device: torch.device | str = "cpu"
) -> torch.memory_format:
    """The layout training keeps 4-D weights and batches in: ``torch.channels_last`` (NHWC) when asked for and safe,
    else ``torch.contiguous_format`` (NCHW). On a CPU a model with :func:`nhwc_unsafe_convs` trains in NCHW (its
    gradients would be wrong or the process would crash); the layers are logged by the caller."""
    if not channels_last or (torch.device(device).type == "cpu" and nhwc_unsafe_convs(model)):
        return torch.contiguous_format
    return torch.channels_last
