"""``defectlite val``: score an exported model or a run on a labelled folder (as ``yolo val`` / timm's validate)."""

from __future__ import annotations

import argparse
from pathlib import Path

from defectlite.cli.options import add_command


def register(sub: argparse._SubParsersAction, parents: list) -> None:
    p = add_command(
        sub,
        "val",
        parents,
        help="score a model (model.onnx or a run) on a labelled folder: accuracy, MCC, P/R/F1, ECE (detector: mAP)",
        description=(
            "Run MODEL (an ONNX file, or a run folder's deployed model: model.int8.onnx when the run kept it, else "
            "model.onnx) on every image of a labelled set and write metrics.json and figures to --out (classifier: "
            "accuracy, MCC, per-class P/R/F1, ECE, coverage at the model's operating point, confusion matrix; "
            "detector: mAP@0.5, mAP@0.5:0.95, per-class AP, PR curves); print a short table. Needs only ONNX "
            "Runtime (the base install, no PyTorch). Images of any size go through the "
            "model's own preprocessing; classes the model does not know are an error."
        ),
    )
    p.add_argument("model", type=Path, metavar="MODEL", help="model.onnx, or a run folder")
    p.add_argument(
        "--data",
        type=Path,
        required=True,
        metavar="DIR",
        help="labelled folder in any layout `train` reads (class sub-folders, train/val/test tree, NEU, TIG), or a "
        "CSV file with columns path,class",
    )
    p.add_argument(
        "--format",
        default="auto",
        help="data layout (classifier: folder, neu, tig; detector: voc, yolo, coco; default: detect it)",
    )
    p.add_argument("--split", choices=["train", "val", "test"], help="only this split of a pre-split folder")
    p.add_argument(
        "--out", type=Path, help="folder for metrics.json and figures (default: val-<data name> beside MODEL)"
    )
    p.add_argument(
        "--skip-bad",
        action="store_true",
        help="leave unreadable images (and a detector's bad label files) out, listed, instead of failing",
    )
    p.add_argument("--fp32", action="store_true", help="score model.onnx even when the run deployed model.int8.onnx")
    p.add_argument("--batch-size", type=int, default=32, help="images per ONNX Runtime call")
    p.add_argument("--threads", type=int, default=1, help="ONNX Runtime intra-op threads")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from defectlite.utils import check_writable
    from defectlite.workflows.validation import model_of, validate_folder

    base = args.model if args.model.is_dir() else args.model.parent
    out = args.out or base / f"val-{args.data.resolve().name}"
    check_writable(out, folder=True, what="--out")
    res = validate_folder(
        model_of(args.model),
        args.data,
        out,
        format=args.format,
        split=args.split,
        batch_size=args.batch_size,
        threads=args.threads,
        skip_bad=args.skip_bad,
        progress=not args.quiet,
        fp32=args.fp32,
    )
    from defectlite.tasks import get_runtime

    for line in get_runtime(res["task"]).summary(res):
        print(line)
    if res["skipped"]:
        print(f"skipped {len(res['skipped'])} unreadable file(s) (--skip-bad), listed in {out / 'metrics.json'}")
    print(f"written to {out}")
    return 0
