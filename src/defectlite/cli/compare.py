"""``defectlite compare``: several models, one recipe and budget, one table and one plot (headline metric vs
latency)."""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from defectlite.cli.options import add_command


def register(sub: argparse._SubParsersAction, parents: list) -> None:
    p = add_command(
        sub,
        "compare",
        parents,
        help="train several models under one recipe and compare the headline metric, cost and latency",
        description=(
            "Train every model for every seed under the same recipe (a recipe with a teacher distils each model from "
            "its own teacher run), then write comparison.md, "
            "comparison.json and pareto.png (the task's headline test metric, e.g. accuracy or mAP@0.5, vs ONNX "
            "Runtime batch-1 latency, point size = params) "
            "into --out. Interrupted comparisons resume: finished runs are reused. Builder options go in "
            "brackets: dsc_cnn_140k[blurpool=true,se=true]."
        ),
    )
    p.add_argument("--models", required=True, help="comma-separated registry names (or timm:<name>)")
    p.add_argument("--data", help="data folder (default: the recipe's)")
    p.add_argument("--seeds", type=int, default=3, help="seeds 0 .. N-1")
    p.add_argument("--recipe", default="neu-compare-fast", help="shared recipe (`defectlite recipes`)")
    p.add_argument(
        "--set",
        dest="overrides",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="recipe override for every run",
    )
    p.add_argument(
        "--keep-leaks", action="store_true", help="keep val/test images identical to training images in the scores"
    )
    p.add_argument(
        "--out",
        type=Path,
        help="comparison folder (default: runs/compare-<recipe>-<models>[-<hash of --data/--set>]: another recipe, "
        "model list or override set never reuses a folder; the same command resumes)",
    )
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


def default_out(recipe: str, models: list[str], sets: list[str]) -> Path:
    """``runs/compare-<recipe>-<model+model...>``, plus a short hash of the overrides when there are any (long
    model lists are hashed too), so that two different comparisons never share a folder."""
    import hashlib
    import re

    names = "+".join(re.sub(r"[^A-Za-z0-9_.=-]+", "_", m) for m in models)
    if len(names) > 80:
        names = names[:60] + "-" + hashlib.sha1(names.encode()).hexdigest()[:8]
    tag = f"-{hashlib.sha1(chr(10).join(sets).encode()).hexdigest()[:8]}" if sets else ""
    return Path("runs") / f"compare-{Path(recipe).stem}-{names}{tag}"


def run(args: argparse.Namespace) -> int:
    from defectlite.train.config import load_recipe
    from defectlite.workflows.comparison import compare

    sets = list(args.overrides)
    if args.data:
        sets += [f"data.path={json.dumps(str(args.data))}", "data.format=auto"]  # quoted: stays a string
    if args.keep_leaks:
        sets.append("data.keep_leaks=true")
    cfg = load_recipe(args.recipe)
    models = split_models(args.models)
    out = args.out or default_out(args.recipe, models, sets)
    res = compare(
        cfg,
        models,
        list(range(args.seeds)),
        out,
        overrides=sets,
        threads=args.threads,
        progress=not args.quiet,
    )
    print((out / "comparison.md").read_text())
    print(f"plot: {out / 'pareto.png'}")
    return 0 if res["rows"] else 1
