"""``defectlite explain``: Grad-CAM overlays and feature-map grids of a run's model on image files."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from defectlite.cli.options import add_command


def register(sub: argparse._SubParsersAction, parents: list) -> None:
    p = add_command(
        sub,
        "explain",
        parents,
        help="Grad-CAM overlays and feature-map grids of a run's model",
        description=(
            "For every image write IMAGE_gradcam.png (the image beside its Grad-CAM overlay for the predicted class, "
            "or --class) and IMAGE_features.png (a few channels of each block's output, Xie & Shen 2022 Section 3.4). "
            "Uses the run's deployed PyTorch model (model.json + model.safetensors). With --per-class, also one "
            "overlay per class from the run's test split, as the run report shows them."
        ),
    )
    p.add_argument("run", type=Path, metavar="RUN", help="run folder, or a checkpoint (.json / .safetensors / .onnx)")
    p.add_argument("images", type=Path, nargs="*", metavar="IMAGE", help="image files or folders")
    p.add_argument("--out", type=Path, help="output folder (default: RUN/explain)")
    p.add_argument("--class", dest="target", metavar="NAME", help="class to explain (default: the predicted one)")
    p.add_argument("--layer", help="module for Grad-CAM (default: the last block before pooling)")
    p.add_argument("--per-class", action="store_true", help="also one overlay per class from the run's test split")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from defectlite.data.readers import image_files
    from defectlite.errors import DataError
    from defectlite.evaluate.gradcam import Explainer, feature_grid_png, png_bytes, side_by_side, write_png
    from defectlite.tasks.classify.explain import explain_per_class

    if not args.images and not args.per_class:
        print("error: give IMAGE files or folders, or --per-class", file=sys.stderr)
        return 2
    out = args.out or (args.run if args.run.is_dir() else args.run.parent) / "explain"
    explainer = Explainer.from_checkpoint(args.run, layer=args.layer)
    if args.target is not None:
        explainer.class_index(args.target)  # unknown class: fail before any work
    failed, used = 0, set()
    for f in image_files(args.images):
        stem = f.stem
        while stem in used:  # same name in two folders
            stem += "_"
        used.add(stem)
        try:
            expl = explainer.explain(f, args.target, str(f))
            x8, maps = explainer.feature_maps(f, str(f))
        except DataError as e:
            failed += 1
            print(f"{f}\tERROR\t{str(e).removeprefix(f'{f}: ')}", file=sys.stderr)
            continue
        cam = write_png(out / f"{stem}_gradcam.png", png_bytes(side_by_side(expl)))
        grid = write_png(out / f"{stem}_features.png", feature_grid_png(x8, maps))
        print(f"{f}\tpredicted {expl.predicted}\tGrad-CAM of {expl.label} (p={expl.probability:.4f})\t{cam}\t{grid}")
    if args.per_class:
        for cls, path in explain_per_class(args.run, out).items():
            print(f"{cls}\t{path}")
    return 1 if failed else 0
