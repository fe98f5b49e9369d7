"""NEU-CLS benchmark of the default recipe: accuracy over seeds, cost, and CPU latency against baselines.

Runs ``defectlite train --recipe R --seed s`` for each seed (resuming finished or interrupted runs),
then, in one process and back to back, measures the ONNX Runtime batch-1 latency of the seed-0
student and of timm ``mobilenetv3_small_050`` and ``resnet18`` exported the same way (untrained;
same input size and channels, same exporter, same session options), interleaved over several
rounds so that drift hits all models alike. Writes ``<out>/neu_cls.json`` and ``<out>/neu_cls.md``.

Usage::

    python benchmarks/neu_cls.py --seeds 3            # about 1 hour on 2 cores
    python benchmarks/neu_cls.py --seeds 1 --set student.optim.epochs=2 --set teacher.optim.epochs=1   # smoke
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path

import torch

from defectlite.deploy.onnx_export import export_onnx
from defectlite.evaluate.profile import interleaved_ort_latency, machine
from defectlite.models import create_model
from defectlite.onnx_file import read_metadata
from defectlite.utils import atomic_write_json, atomic_write_text

BASELINES = ("mobilenetv3_small_050", "resnet18")


def train_seed(recipe: str, seed: int, run_dir: Path, overrides: list[str]) -> dict:
    """Train one seed through the CLI (resuming if the folder exists) and return its report."""
    if not (run_dir / "report.json").is_file():
        if (run_dir / "config.yaml").is_file():
            cmd = ["defectlite", "-q", "train", "--resume", str(run_dir)]
        else:
            sets = [a for o in overrides for a in ("--set", o)]
            cmd = ["defectlite", "-q", "train", "--recipe", recipe, "--seed", str(seed), "--out", str(run_dir), *sets]
        print("$", " ".join(cmd), flush=True)
        subprocess.run(cmd, check=True)
    return json.loads((run_dir / "report.json").read_text())


def export_baseline(name: str, shape: tuple[int, int, int], folder: Path) -> Path:
    """Export an untrained timm model with the same exporter and metadata path as our models."""
    c, h, w = shape
    path = folder / f"{name}_{h}x{w}.onnx"
    if not path.is_file():
        torch.manual_seed(0)
        model = create_model(f"timm:{name}", num_classes=6, in_chans=c).eval()
        card = {"model": f"timm:{name}", "classes": [str(i) for i in range(6)], "input_size": [h, w], "in_chans": c,
                "mean": [0.5] * c, "std": [0.25] * c}  # fmt: skip
        export_onnx(model, card, path)
    return path


def mean_std(xs: list[float]) -> tuple[float, float]:
    return statistics.fmean(xs), (statistics.stdev(xs) if len(xs) > 1 else 0.0)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--seeds", type=int, default=3, help="number of seeds (0 .. N-1)")
    ap.add_argument("--recipe", default="neu-kd-eg-repvgg-fast")
    ap.add_argument("--runs", type=Path, default=Path("runs/bench-neu-cls"), help="folder of the per-seed runs")
    ap.add_argument("--out", type=Path, default=Path("benchmarks/results"), help="folder for neu_cls.json / .md")
    ap.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE")
    ap.add_argument("--threads", type=int, default=1, help="ONNX Runtime intra-op threads for the latency duel")
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--iters", type=int, default=200, help="timed runs per model per round")
    args = ap.parse_args(argv)

    reports = {}
    for seed in range(args.seeds):
        reports[seed] = train_seed(args.recipe, seed, args.runs / f"seed{seed}", args.overrides)
    rows = []
    for seed, r in reports.items():
        b1 = {t["runtime"].split()[0]: t for t in r["profile"]["timings"] if t["batch"] == 1}
        bn = {t["runtime"].split()[0]: t for t in r["profile"]["timings"] if t["batch"] > 1}
        rows.append({
            "seed": seed,
            "test_accuracy": r["test"]["accuracy"],
            "test_mcc": r["test"]["mcc"],
            "teacher_test_accuracy": r["test_all"].get("teacher", {}).get("accuracy"),
            "train_minutes": sum(s["train_minutes"] for s in r["stages"].values()),
            "wall_minutes": r["wall_minutes"],
            "params_deployed": r["profile"]["params_deployed"],
            "params_train": r["profile"]["params_train"],
            "macs": r["profile"]["macs"],
            "torch_b1_ms": b1["torch"]["median_ms"],
            "ort_b1_ms": b1["onnxruntime"]["median_ms"],
            "ort_b1_p95_ms": b1["onnxruntime"]["p95_ms"],
            "ort_throughput": bn["onnxruntime"]["images_per_s"],
            "teacher_model": r["stages"].get("teacher", {}).get("model"),
        })  # fmt: skip

    # latency duel: the student vs baselines, same exporter, same input, same process, interleaved
    run0 = args.runs / "seed0"
    meta = read_metadata(run0 / "model.onnx")
    shape = (meta["channels"], *meta["input_size"])
    folder = args.runs / "baselines"
    folder.mkdir(parents=True, exist_ok=True)
    models = {"student": run0 / "model.onnx"}
    for name in BASELINES:
        models[name] = export_baseline(name, shape, folder)
    if tuple(shape[1:]) != (200, 200):
        models["mobilenetv3_small_050@200"] = export_baseline("mobilenetv3_small_050", (shape[0], 200, 200), folder)
    torch.set_num_threads(os.cpu_count() or 1)
    t0 = time.perf_counter()
    duel = interleaved_ort_latency(models, threads=args.threads, rounds=args.rounds, runs=args.iters, warmup=50)
    ratios = {
        f"student / {n}": round(duel["student"]["median_ms"] / duel[n]["median_ms"], 3) for n in duel if n != "student"
    }

    acc = mean_std([r["test_accuracy"] for r in rows])
    mcc = mean_std([r["test_mcc"] for r in rows])
    result = {
        "recipe": args.recipe,
        "overrides": args.overrides,
        "seeds": list(reports),
        "per_seed": rows,
        "test_accuracy_mean": acc[0],
        "test_accuracy_std": acc[1],
        "test_mcc_mean": mcc[0],
        "test_mcc_std": mcc[1],
        "max_train_minutes": max(r["train_minutes"] for r in rows),
        "max_wall_minutes": max(r["wall_minutes"] for r in rows),
        "latency": {"threads": args.threads, "rounds": args.rounds, "runs_per_round": args.iters, "warmup": 50,
                    "batch": 1, "runtime": "onnxruntime CPUExecutionProvider, ORT_ENABLE_ALL",
                    "models": duel, "ratios": ratios, "seconds": round(time.perf_counter() - t0, 1)},
        "machine": machine(),
    }  # fmt: skip
    args.out.mkdir(parents=True, exist_ok=True)
    atomic_write_json(args.out / "neu_cls.json", result)
    atomic_write_text(args.out / "neu_cls.md", render(result))
    print(render(result))
    return 0


def render(r: dict) -> str:
    """Markdown table of a benchmark result."""
    lines = [
        f"# NEU-CLS benchmark: `{r['recipe']}` ({len(r['seeds'])} seeds)",
        "",
        f"Overrides: {r['overrides'] or 'none'}. Machine: {r['machine']['cpu']}, torch {r['machine']['torch']}, "
        f"onnxruntime {r['machine']['onnxruntime']}.",
        "",
        "| seed | test acc | test MCC | teacher acc | train min | wall min | params | MACs (M) | torch b1 ms "
        "| ORT b1 ms | ORT b64 img/s |",
        "|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for x in r["per_seed"]:
        t = x["teacher_test_accuracy"]
        lines.append(
            f"| {x['seed']} | {100 * x['test_accuracy']:.2f} % | {100 * x['test_mcc']:.2f} % | "
            f"{'—' if t is None else f'{100 * t:.2f} %'} | {x['train_minutes']:.1f} | {x['wall_minutes']:.1f} | "
            f"{x['params_deployed']:,} | {x['macs'] / 1e6:.1f} | {x['torch_b1_ms']:.3f} | {x['ort_b1_ms']:.3f} | "
            f"{x['ort_throughput']:,.0f} |"
        )
    lines += [
        f"| **mean ± std** | **{100 * r['test_accuracy_mean']:.2f} ± {100 * r['test_accuracy_std']:.2f} %** | "
        f"**{100 * r['test_mcc_mean']:.2f} ± {100 * r['test_mcc_std']:.2f} %** | | max {r['max_train_minutes']:.1f} | "
        f"max {r['max_wall_minutes']:.1f} | | | | | |",
        "",
        f"## ONNX Runtime batch-1 latency, same run ({r['latency']['threads']} thread, {r['latency']['rounds']} "
        f"interleaved rounds x {r['latency']['runs_per_round']} runs after {r['latency']['warmup']} warm-up)",
        "",
        "| model | input | median ms | p95 ms |",
        "|---|---|---|---|",
    ]
    for name, m in r["latency"]["models"].items():
        lines.append(
            f"| {name} | {'x'.join(map(str, m['input_shape'][1:]))} | {m['median_ms']:.3f} | {m['p95_ms']:.3f} |"
        )
    lines += [
        "",
        "Ratios (student / baseline, medians): " + ", ".join(f"{k} = {v}" for k, v in r["latency"]["ratios"].items()),
        "",
    ]
    return "\n".join(lines)


if __name__ == "__main__":
    sys.exit(main())
