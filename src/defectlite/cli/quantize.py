"""``defectlite quantize``: INT8 static quantisation of an exported model, calibrated on a run's training images."""

from __future__ import annotations

import argparse
from pathlib import Path


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "quantize",
        help="INT8-quantise an ONNX model (ONNX Runtime static, calibrated on training images)",
        description=(
            "Write MODEL.int8.onnx: QDQ INT8 weights (per channel by default) and activations, calibrated on the "
            "training split of RUN, then report accuracy and batch-1 latency of both models on RUN's test split, "
            "measured in the same run."
        ),
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    p.add_argument("model", type=Path, metavar="MODEL.onnx")
    p.add_argument("--calib", type=Path, required=True, metavar="RUN", help="run whose training images calibrate")
    p.add_argument("--images", type=int, default=256, help="calibration images")
    p.add_argument("--method", choices=["minmax", "entropy", "percentile"], default="minmax")
    p.add_argument("--per-tensor", action="store_true", help="per-tensor weight scales (default: per channel)")
    p.add_argument(
        "--min-reduction",
        type=int,
        default=128,
        help="quantise only convs with C_in/groups x kH x kW >= this (smaller ones are memory-bound)",
    )
    p.add_argument("--out", type=Path, help="output file (default: MODEL.int8.onnx)")
    p.add_argument("--threads", type=int, default=1)
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from defectlite.workflows.quantize import quantize_and_compare

    res = quantize_and_compare(
        args.model,
        args.calib,
        out=args.out,
        images=args.images,
        method=args.method,
        per_channel=not args.per_tensor,
        threads=args.threads,
    )
    for name in ("fp32", "int8"):
        r = res[name]
        print(
            f"{name}: test acc {100 * r['test_accuracy']:.2f} %  ORT b1 {r['ort_b1_ms']:.3f} ms  {r['onnx_mb']:.3f} MB"
        )
    print(
        f"wrote {res['int8']['path']} (accuracy change {100 * res['delta_accuracy']:+.2f} points, "
        f"speed-up {res['speedup']:.2f}x)"
    )
    return 0
