"""Model-zoo comparison on NEU-CLS and casting-product: one `defectlite compare` per data set.

Each writes ``comparison.md``, ``comparison.json`` and ``pareto.png`` in ``<runs>/<dataset>/``; this
script copies the tables to ``benchmarks/results/zoo_<dataset>.md``. Resumes: finished runs are
reused. Usage::

    python benchmarks/zoo.py --seeds 3                 # hours on 2 cores
    python benchmarks/zoo.py --seeds 1 --quick         # the 1-seed, 128 px budget of benchmarks/results
    python benchmarks/zoo.py --seeds 1 --only neu --set student.optim.epochs=2     # smoke
"""

from __future__ import annotations

import argparse
import shutil
import subprocess
import sys
from pathlib import Path

SETS = {  # data set -> (recipe, models, extra overrides)
    "neu": (
        "neu-compare-fast",
        "eg_repvgg,repvgg_tiny,pdmsnet,dsc_cnn_140k,conv3_cnn_140k,weldnet,mobilenetv3_small_050,shufflenetv2",
        ["student.optim.epochs=25"],
    ),
    "casting": (
        "casting-compare-fast",
        "eg_repvgg,dsc_cnn_140k,conv3_cnn_140k,dsc_cnn_340k,dsc_cnn_340k[blurpool=true],dsc_cnn_340k[se=true],"
        "pdmsnet,mobilenetv3_small_050,shufflenetv2",
        [],
    ),
}

QUICK = {  # 2-core budget: cheaper models and epochs (WeldNet is measured by benchmarks/ensembles.py; the
    # casting paper's 0.34 M / SE / BlurPool rows and mobilenetv3_large_100 cost 25-30 min each at 128 px)
    "neu": (
        "neu-compare-fast",
        "eg_repvgg,repvgg_tiny,pdmsnet,dsc_cnn_140k,conv3_cnn_140k,mobilenetv3_small_050,shufflenetv2,mobilenetv2",
        ["student.optim.epochs=15", "data.input_size=[128,128]"],
    ),
    "casting": (
        "casting-compare-fast",
        "eg_repvgg,repvgg_tiny,dsc_cnn_140k,conv3_cnn_140k,mobilenetv3_small_050,mobilenetv3_small_100,"
        "shufflenetv2,eg_repvgg_x2",
        ["student.optim.epochs=8"],
    ),
}


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--seeds", type=int, default=3)
    ap.add_argument("--runs", type=Path, default=Path("runs/bench-zoo"))
    ap.add_argument("--out", type=Path, default=Path("benchmarks/results"))
    ap.add_argument("--only", choices=sorted(SETS), action="append", help="data sets to run (default: all)")
    ap.add_argument("--models", help="override the model list (one data set)")
    ap.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE")
    ap.add_argument("--quick", action="store_true", help="the smaller budget of QUICK (about 35 min per data set)")
    args = ap.parse_args(argv)
    for name in args.only or sorted(SETS):
        recipe, models, extra = (QUICK if args.quick else SETS)[name]
        out = args.runs / name
        cmd = [
            "defectlite",
            "-q",
            "compare",
            "--recipe",
            recipe,
            "--models",
            args.models or models,
            "--seeds",
            str(args.seeds),
            "--out",
            str(out),
            *[a for o in [*extra, *args.overrides] for a in ("--set", o)],
        ]
        print("$", " ".join(cmd), flush=True)
        subprocess.run(cmd, check=True)
        args.out.mkdir(parents=True, exist_ok=True)
        shutil.copy(out / "comparison.md", args.out / f"zoo_{name}.md")
        shutil.copy(out / "comparison.json", args.out / f"zoo_{name}.json")
        shutil.copy(out / "pareto.png", args.out / f"zoo_{name}_pareto.png")
    return 0


if __name__ == "__main__":
    sys.exit(main())
