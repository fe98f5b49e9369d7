"""Compression benchmark (YOLOv4 pruning paper, Table 5, on NEU-CLS): prune ResNet-18, quantise EG-RepVGG.

1. ``defectlite train --recipe neu-resnet18-sparse`` (BN-gamma L1 sparsity training), per seed;
2. ``defectlite prune RUN --ratio R --layers L --finetune-epochs E --distill`` (channel + layer pruning,
   fine-tuning with and without distillation from the unpruned model, INT8), per seed;
3. ``defectlite quantize`` of the default EG-RepVGG run(s) of ``benchmarks/neu_cls.py``.

Every step resumes. Writes ``<out>/compress.json`` and ``<out>/compress.md``. Usage::

    python benchmarks/compress.py --seeds 1 --eg-runs runs/bench-neu-cls
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
from pathlib import Path

from defectlite.utils import atomic_write_json, atomic_write_text
from defectlite.workflows.pruning import prune_folder


def sh(cmd: list[str]) -> None:
    print("$", " ".join(cmd), flush=True)
    subprocess.run(cmd, check=True)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--seeds", type=int, default=1)
    ap.add_argument("--runs", type=Path, default=Path("runs/bench-compress"))
    ap.add_argument("--eg-runs", type=Path, default=Path("runs/bench-neu-cls"), help="runs of benchmarks/neu_cls.py")
    ap.add_argument("--out", type=Path, default=Path("benchmarks/results"))
    ap.add_argument(
        "--ratio", type=float, default=0.92, help="channel share (0.92 removes 90.8 %% of ResNet-18 params)"
    )
    ap.add_argument("--layers", type=int, default=2)
    ap.add_argument("--finetune-epochs", type=int, default=20)
    ap.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE")
    args = ap.parse_args(argv)

    prune_rows = []
    for seed in range(args.seeds):
        run = args.runs / f"resnet18-sparse-s{seed}"
        if not (run / "report.json").is_file():
            sets = [a for o in args.overrides for a in ("--set", o)]
            if (run / "config.yaml").is_file():
                sh(["defectlite", "-q", "train", "--resume", str(run)])
            else:
                sh(
                    [
                        "defectlite",
                        "-q",
                        "train",
                        "--recipe",
                        "neu-resnet18-sparse",
                        "--seed",
                        str(seed),
                        "--out",
                        str(run),
                        *sets,
                    ]
                )
        folder = run / prune_folder(args.ratio, args.layers)
        if not (folder / "prune_report.json").is_file():
            sh(
                [
                    "defectlite",
                    "-q",
                    "prune",
                    str(run),
                    "--ratio",
                    str(args.ratio),
                    "--layers",
                    str(args.layers),
                    "--finetune-epochs",
                    str(args.finetune_epochs),
                    "--distill",
                ]
            )
        prune_rows.append(json.loads((folder / "prune_report.json").read_text()))

    quant_rows = []
    for run in sorted(args.eg_runs.glob("seed*")):
        if not (run / "model.onnx").is_file():
            continue
        out = run / "quantize.json"
        if not out.is_file():
            from defectlite.workflows.quantization import quantize_and_compare

            atomic_write_json(out, quantize_and_compare(run / "model.onnx", run, out=run / "model.int8.onnx"))
        quant_rows.append({"run": str(run), **json.loads(out.read_text())})

    result = {
        "prune": prune_rows,
        "quantize": quant_rows,
        "ratio": args.ratio,
        "layers": args.layers,
        "finetune_epochs": args.finetune_epochs,
    }
    args.out.mkdir(parents=True, exist_ok=True)
    atomic_write_json(args.out / "compress.json", result)
    atomic_write_text(args.out / "compress.md", render(result))
    print(render(result))
    return 0


def _ms(xs: list[float]) -> str:
    m = statistics.fmean(xs)
    s = statistics.stdev(xs) if len(xs) > 1 else 0.0
    return f"{m:.3f} ± {s:.3f}" if m < 10 else f"{m:,.2f} ± {s:,.2f}"


def render(r: dict) -> str:
    """Markdown summary: the pruning table per step (mean ± std over seeds) and the INT8 comparison."""
    lines = [
        f"# Compression benchmark (NEU-CLS), ratio {r['ratio']}, {r['layers']} blocks removed, "
        f"{r['finetune_epochs']} fine-tuning epochs",
        "",
    ]
    if r["prune"]:
        steps = list(r["prune"][0]["rows"])
        lines += [
            f"ResNet-18, {len(r['prune'])} seed(s); ONNX Runtime batch-1 latency in ms (1 thread), speed-up vs the "
            "original measured in the same run; accuracy in %.",
            "",
            "| step | params | % removed | MACs (M) | ORT b1 ms | speed-up | test acc | test acc change |",
            "|---|---|---|---|---|---|---|---|",
        ]
        for step in steps:
            rows = [p["rows"][step] for p in r["prune"]]
            base = [p["rows"]["original"] for p in r["prune"]]
            removed = [100 * (1 - x["params"] / b["params"]) for x, b in zip(rows, base)]
            speed = [b["ort_b1_ms"] / x["ort_b1_ms"] for x, b in zip(rows, base)]
            acc = [100 * x["test_accuracy"] for x in rows]
            delta = [100 * (x["test_accuracy"] - b["test_accuracy"]) for x, b in zip(rows, base)]
            lines.append(
                f"| {step} | {rows[0]['params']:,} | {statistics.fmean(removed):.1f} | {rows[0]['macs'] / 1e6:.1f} | "
                f"{_ms([x['ort_b1_ms'] for x in rows])} | {statistics.fmean(speed):.2f}x | {_ms(acc)} | {_ms(delta)} |"
            )
    if r["quantize"]:
        lines += [
            "",
            "EG-RepVGG (default recipe) FP32 vs INT8 (ONNX Runtime static QDQ, per-channel weights, "
            "calibrated on 256 training images), same run:",
            "",
            "| run | FP32 acc | INT8 acc | change (points) | FP32 ms | INT8 ms | speed-up |",
            "|---|---|---|---|---|---|---|",
        ]
        for q in r["quantize"]:
            lines.append(
                f"| {Path(q['run']).name} | {100 * q['fp32']['test_accuracy']:.2f} | "
                f"{100 * q['int8']['test_accuracy']:.2f} | {100 * q['delta_accuracy']:+.2f} | "
                f"{q['fp32']['ort_b1_ms']:.3f} | {q['int8']['ort_b1_ms']:.3f} | {q['speedup']:.2f}x |"
            )
        qs = r["quantize"]
        lines.append(
            f"| **mean ± std** | {_ms([100 * q['fp32']['test_accuracy'] for q in qs])} | "
            f"{_ms([100 * q['int8']['test_accuracy'] for q in qs])} | {_ms([100 * q['delta_accuracy'] for q in qs])} | "
            f"{_ms([q['fp32']['ort_b1_ms'] for q in qs])} | {_ms([q['int8']['ort_b1_ms'] for q in qs])} | "
            f"{statistics.fmean(q['speedup'] for q in qs):.2f}x |"
        )
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    sys.exit(main())
