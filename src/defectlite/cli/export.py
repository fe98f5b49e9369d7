"""``defectlite export``: write a run's re-parameterised model as ONNX with metadata, parity-checked."""

from __future__ import annotations

import argparse
from pathlib import Path

from defectlite.cli.options import add_command


def register(sub: argparse._SubParsersAction, parents: list) -> None:
    p = add_command(
        sub,
        "export",
        parents,
        help="export a run's model to ONNX (re-parameterised, with metadata)",
        description=(
            "Re-parameterise the run's best student, write it as ONNX (dynamic batch; class names, input size, "
            "channels and normalisation in the metadata) and check ONNX Runtime against PyTorch on validation "
            "images (max |difference| <= 1e-4)."
        ),
    )
    p.add_argument("run", type=Path, metavar="RUN", help="run folder written by `defectlite train`")
    p.add_argument("--out", type=Path, help="ONNX file to write (default: RUN/model.onnx)")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from defectlite.pipeline import export_run

    res = export_run(args.run, args.out)
    print(f"wrote {res['path']}")
    print(
        f"ONNX Runtime vs PyTorch on {res['images']} validation images: max |logit diff| {res['max_abs_diff']:.2e}"
        f" (tolerance {res['tolerance']:.0e})"
    )
    return 0
