"""``defectlite train``: run a recipe (teacher, distilled student, re-parameterise, test, export, report)."""

from __future__ import annotations

import argparse
import time
from pathlib import Path

DEFAULT_RECIPE = "neu-kd-eg-repvgg-fast"


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "train",
        help="train a defect classifier from a folder of images (the main job)",
        description=(
            "Train a recipe end to end: split the data (stratified, seeded; splits.csv), train the teacher, "
            "distil the student, re-parameterise it, evaluate on the test split once, export model.onnx and "
            "write report.md. With no arguments: the default recipe on NEU-CLS from the data root "
            "($DEFECTLITE_DATA, else ../shared/datasets beside the checkout)."
        ),
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    p.add_argument(
        "--data",
        help="data folder (class sub-folders, train/val/test tree, or NEU layout); "
        "default: the recipe's data set under the data root",
    )
    p.add_argument("--format", choices=["auto", "folder", "neu", "tig"], help="data layout (default: auto-detect)")
    p.add_argument("--recipe", default=DEFAULT_RECIPE, help="shipped recipe name or a YAML file (`defectlite recipes`)")
    p.add_argument(
        "--model",
        help="the network to train and deploy (`defectlite models`; timm:<name> for any timm model): sets "
        "student.model and, in ensemble recipes, ensemble.member.model (default: the recipe's)",
    )
    p.add_argument("--seed", type=int, help="split and training seed (default: the recipe's, 0)")
    p.add_argument("--channels", type=int, choices=[1, 3], help="decode images as grey (1) or RGB (3)")
    p.add_argument(
        "--set",
        dest="overrides",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="override a recipe field, e.g. --set student.optim.epochs=30 (repeatable)",
    )
    p.add_argument(
        "--teacher", type=Path, metavar="RUN", help="use the teacher of an earlier run instead of training one"
    )
    p.add_argument(
        "--ensemble",
        type=int,
        metavar="N",
        help="train N members (own seeds; the recipe's ensemble.member stage, else the student's) and distil the "
        "student from their ensemble (WeldNet paper)",
    )
    p.add_argument(
        "--teacher-ensemble",
        type=Path,
        metavar="RUN",
        help="distil from the members (member*/) of an earlier run instead of training them",
    )
    p.add_argument("--skip-bad", action="store_true", help="leave unreadable images out (listed) instead of failing")
    p.add_argument(
        "--drop-leaks",
        action="store_true",
        help="drop val/test images byte-identical to a training image from the evaluated split",
    )
    where = p.add_mutually_exclusive_group()
    where.add_argument("--out", type=Path, metavar="RUN", help="run folder (default: runs/<recipe>-s<seed>-<time>)")
    where.add_argument("--resume", type=Path, metavar="RUN", help="continue an interrupted run in this folder")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from defectlite.pipeline import load_run_config, train_run
    from defectlite.train.config import apply_overrides, load_recipe, model_overrides

    if args.resume:
        cfg = load_run_config(args.resume)
        run_dir = args.resume
    else:
        cfg = load_recipe(args.recipe)
        sets = model_overrides(cfg, args.model) if args.model else []
        sets += args.overrides
        for key, value in (
            ("data.path", args.data),
            ("data.format", args.format),
            ("seed", args.seed),
            ("data.channels", args.channels),
            ("ensemble.members", args.ensemble),
        ):
            if value is not None:
                sets.append(f"{key}={value}")
        if args.skip_bad:
            sets.append("data.skip_bad=true")
        if args.drop_leaks:
            sets.append("data.drop_leaks=true")
        if args.data and args.format is None:
            sets.append("data.format=auto")
        cfg = apply_overrides(cfg, sets)
        run_dir = args.out or Path("runs") / f"{cfg.name}-s{cfg.seed}-{time.strftime('%Y%m%d-%H%M%S')}"
    args.resume_hint = f"resume with: defectlite train --resume {run_dir}"
    print(f"run folder: {run_dir}")
    report = train_run(
        cfg, run_dir, teacher_path=args.teacher, teacher_ensemble=args.teacher_ensemble, progress=not args.quiet
    )
    skipped = report["data"].get("skipped") or []
    if skipped:
        print(f"skipped {len(skipped)} unreadable image(s) (--skip-bad):")
        for path, why in skipped:
            print(f"  {path}: {why}")
    t = report["test"]
    b1 = next(x for x in report["profile"]["timings"] if x["runtime"].startswith("onnxruntime") and x["batch"] == 1)
    print(
        f"test accuracy {100 * t['accuracy']:.2f} %, MCC {100 * t['mcc']:.2f} % on {t['n']} images | "
        f"{report['profile']['params_deployed']:,} params | ONNX Runtime {b1['median_ms']:.3f} ms/image "
        f"({b1['threads']} thread) | {report['wall_minutes']:.1f} min"
    )
    print(f"report: {Path(run_dir) / 'report.md'}\nmodel:  {Path(run_dir) / 'model.onnx'}")
    return 0
