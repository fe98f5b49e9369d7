"""Ablation from the paper's EG-RepVGG (Table 1) to cpu_repnet, one change at a time: NEU accuracy and speed.

Each step is trained by the same recipe (``neu-compare-fast`` at ``--epochs``, no teacher, the same seeds; selection
on validation) and measured in one process: ONNX Runtime batch-1 latency (1 thread) FP32 and INT8 and batch-64
throughput (2 threads), as ratios to timm ``mobilenetv3_small_050`` exported the same way (untrained: random
weights do not change its speed). Seed-major: all steps of one seed, then ``benchmarks/results/ablation.{json,md}``
rewritten with the seeds done so far (the runs resume; speed is measured once, on the seed-0 models, and kept in
``--runs/speed.json`` with the models' modification times, re-measured when one changed).

    python benchmarks/ablation.py --seeds 3 --epochs 40
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
from neu_cls import export_untrained, int8_of, measure, train  # noqa: E402

W16 = "[16,16,16,16,32,32,32,32,256]"
CHAIN = [
    ("A0", "eg_repvgg (Table 1: GELU, ECA in every block, widths 9-38-256)", "eg_repvgg", []),
    ("A1", "+ ReLU instead of exact GELU (fused into the conv by ORT)", "eg_repvgg",
     ["student.model_kwargs.act=relu"]),
    ("A2", "+ no ECA", "eg_repvgg", ["student.model_kwargs.act=relu", "student.model_kwargs.eca_kernel=0"]),
    ("A3", "+ widths multiples of 16", "eg_repvgg",
     ["student.model_kwargs.act=relu", "student.model_kwargs.eca_kernel=0", f"student.model_kwargs.widths={W16}"]),
    ("A4", "+ 4x4 / stride-4 patch stem for the two stride-2 blocks = cpu_repnet_m", "cpu_repnet_m", []),
    ("A5", "+ last width 128 = cpu_repnet_s", "cpu_repnet_s", []),
]  # fmt: skip


def train_step(runs: Path, step: str, model: str, sets: list[str], seed: int, epochs: int) -> dict:
    run = runs / step / f"seed{seed}"
    if not (run / "report.json").is_file() and not (run / "config.yaml").is_file():
        from neu_cls import cli

        cli("train", "--recipe", "neu-compare-fast", "--model", model, "--seed", str(seed), "--epochs", str(epochs),
            "--out", str(run), *[f"--set={s}" for s in sets])  # fmt: skip
    return train(run, "neu-compare-fast", seed)


def rows_of(runs: Path, reports: dict[str, list[dict]]) -> list[dict]:
    """One table row per step: test accuracy mean ± std over the seeds done, size, and the median seconds per epoch
    over all epochs of those seeds (robust to a few epochs slowed by other work on the machine)."""
    from defectlite.train.loop import read_history

    rows = []
    for step, change, model, sets in CHAIN:
        accs = [r["test"]["accuracy"] for r in reports[step]]
        hist = [h for s in range(len(accs)) for h in read_history(runs / step / f"seed{s}" / "student" / "metrics.csv")]
        rows.append({"step": step, "change": change, "model": model, "sets": sets, "accs": accs,
                     "acc": statistics.fmean(accs), "acc_std": statistics.stdev(accs) if len(accs) > 1 else 0.0,
                     "params": reports[step][0]["profile"]["params_deployed"],
                     "macs": reports[step][0]["profile"]["macs"],
                     "epoch_s": statistics.median(h["epoch_s"] for h in hist)})  # fmt: skip
    return rows


def render(res: dict) -> str:
    sp = res["speed"]
    ref, ref8 = sp["mobilenetv3_small_050 fp32"], sp["mobilenetv3_small_050 int8"]
    lines = [
        "# Ablation: from EG-RepVGG (Table 1) to cpu_repnet",
        "",
        f"Machine: {res['machine']['cpu']}, {res['machine']['cores']} cores; onnxruntime "
        f"{res['machine']['onnxruntime']}. Accuracy: NEU-CLS test, mean ± std over seeds {res['seeds']}, each step "
        f"trained by `neu-compare-fast` for {res['epochs']} epochs without a teacher, selected on validation. Speed: "
        "the trained seed-0 model, ratios to mobilenetv3_small_050 at 1 x 200 x 200 measured in the same run "
        "(batch 1: 1 thread, medians of interleaved rounds; batch 64: 2 threads). Training layout: A0-A3 train in NCHW "
        "(their first block's 1x1 stride-2 branch has 1 input channel, which oneDNN's NHWC backward gets wrong: "
        "uxlfoundation/oneDNN#6035), A4-A5 in NHWC (channels_last); train s / epoch is the median over all epochs of "
        "all seeds.",
        "",
        "| step | change | params | MACs (M) | test acc | b1 FP32 | b1 INT8 (vs its INT8) | b64 FP32 throughput "
        "| train s / epoch |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for row in res["rows"]:
        f, q = sp[f"{row['step']} fp32"], sp[f"{row['step']} int8"]
        lines.append(
            f"| {row['step']} | {row['change']} | {row['params']:,} | {row['macs'] / 1e6:.1f} | "
            f"{100 * row['acc']:.2f} ± {100 * row['acc_std']:.2f} % | {f['b1_ms'] / ref['b1_ms']:.2f} | "
            f"{q['b1_ms'] / ref8['b1_ms']:.2f} | {f['b64_img_s'] / ref['b64_img_s']:.2f} | {row['epoch_s']:.1f} |"
        )
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--seeds", type=int, default=3, choices=range(1, 11), metavar="1..10")
    ap.add_argument("--epochs", type=int, default=40)
    ap.add_argument("--runs", type=Path, default=Path("runs/bench-ablation"))
    ap.add_argument("--out", type=Path, default=Path(__file__).parent / "results" / "ablation")
    args = ap.parse_args(argv)
    ref = export_untrained("timm:mobilenetv3_small_050", args.runs / "untrained")
    speed_file = args.runs / "speed.json"  # measured once, on the seed-0 models, when seed 0 is done
    reports: dict[str, list[dict]] = {step: [] for step, *_ in CHAIN}
    for seed in range(args.seeds):  # seed-major: the table is rewritten as each seed finishes
        for step, _, model, sets in CHAIN:
            reports[step].append(train_step(args.runs, step, model, sets, seed, args.epochs))
        if seed == 0:  # the seed-0 models are the ones timed; their INT8 forms are found (or made) once
            files = {f"mobilenetv3_small_050 {form}": path for form, path in ref.items()}
            for step, *_ in CHAIN:
                files[f"{step} fp32"] = args.runs / step / "seed0" / "model.onnx"
                files[f"{step} int8"] = int8_of(args.runs / step / "seed0")["path"]
        stamp = {k: [str(v), v.stat().st_mtime_ns] for k, v in files.items()}  # re-measure when a model changed
        kept = json.loads(speed_file.read_text()) if speed_file.is_file() else {}
        if kept.get("files") != stamp:
            kept = {"files": stamp, "speed": measure(files, 7)}
            atomic_write_json(speed_file, kept)
        res = {"seeds": list(range(seed + 1)), "epochs": args.epochs, "rows": rows_of(args.runs, reports),
               "speed": kept["speed"], "machine": machine()}  # fmt: skip
        res["files"] = {k: str(v) for k, v in files.items()}
        atomic_write_json(args.out.with_suffix(".json"), res)
        atomic_write_text(args.out.with_suffix(".md"), render(res))
    print(render(res))
    return 0


if __name__ == "__main__":
    sys.exit(main())
