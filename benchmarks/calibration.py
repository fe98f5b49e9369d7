"""Calibration and the reject option over seeds: test ECE before / after temperature scaling, and the test coverage
and accuracy of accepted parts at the threshold chosen on validation for a wanted accuracy (99.5 % by default).

Three settings: the default recipe on NEU-CLS (its runs are reused from ``benchmarks/neu_cls.py`` when given with
``--neu-runs``), the casting set (``casting-compare-fast`` with the default model), and NEU-CLS with 10 % of its
training split (errors frequent enough for the risk-coverage curve to mean something).

    python benchmarks/calibration.py --seeds 3 --neu-runs runs/bench-neu-cls/default
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))
from defectlite.evaluate.profile import machine  # noqa: E402
from defectlite.utils import atomic_write_json, atomic_write_text  # noqa: E402
from neu_cls import cli  # noqa: E402

SETTINGS = {
    "NEU-CLS, default recipe": ("neu-cpu-repnet-fast", []),
    "casting, casting-compare-fast + cpu_repnet_m": ("casting-compare-fast", ["--model", "cpu_repnet_m"]),
    "NEU-CLS, 10 % of the training split": ("neu-cpu-repnet-fast", ["--set", "data.train_fraction=0.1"]),
}


def run_of(folder: Path, recipe: str, extra: list[str], seed: int) -> dict:
    run = folder / f"seed{seed}"
    if not (run / "report.json").is_file():
        if (run / "config.yaml").is_file():
            cli("train", "--resume", str(run))
        else:
            cli("train", "--recipe", recipe, "--seed", str(seed), "--out", str(run), *extra)
    return json.loads((run / "report.json").read_text())


def stats(reports: list[dict]) -> dict:
    def m(xs):
        xs = [x for x in xs if x is not None]
        return (statistics.fmean(xs), statistics.stdev(xs) if len(xs) > 1 else 0.0) if xs else (None, None)

    cal = [r["calibration"] for r in reports]
    ops = [c["operating_point"] for c in cal]
    return {
        "accuracy": m([r["test"]["accuracy"] for r in reports]),
        "temperature": m([c["temperature"] for c in cal]),
        "ece_before": m([c["test"]["ece_before"] for c in cal]),
        "ece_after": m([c["test"]["ece_after"] for c in cal]),
        "nll_before": m([c["test"]["nll_before"] for c in cal]),
        "nll_after": m([c["test"]["nll_after"] for c in cal]),
        "threshold": m([o["threshold"] for o in ops]),
        "val_coverage": m([o["val"]["coverage"] for o in ops]),
        "test_coverage": m([o["test"]["coverage"] for o in ops]),
        "test_accuracy_accepted": m([o["test"]["accuracy"] if o["test"]["accepted"] else None for o in ops]),
        "target": ops[0]["target_accuracy"],
        "seeds": len(reports),
    }


def render(res: dict) -> str:
    def f(pair, pct=True, d=2):
        v, s = pair
        return "—" if v is None else (f"{100 * v:.{d}f} ± {100 * s:.{d}f} %" if pct else f"{v:.4f} ± {s:.4f}")

    lines = [
        "# Calibration (temperature scaling on validation) and the reject option",
        "",
        f"Machine: {res['machine']['cpu']}. Mean ± std over seeds; ECE with 15 bins; the operating point is the lowest "
        "confidence threshold whose accepted validation images reach the target accuracy; test is read only for "
        "this table.",
        "",
        "| setting | seeds | test acc | T | test ECE before | after | test NLL before | after | threshold | "
        "val coverage | test coverage | test acc of accepted (target) |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for name, s in res["settings"].items():
        lines.append(
            f"| {name} | {s['seeds']} | {f(s['accuracy'])} | {f(s['temperature'], False)} | "
            f"{f(s['ece_before'], False)} | {f(s['ece_after'], False)} | {f(s['nll_before'], False)} | "
            f"{f(s['nll_after'], False)} | {f(s['threshold'], False)} | {f(s['val_coverage'], d=1)} | "
            f"{f(s['test_coverage'], d=1)} | {f(s['test_accuracy_accepted'])} ({100 * s['target']:.1f} %) |"
        )
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--seeds", type=int, default=3)
    ap.add_argument("--runs", type=Path, default=Path("runs/bench-calibration"))
    ap.add_argument("--neu-runs", type=Path, help="default-recipe NEU runs <dir>/seed<s> to reuse")
    ap.add_argument("--out", type=Path, default=Path(__file__).parent / "results" / "calibration")
    args = ap.parse_args(argv)
    res = {"settings": {}}
    for i, (name, (recipe, extra)) in enumerate(SETTINGS.items()):
        folder = args.neu_runs if i == 0 and args.neu_runs else args.runs / f"setting{i}"
        res["settings"][name] = stats([run_of(folder, recipe, extra, s) for s in range(args.seeds)])
        res["machine"] = machine()
        atomic_write_json(args.out.with_suffix(".json"), res)
        atomic_write_text(args.out.with_suffix(".md"), render(res))
    print(render(res))
    return 0


if __name__ == "__main__":
    sys.exit(main())
