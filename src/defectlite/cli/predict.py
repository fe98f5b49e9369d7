"""``defectlite predict``: classify image files and folders with an exported model."""

from __future__ import annotations

import argparse
import csv
import io
import sys
from pathlib import Path


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "predict",
        help="classify images with an exported model",
        description=(
            "Print path, class and probability (tab-separated) for every image; folders are searched "
            "recursively. An unreadable file gets an ERROR line and the run goes on; the exit status is 1 "
            "if any image failed."
        ),
    )
    p.add_argument("model", type=Path, metavar="MODEL", help="model.onnx from `defectlite export`, or its run folder")
    p.add_argument("paths", type=Path, nargs="+", metavar="PATH", help="image files or folders")
    p.add_argument("--csv", type=Path, help="also write the results to this CSV file (path, class, probability, error)")
    p.add_argument("--batch-size", type=int, default=32, help="images per ONNX Runtime call")
    p.add_argument("--threads", type=int, default=1, help="ONNX Runtime intra-op threads")
    p.set_defaults(func=run)


def expand(paths: list[Path]) -> list[Path]:
    """Files as given; folders expanded to their image files, recursively, sorted."""
    from defectlite.data.readers import is_image

    out = []
    for p in paths:
        out += sorted(f for f in p.rglob("*") if is_image(f)) if p.is_dir() else [p]
    return out


def run(args: argparse.Namespace) -> int:
    from defectlite.deploy.predictor import Predictor
    from defectlite.errors import DataError
    from defectlite.utils import atomic_write_text

    predictor = Predictor(args.model, threads=args.threads)
    files = expand(args.paths)
    if not files:
        print("error: no images found in " + ", ".join(map(str, args.paths)), file=sys.stderr)
        return 1
    rows, failed = [], 0
    step = max(args.batch_size, 1)
    for i in range(0, len(files), step):
        chunk = files[i : i + step]
        for f, res in zip(chunk, predictor.predict_each(chunk, [str(f) for f in chunk])):
            if isinstance(res, DataError):
                failed += 1
                why = str(res).removeprefix(f"{f}: ")
                print(f"{f}\tERROR\t{why}", file=sys.stderr)
                rows.append([str(f), "", "", why])
            else:
                print(f"{f}\t{res.label}\t{res.probability:.4f}")
                rows.append([str(f), res.label, f"{res.probability:.6f}", ""])
    if args.csv:
        buf = io.StringIO()
        writer = csv.writer(buf, lineterminator="\n")
        writer.writerow(["path", "class", "probability", "error"])
        writer.writerows(rows)
        atomic_write_text(args.csv, buf.getvalue())
    if failed:
        print(f"{failed} of {len(files)} image(s) could not be read", file=sys.stderr)
    return 1 if failed else 0
