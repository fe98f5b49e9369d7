"""``defectlite quantize``: INT8 static quantisation of an exported model, calibrated on a run's training images."""

from __future__ import annotations

import argparse
import sys
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
            "measured in the same run. Written beside MODEL (the default), it is what predict and serve then run "
            "unless --fp32."
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
    from defectlite.deploy.predictor import resolve_model_path
    from defectlite.runs import open_run
    from defectlite.tasks import get_task
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
    if resolve_model_path(args.model).resolve() == Path(res["int8"]["path"]).resolve():
        print(f"predict and serve now run {res['int8']['path']} for {args.model} (--fp32: the float model)")
        calib = open_run(args.calib)
        drop = res["fp32"]["val"] - res["int8"]["val"]
        max_drop = get_task(calib.task).int8_tolerance(calib.config())
        if drop > max_drop:
            print(f"warning: INT8 loses {100 * drop:.2f} points of validation {key}, more than int8.max_drop "
                  f"({100 * max_drop:.2f}) of {args.calib}'s recipe, so `defectlite train` would not deploy it: "
                  f"delete {res['int8']['path']} or pass --fp32 to keep the float model", file=sys.stderr)  # fmt: skip
    return 0
