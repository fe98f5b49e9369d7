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
            "Re-parameterise the run's deployed model (its best checkpoint: the student, or member0 of an ensemble "
            "run that does not distil), write it as ONNX (dynamic batch; task, class names, input size, channels, "
            "normalisation and calibration in the metadata) and check ONNX Runtime against PyTorch on validation "
            "images (max |output difference| <= 1e-4). Written to RUN/model.onnx, its INT8 form "
            "RUN/model.int8.onnx is made again and kept when it holds the validation score (as train does)."
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
        f"ONNX Runtime vs PyTorch on {res['images']} validation images: max |output diff| {res['max_abs_diff']:.2e}"
        f" (tolerance {res['tolerance']:.0e})"
    )
    q = res.get("int8")
    if q:
        kept = f"kept as {q['path']}" if q["deployed"] else "not kept"
        print(f"INT8: validation {q['score_key']} drops by {q['val_drop']:.4f} (at most {q['max_drop']}): {kept}")
    return 0
