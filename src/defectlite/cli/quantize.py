"""``defectlite quantize``: INT8 static quantisation of an exported model, calibrated on a run's training images."""

from __future__ import annotations

import argparse
from pathlib import Path

from defectlite.cli.options import add_command


def register(sub: argparse._SubParsersAction, parents: list) -> None:
    p = add_command(
        sub,
        "quantize",
        parents,
        help="INT8-quantise an ONNX model (ONNX Runtime static, calibrated on training images)",
        description=(
            "Write MODEL.int8.onnx: QDQ INT8 weights (per channel by default) and activations, calibrated on the "
            "training split of RUN, then report accuracy and batch-1 latency of both models on RUN's test split, "
            "measured in the same run."
        ),
    )
    p.add_argument("model", type=Path, metavar="MODEL.onnx", help="the FP32 model exported by train / export")
    p.add_argument("--calib", type=Path, required=True, metavar="RUN", help="run whose training images calibrate")
    p.add_argument("--images", type=int, default=256, help="calibration images (from RUN's training split)")
    p.add_argument(
        "--method",
        choices=["minmax", "entropy", "percentile"],
        default="minmax",
        help="how activation ranges are calibrated (ONNX Runtime CalibrationMethod)",
    )
    p.add_argument("--per-tensor", action="store_true", help="per-tensor weight scales (default: per channel)")
    p.add_argument(
        "--min-reduction",
        type=int,
        default=128,
        help="quantise only convs with C_in/groups x kH x kW >= this (smaller ones are memory-bound)",
    )
    p.add_argument("--out", type=Path, help="output file (default: MODEL.int8.onnx)")
    p.add_argument("--threads", type=int, default=1, help="ONNX Runtime threads for the batch-1 latency")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from defectlite.workflows.quantization import quantize_and_compare

    res = quantize_and_compare(
        args.model,
        args.calib,
        out=args.out,
        images=args.images,
        method=args.method,
        per_channel=not args.per_tensor,
        threads=args.threads,
        min_reduction=args.min_reduction,
    )
    key = res["score_key"]
    for name in ("fp32", "int8"):
        r = res[name]
        print(
            f"{name}: val {key} {100 * r['val']:.2f} %  test {key} {100 * r['test']:.2f} %  "
            f"ORT b1 {r['ort_b1_ms']:.3f} ms  {r['onnx_mb']:.3f} MB"
        )
    print(f"wrote {res['int8']['path']} (test {key} {100 * res['delta']:+.2f} points, speed-up {res['speedup']:.2f}x)")
    return 0
