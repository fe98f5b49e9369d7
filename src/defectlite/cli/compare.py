"""``defectlite compare``: several models, one recipe and budget, one table and one accuracy-latency plot."""

from __future__ import annotations

import argparse
from pathlib import Path


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "compare",
        help="train several models under one recipe and compare accuracy, cost and latency",
        description=(
            "Train every model for every seed under the same recipe (a recipe with a teacher distils each model from "
            "its own teacher run), then write comparison.md, "
            "comparison.json and pareto.png (test accuracy vs ONNX Runtime batch-1 latency, point size = params) "
            "into --out. Interrupted comparisons resume: finished runs are reused. Builder options go in "
            "brackets: dsc_cnn_140k[blurpool=true,se=true]."
        ),
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    p.add_argument("--models", required=True, help="comma-separated registry names (or timm:<name>)")
    p.add_argument("--data", help="data folder (default: the recipe's)")
    p.add_argument("--seeds", type=int, default=3, help="seeds 0 .. N-1")
    p.add_argument("--recipe", default="neu-compare-fast", help="shared recipe (`defectlite recipes`)")
    p.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE")
    p.add_argument("--drop-leaks", action="store_true", help="drop val/test images identical to training images")
    p.add_argument("--out", type=Path, default=Path("runs/compare"), help="comparison folder")
    p.add_argument("--threads", type=int, default=1, help="ONNX Runtime threads for the latency column")
    p.set_defaults(func=run)


def split_models(text: str) -> list[str]:
    """Split on commas outside brackets: ``a,b[x=1,y=2],c`` -> ``["a", "b[x=1,y=2]", "c"]``."""
    out, depth, cur = [], 0, ""
    for ch in text:
        depth += ch == "["
        depth -= ch == "]"
        if ch == "," and depth == 0:
            out.append(cur.strip())
            cur = ""
        else:
            cur += ch
    return [m for m in [*out, cur.strip()] if m]


def run(args: argparse.Namespace) -> int:
    from defectlite.train.config import load_recipe
    from defectlite.workflows.compare import compare

    sets = list(args.overrides)
    if args.data:
        sets += [f"data.path={args.data}", "data.format=auto"]
    if args.drop_leaks:
        sets.append("data.drop_leaks=true")
    cfg = load_recipe(args.recipe)
    res = compare(
        cfg,
        split_models(args.models),
        list(range(args.seeds)),
        args.out,
        overrides=sets,
        threads=args.threads,
        progress=not args.quiet,
    )
    print((args.out / "comparison.md").read_text())
    print(f"plot: {args.out / 'pareto.png'}")
    return 0 if res["rows"] else 1
