"""``defectlite predict``: run an exported model (classifier or detector) on image files and folders."""

from __future__ import annotations

import argparse
import csv
import io
import json
import sys
from pathlib import Path

from defectlite.cli.options import add_answer_options, add_command, answer_options


def register(sub: argparse._SubParsersAction, parents: list) -> None:
    p = add_command(
        sub,
        "predict",
        parents,
        help="classify images or detect defects in them with an exported model",
        description=(
            "Print one tab-separated line per answer: path, class, probability for a classifier; path, class, score, "
            "x1 y1 x2 y2 (pixels of the original image) per box for a detector. Folders are searched recursively. "
            "An unreadable file gets an ERROR line and the run goes on; the exit status is 1 if any image failed. "
            "--csv - or --json - writes that file to standard output instead of the lines."
        ),
    )
    p.add_argument(
        "model", type=Path, metavar="MODEL", help="model.onnx from `defectlite train` / `export`, or its run"
    )
    p.add_argument(
        "paths", nargs="+", metavar="PATH", help="image files or folders (with --engine ray also s3:// ... URIs)"
    )
    p.add_argument(
        "--csv", type=Path, help="also write the results to this CSV file (one row per answer; - for standard output)"
    )
    p.add_argument(
        "--json",
        type=Path,
        help="also write the results to this JSON file (one object per image; - for standard output)",
    )
    p.add_argument("--save-images", type=Path, metavar="DIR", help="write each image with its answer drawn on it")
    p.add_argument(
        "--min-confidence",
        metavar="P",
        help="classifier: answer 'uncertain' (with the top classes) below probability P; 'recommended' uses the "
        "threshold the run chose on validation for its target accuracy (report.md, Calibration)",
    )
    p.add_argument("--conf", type=float, help="detector: lowest box score shown (default: the model's)")
    p.add_argument("--iou", type=float, help="detector: IoU above which NMS drops a box (default: the model's)")
    add_answer_options(p)
    p.add_argument(
        "--fp32", action="store_true", help="run model.onnx even when the run deployed model.int8.onnx beside it"
    )
    p.add_argument("--batch-size", type=int, default=32, help="images per ONNX Runtime call")
    p.add_argument(
        "--engine",
        choices=["local", "ray"],
        default="local",
        help="local: this process; ray: Ray Data actors (extra defectlite[ray]) writing Parquet to --out",
    )
    p.add_argument("--out", type=Path, help="--engine ray: the Parquet folder to write")
    p.add_argument("--address", help="--engine ray: a running Ray cluster (auto: this machine's); default: start one")
    p.add_argument(
        "--actors", type=int, help="--engine ray: Predictor actors (default: one per CPU, sharing what the reads leave)"
    )
    p.add_argument("--threads", type=int, default=1, help="ONNX Runtime intra-op threads")
    p.set_defaults(func=run)


def run_ray(args: argparse.Namespace, options: dict) -> int:
    """``--engine ray``: the same answers, written as Parquet by Ray Data; a summary with the throughput."""
    from defectlite.errors import ConfigError
    from defectlite.workflows.ray_predict import predict_ray

    if args.out is None:
        raise ConfigError("--engine ray writes Parquet: give --out DIR")
    res = predict_ray(args.model, args.paths, args.out, fp32=args.fp32, address=args.address, actors=args.actors,
                      threads=args.threads, batch_size=args.batch_size, options=options,
                      progress=not args.quiet)  # fmt: skip
    print(
        f"{res['images']} image(s), {res['rows']} row(s), {res['errors']} unreadable, in {res['seconds']:.1f} s "
        f"({res['images_per_s']:.1f} images/s, {res['actors']} actor(s)) -> {res['out']}"
    )
    return 1 if res["errors"] else 0


def run(args: argparse.Namespace) -> int:
    from defectlite.deploy.predictor import Predictor
    from defectlite.errors import ConfigError, DataError
    from defectlite.runs import is_int8
    from defectlite.utils import check_writable

    for flag, path, folder in (("--csv", args.csv, False), ("--json", args.json, False),
                               ("--save-images", args.save_images, True)):  # fmt: skip
        if path is not None:
            check_writable(path, folder=folder, what=flag, stdout=True)
    to_stdout = [flag for flag, path in (("--csv", args.csv), ("--json", args.json)) if _is_stdout(path)]
    if len(to_stdout) > 1:
        raise ConfigError("--csv - and --json - would both write to standard output; give one of them a file name")
    if args.batch_size < 1:
        raise ConfigError(f"--batch-size must be at least 1, got {args.batch_size}")
    options = answer_options(args, conf=args.conf, iou=args.iou, min_confidence=args.min_confidence)
    if args.engine == "ray":
        if args.out is not None:
            check_writable(args.out, folder=True, what="--out")
        return run_ray(args, options)
    args.paths = [Path(p) for p in args.paths]
    predictor = Predictor(args.model, threads=args.threads, fp32=args.fp32, **options)
    if is_int8(predictor.path) and not args.quiet:
        print(f"using {predictor.path} (INT8; --fp32 for the float model)", file=sys.stderr)
    from defectlite.data.readers import image_files

    files = image_files(args.paths)
    if not files:
        print("error: no images found in " + ", ".join(map(str, args.paths)), file=sys.stderr)
        return 1
    if args.save_images is not None:
        args.save_images.mkdir(parents=True, exist_ok=True)
    rows, objects, failed, names = [], [], 0, set()
    for i in range(0, len(files), args.batch_size):
        chunk = files[i : i + args.batch_size]
        for f, (res, answer_rows) in zip(chunk, predictor.rows(chunk, [str(f) for f in chunk])):
            rows += answer_rows
            if isinstance(res, DataError):
                failed += 1
                print(f"{f}\tERROR\t{answer_rows[0]['error']}", file=sys.stderr)
                objects.append({"path": str(f), "error": answer_rows[0]["error"]})
                continue
            for r in [] if to_stdout else answer_rows:  # with --csv - / --json -, stdout carries that file alone
                shown = [v for k, v in r.items() if k not in ("path", "error")]
                print("\t".join([str(f), *shown]) if shown else f"{f}\t-")
            objects.append({"path": str(f), **predictor.as_dict(res)})
            if args.save_images is not None:
                stem = f.stem
                while stem in names:  # the same name in two folders
                    stem += "_"
                names.add(stem)
                predictor.runtime.draw(f, res, predictor.meta).save(args.save_images / f"{stem}_pred.png")
    if args.csv:
        columns = list(dict.fromkeys([*predictor.columns, *(k for r in rows for k in r)]))
        buf = io.StringIO()
        writer = csv.DictWriter(buf, fieldnames=columns, lineterminator="\n", restval="")
        writer.writeheader()
        writer.writerows(rows)
        _write(args.csv, buf.getvalue())
    if args.json:
        _write(args.json, json.dumps(objects, indent=2) + "\n")
    if failed:
        print(f"{failed} of {len(files)} image(s) could not be read", file=sys.stderr)
    return 1 if failed else 0


def _is_stdout(path: Path | None) -> bool:
    return path is not None and str(path) == "-"


def _write(path: Path, text: str) -> None:
    """Write ``text`` to ``path`` atomically, or to standard output for ``-``."""
    from defectlite.utils import atomic_write_text

    if _is_stdout(path):
        sys.stdout.write(text)
        sys.stdout.flush()
    else:
        atomic_write_text(path, text)
