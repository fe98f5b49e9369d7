"""Model cost: parameters, MACs, file size, and CPU latency / throughput in PyTorch eager and ONNX Runtime.

Conventions (stated in every report row):

- MACs count multiply-accumulates of convolutions and linear layers (``torch.utils.flop_counter``
  counts FLOPs = 2 x MACs for those ops; element-wise ops are not counted). FLOPs = 2 x MACs.
- Latency: batch 1, ``warmup`` untimed runs then ``runs`` timed runs, median and p95 in ms, with
  the intra-op thread count given. Throughput: images/s at ``batch`` over ``runs`` timed batches.
"""

from __future__ import annotations

import platform
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from defectlite.cpus import available_cpus
from defectlite.onnx_file import ort_session


def count_params(model: nn.Module) -> int:
    """Number of parameters (trainable or not; buffers excluded)."""
    return sum(p.numel() for p in model.parameters())


@torch.no_grad()
def count_macs(model: nn.Module, input_shape: Sequence[int]) -> int:
    """Multiply-accumulates of one forward pass on a zero input of ``input_shape`` (N, C, H, W).

    Counts convolutions and matrix products (``torch.utils.flop_counter.FlopCounterMode`` FLOPs / 2).
    """
    from torch.utils.flop_counter import FlopCounterMode

    was_training = model.training
    model.eval()
    counter = FlopCounterMode(display=False)
    with counter:
        model(torch.zeros(*input_shape))
    model.train(was_training)
    return int(counter.get_total_flops() // 2)


@dataclass
class Timing:
    """One latency or throughput measurement, self-describing."""

    runtime: str  # e.g. "onnxruntime 1.22.0 CPUExecutionProvider" or "torch 2.6.0 eager"
    threads: int  # intra-op threads
    batch: int
    input_shape: list[int]  # (N, C, H, W)
    warmup: int
    runs: int
    median_ms: float  # per batch
    p95_ms: float  # per batch
    images_per_s: float  # batch / median

    def as_dict(self) -> dict:
        return asdict(self)


def time_call(fn: Callable[[], object], *, warmup: int, runs: int) -> np.ndarray:
    """Wall-clock milliseconds of ``runs`` calls of ``fn`` after ``warmup`` untimed calls."""
    for _ in range(warmup):
        fn()
    out = np.empty(runs)
    for i in range(runs):
        t0 = time.perf_counter()
        fn()
        out[i] = (time.perf_counter() - t0) * 1e3
    return out


def _timing(runtime: str, threads: int, shape: Sequence[int], warmup: int, ms: np.ndarray) -> Timing:
    med = float(np.median(ms))
    return Timing(
        runtime,
        threads,
        int(shape[0]),
        list(shape),
        warmup,
        len(ms),
        round(med, 4),
        round(float(np.percentile(ms, 95)), 4),
        round(shape[0] * 1e3 / med, 1),
    )


def torch_timing(
    model: nn.Module, input_shape: Sequence[int], *, threads: int, warmup: int = 20, runs: int = 200
) -> Timing:
    """Time ``model`` in PyTorch eager (float32, eval, no grad) with ``threads`` intra-op threads."""
    prev = torch.get_num_threads()
    torch.set_num_threads(threads)
    model = model.eval()
    x = torch.randn(*input_shape)
    try:
        with torch.inference_mode():
            ms = time_call(lambda: model(x), warmup=warmup, runs=runs)
    finally:
        torch.set_num_threads(prev)
    return _timing(f"torch {torch.__version__} eager fp32", threads, input_shape, warmup, ms)


def ort_timing(
    onnx_path: str | Path, input_shape: Sequence[int], *, threads: int, warmup: int = 20, runs: int = 200
) -> Timing:
    """Time an ONNX model in ONNX Runtime (CPU provider) with ``threads`` intra-op threads."""
    import onnxruntime as ort

    sess = ort_session(onnx_path, threads)
    inp = sess.get_inputs()[0]
    x = np.random.default_rng(0).standard_normal(input_shape).astype(np.float32)
    ms = time_call(lambda: sess.run(None, {inp.name: x}), warmup=warmup, runs=runs)
    return _timing(f"onnxruntime {ort.__version__} CPUExecutionProvider", threads, input_shape, warmup, ms)


def interleaved_ort_latency(
    paths: dict[str, str | Path],
    *,
    threads: int = 1,
    rounds: int = 5,
    runs: int = 100,
    warmup: int = 20,
    batch: int = 1,
) -> dict[str, dict]:
    """ONNX Runtime latency of several models at ``batch`` (default 1), measured round-robin in one process.

    Each round runs ``warmup`` untimed then ``runs`` timed calls of every model in turn, so that
    drift of the machine hits all models alike; ratios of the medians are comparable.

    Returns:
        name -> {"median_ms", "p95_ms", "images_per_s", "runs", "threads", "input_shape"} over ``rounds`` x
        ``runs`` calls (ms per call of ``batch`` images).
    """
    sessions = {}
    for name, path in paths.items():
        sess = ort_session(path, threads)
        inp = sess.get_inputs()[0]
        shape = [batch, *[d if isinstance(d, int) else 1 for d in inp.shape[1:]]]
        x = np.random.default_rng(0).standard_normal(shape).astype(np.float32)
        sessions[name] = (sess, inp.name, x)
    samples: dict[str, list[np.ndarray]] = {n: [] for n in paths}
    for _ in range(rounds):
        for name, (sess, inp, x) in sessions.items():
            samples[name].append(time_call(lambda s=sess, i=inp, v=x: s.run(None, {i: v}), warmup=warmup, runs=runs))
    out = {}
    for name, chunks in samples.items():
        ms = np.concatenate(chunks)
        out[name] = {
            "median_ms": round(float(np.median(ms)), 4),
            "p95_ms": round(float(np.percentile(ms, 95)), 4),
            "images_per_s": round(batch * 1e3 / float(np.median(ms)), 1),
            "runs": int(len(ms)),
            "threads": threads,
            "input_shape": list(sessions[name][2].shape),
        }
    return out


def file_size_mb(path: str | Path) -> float:
    """File size in MB (10^6 bytes)."""
    return round(Path(path).stat().st_size / 1e6, 4)


def cpu_name() -> str:
    """The CPU's model name and the instruction sets that decide speed here (AVX2, AVX-512, AVX512-BF16, VNNI,
    AMX), from ``/proc/cpuinfo`` (Linux), else ``platform.processor()``."""
    try:
        info = Path("/proc/cpuinfo").read_text()
    except OSError:
        return platform.processor() or platform.machine()
    name = next((ln.split(":", 1)[1].strip() for ln in info.splitlines() if ln.startswith("model name")), "")
    flags = set(next((ln.split(":", 1)[1].split() for ln in info.splitlines() if ln.startswith("flags")), []))
    shown = [f for f in ("avx2", "avx512f", "avx512_bf16", "avx512_vnni", "amx_tile") if f in flags]
    return f"{name or platform.machine()} ({', '.join(shown) or 'no AVX2'})"


def machine() -> dict[str, object]:
    """Where a measurement was taken: CPU (name and vector extensions), cores, Python and library versions."""
    import onnxruntime as ort

    return {
        "cpu": cpu_name(),
        "cores": available_cpus(),
        "python": platform.python_version(),
        "torch": torch.__version__,
        "onnxruntime": ort.__version__,
    }


def onnx_cost(onnx_path: Path, model: nn.Module | None, shape, threads: int, batch: int) -> dict[str, Any]:
    """Size, ONNX Runtime batch-1 latency (``threads``) and batch-``batch`` throughput (all cores); params and
    MACs of ``model`` (deployed form) when given."""
    from defectlite.compress.reparam import reparameterize

    b1 = ort_timing(onnx_path, shape, threads=threads, warmup=20, runs=200)
    bn = ort_timing(onnx_path, (batch, *shape[1:]), threads=available_cpus(), warmup=2, runs=5)
    out = {
        "onnx_mb": file_size_mb(onnx_path),
        "ort_b1_ms": b1.median_ms,
        "ort_b1_p95_ms": b1.p95_ms,
        "ort_throughput": bn.images_per_s,
        "threads_b1": threads,
        "threads_throughput": bn.threads,
    }
    if model is not None:
        deployed = reparameterize(model)
        out["params"] = count_params(deployed)
        out["macs"] = count_macs(deployed, shape)
    return out
