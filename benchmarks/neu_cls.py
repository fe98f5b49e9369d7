"""NEU-CLS Pareto benchmark: the default recipe against the paper's EG-RepVGG and timm peers, all in one run.

Full mode (per seed, resumable; each model's runs in ``--runs/<model>/seed<s>``):

- the default recipe (``defectlite train``), whose deployed model is FP32 ``model.onnx`` and, when it keeps the
  validation accuracy, INT8 ``model.int8.onnx``;
- ``eg_repvgg`` as in the paper (``neu-kd-eg-repvgg-fast``: the Table-1 network distilled from a teacher);
- timm peers trained by the same loop (``neu-compare-fast``: SGD, cosine, EMA, the same augmentation and
  selection) for the same wall-clock budget as the default recipe: each peer's epochs = the default's mean
  training seconds / the peer's own seconds per epoch (measured by a 2-epoch probe), at least 1, and the budget as
  the peer's time limit (``student.optim.time_limit_minutes``: it stops before an epoch that would overrun, so
  a peer whose later epochs run slower than the probe's still trains within the budget);
- every model also INT8-quantised the same way (ONNX Runtime static QDQ, per channel, 256 training images).

Then, in one process: ONNX Runtime batch-1 latency (1 thread) and batch-64 throughput (2 threads) of every model,
interleaved over rounds; test accuracy mean ± std over seeds (selection on validation only); a markdown table and
``neu_cls_pareto.png`` (accuracy against latency).

Quick mode (``--quick``): the latency / throughput duel only, on untrained models exported the same way.

    python benchmarks/neu_cls.py --seeds 3          # about 2 hours on 2 cores
    python benchmarks/neu_cls.py --quick
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
from pathlib import Path

import numpy as np
import torch

from defectlite.compress.int8 import quantize_onnx
from defectlite.deploy.onnx_export import export_onnx
from defectlite.evaluate.profile import interleaved_ort_latency, machine
from defectlite.models import create_model
from defectlite.train.loop import read_history
from defectlite.utils import atomic_write_json, atomic_write_text

DEFAULT_RECIPE = "neu-cpu-repnet-fast"
PAPER = ("eg_repvgg (paper, KD)", "neu-kd-eg-repvgg-fast", None)
PEERS = ("mobilenetv3_small_050", "mobilenetv3_small_100", "resnet18", "repvgg_a0")


def cli(*args: str) -> None:
    cmd = [sys.executable, "-m", "defectlite.cli.main", "-q", *args]
    print("$", " ".join(cmd[3:]), flush=True)
    subprocess.run(cmd, check=True)


def train(run: Path, recipe: str, seed: int, model: str | None = None, epochs: int | None = None,
          sets: tuple[str, ...] = ()) -> dict:  # fmt: skip
    """Train one run through the CLI (resuming a started one) and return its report."""
    if not (run / "report.json").is_file():
        if (run / "config.yaml").is_file():
            cli("train", "--resume", str(run))
        else:
            extra = (["--model", model] if model else []) + (["--epochs", str(epochs)] if epochs else [])
            extra += [f"--set={s}" for s in sets]
            cli("train", "--recipe", recipe, "--seed", str(seed), "--out", str(run), *extra)
    return json.loads((run / "report.json").read_text())


def _epochs_run(reports: list[dict], planned: int | None) -> str:
    """The student epochs the seeds ran: ``N``, or ``N1/N2/.. of planned`` where a time limit stopped one."""
    run = [r["stages"]["student"].get("epochs_run", r["stages"]["student"]["epochs"]) for r in reports]
    if planned is None:
        return "recipe"
    return str(planned) if all(n == planned for n in run) else f"{'/'.join(map(str, run))} of {planned}"


def epoch_seconds(runs: Path, model: str) -> float:
    """Seconds per epoch of ``model`` under ``neu-compare-fast`` (a 2-epoch probe; its second epoch)."""
    probe = runs / "probes" / model.replace(":", "_")
    train(probe, "neu-compare-fast", 0, model, 2)
    return read_history(probe / "student" / "metrics.csv")[-1]["epoch_s"]


def int8_of(run: Path) -> dict:
    """The INT8 form of a run's model.onnx (the one training deployed, else quantised here the same way) and its
    validation / test accuracy."""
    from defectlite.deploy.predictor import Predictor
    from defectlite.runs import open_run
    from defectlite.tasks import get_task

    report = json.loads((run / "report.json").read_text())
    q = report.get("int8")
    path = run / "model.int8.onnx"
    if q and q["deployed"]:
        return {"path": path, "val": q["int8"]["val"], "test": q["int8"]["test"], "deployed": True}
    r = open_run(run)
    task = get_task(r.task)
    data = task.load_data(r.config(), r, progress=False)
    path = run / "peer.int8.onnx"  # not "model.int8.onnx": predict would take it for the deployed form
    if not path.is_file():
        from defectlite.data.transforms import normalize

        meta = Predictor(run / "model.onnx", fp32=True).meta
        quantize_onnx(run / "model.onnx", path, normalize(task.split_truth(data, "train")[0][:256], meta["mean"],
                                                           meta["std"]))  # fmt: skip
    p = Predictor.for_scoring(path)
    scores = {s: p.score(*task.split_truth(data, s))["accuracy"] for s in ("val", "test")}
    return {"path": path, **scores, "deployed": False}


def export_untrained(name: str, folder: Path, shape=(1, 200, 200)) -> dict[str, Path]:
    """FP32 and INT8 ONNX of an untrained model (random BN statistics do not change speed), for the quick duel."""
    fp32, int8 = folder / f"{name.replace(':', '_')}.onnx", folder / f"{name.replace(':', '_')}.int8.onnx"
    if not int8.is_file():
        torch.manual_seed(0)
        model = create_model(name, num_classes=6, in_chans=shape[0]).eval()
        card = {"model": name, "classes": [str(i) for i in range(6)], "input_size": list(shape[1:]),
                "in_chans": shape[0], "mean": [0.5] * shape[0], "std": [0.25] * shape[0]}  # fmt: skip
        export_onnx(model, card, fp32)
        calib = np.random.default_rng(0).standard_normal((32, *shape)).astype(np.float32)
        quantize_onnx(fp32, int8, calib)
    return {"fp32": fp32, "int8": int8}


def measure(files: dict[str, Path], rounds: int) -> dict[str, dict]:
    """Batch-1 (1 thread) and batch-64 (2 threads) ONNX Runtime speed of every file, interleaved, one process."""
    b1 = interleaved_ort_latency(files, threads=1, rounds=rounds, runs=200, warmup=50)
    b64 = interleaved_ort_latency(files, threads=2, rounds=rounds, runs=6, warmup=2, batch=64)
    return {n: {"b1_ms": b1[n]["median_ms"], "b1_p95_ms": b1[n]["p95_ms"], "b64_img_s": b64[n]["images_per_s"]}
            for n in files}  # fmt: skip


def mean_std(xs: list[float]) -> tuple[float, float]:
    return statistics.fmean(xs), statistics.stdev(xs) if len(xs) > 1 else 0.0


def render(res: dict) -> str:
    ref = res["speed"]["mobilenetv3_small_050 fp32"]
    ref8 = res["speed"]["mobilenetv3_small_050 int8"]
    lines = [
        f"# NEU-CLS: `{res['recipe']}` against the paper's EG-RepVGG and timm peers ({res['mode']})",
        "",
        f"Machine: {res['machine']['cpu']}, {res['machine']['cores']} cores, torch {res['machine']['torch']}, "
        f"onnxruntime {res['machine']['onnxruntime']}. Latency: ONNX Runtime batch 1, 1 intra-op thread, median of "
        f"{res['rounds']} interleaved rounds x 200 runs after 50 warm-up; throughput: batch 64, 2 threads. All "
        "models measured in the same process; INT8 = ONNX Runtime static QDQ, per channel, the same for every model.",
        "",
    ]
    if res["mode"] == "full":
        lines += [f"Training budget of the peers: {res['budget_minutes']:.1f} min per seed (the default recipe's "
                  "mean training time); peers trained by the same loop (`neu-compare-fast`).", ""]  # fmt: skip
    lines += [
        "| model | form | seeds | test acc (mean ± std) | val acc | train min | epochs | ms b1 | x mnv3s050 FP32 | "
        "x mnv3s050 INT8 | img/s b64 | x mnv3s050 b64 |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for row in res["rows"]:
        s = res["speed"][row["key"]]
        acc = f"{100 * row['acc']:.2f} ± {100 * row['acc_std']:.2f} %" if row.get("acc") is not None else "—"
        val = f"{100 * row['val']:.2f} %" if row.get("val") is not None else "—"
        tm = f"{row['train_minutes']:.1f}" if row.get("train_minutes") else "—"
        lines.append(
            f"| {row['model']} | {row['form']} | {row.get('seeds') or '—'} | {acc} | {val} | {tm} "
            f"| {row.get('epochs') or '—'} | {s['b1_ms']:.3f} "
            f"| {s['b1_ms'] / ref['b1_ms']:.2f} | {s['b1_ms'] / ref8['b1_ms']:.2f} | {s['b64_img_s']:,.0f} "
            f"| {s['b64_img_s'] / ref['b64_img_s']:.2f} |"
        )
    lines += ["", f"Accuracy against latency: `{res['name']}_pareto.png`.", ""]
    return "\n".join(lines)


def pareto(res: dict, path: Path) -> None:
    from defectlite.evaluate.report import pyplot, save_figure

    plt = pyplot()  # sets the non-interactive backend before any other matplotlib import
    from matplotlib.ticker import FormatStrFormatter, LogLocator

    fig, ax = plt.subplots(figsize=(7.5, 5))
    for row in res["rows"]:
        if row.get("acc") is None:
            continue
        ms = res["speed"][row["key"]]["b1_ms"]
        marker = "o" if row["form"] == "FP32" else "s"
        ax.errorbar(ms, 100 * row["acc"], yerr=100 * row["acc_std"], fmt=marker, capsize=3)
        below = row["form"] != "FP32"  # an FP32 / INT8 pair often sits at one accuracy: labels above / below
        ax.annotate(f"{row['model']} {row['form']}", (ms, 100 * row["acc"]), fontsize=7,
                    xytext=(4, -9 if below else 3), textcoords="offset points")  # fmt: skip
    ax.set_xscale("log")
    ax.xaxis.set_major_formatter(FormatStrFormatter("%g"))
    ax.xaxis.set_minor_locator(LogLocator(subs=(2.0, 5.0)))  # 0.2, 0.5, 2, 5 ...: labels that do not collide
    ax.xaxis.set_minor_formatter(FormatStrFormatter("%g"))
    ax.tick_params(axis="x", which="minor", labelsize=7)
    ax.set_xlabel("ONNX Runtime batch-1 latency, ms (1 thread, log)")
    ax.set_ylabel("NEU-CLS test accuracy, % (mean ± std over seeds)")
    ax.grid(alpha=0.3)
    fig.tight_layout()
    save_figure(fig, path)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--seeds", type=int, default=3)
    ap.add_argument("--peer-seeds", type=int, help="seeds of each timm peer (default: --seeds); fewer if time is short")
    ap.add_argument("--peers", default=",".join(PEERS), help="comma-separated timm peers (default: %(default)s)")
    ap.add_argument("--recipe", default=DEFAULT_RECIPE)
    ap.add_argument("--runs", type=Path, default=Path("runs/bench-neu-cls"))
    ap.add_argument("--paper-seeds", type=int, help="seeds of eg_repvgg (default: --seeds; 0: left out)")
    ap.add_argument("--name", default="neu_cls", help="result files <out>/<name>.{json,md} (default: %(default)s)")
    ap.add_argument("--eg-runs", type=Path, help="existing neu-kd-eg-repvgg-fast runs <dir>/seed<s> to reuse")
    ap.add_argument("--out", type=Path, default=Path(__file__).parent / "results")
    ap.add_argument("--rounds", type=int, default=7)
    ap.add_argument("--quick", action="store_true", help="latency / throughput of untrained models only")
    args = ap.parse_args(argv)
    torch.set_num_threads(2)
    files: dict[str, Path] = {}
    rows: list[dict] = []
    if args.quick:
        from defectlite.train.config import load_recipe

        ours = load_recipe(args.recipe).student.model
        for name, label in ((ours, ours), ("eg_repvgg", "eg_repvgg (paper)"), *((f"timm:{p}", p) for p in PEERS)):
            for form, f in export_untrained(name, args.runs / "untrained").items():
                files[f"{label} {form}"] = f
                rows.append({"model": label, "form": form.upper(), "key": f"{label} {form}"})
        res = {"mode": "quick", "recipe": args.recipe, "rounds": args.rounds}
    else:
        seeds = range(args.seeds)
        ours = [train(args.runs / "default" / f"seed{s}", args.recipe, s) for s in seeds]
        budget_s = statistics.fmean(sum(st["train_minutes"] for st in r["stages"].values()) for r in ours) * 60
        entries = [("default", args.recipe, None, None, seeds)]
        paper_seeds = range(args.seeds if args.paper_seeds is None else args.paper_seeds)
        if paper_seeds:
            entries.append(("eg_repvgg (paper, KD)", PAPER[1], None, None, paper_seeds))
        peer_seeds = range(args.peer_seeds or args.seeds)
        for peer in filter(None, args.peers.split(",")):
            epochs = max(1, int(budget_s / epoch_seconds(args.runs, f"timm:{peer}")))
            entries.append((peer, "neu-compare-fast", f"timm:{peer}", epochs, peer_seeds))
        limit = (f"student.optim.time_limit_minutes={budget_s / 60:.3f}",)
        for label, recipe, model, epochs, its_seeds in entries:
            folder = args.runs / label.split()[0]
            if label.startswith("eg_repvgg") and args.eg_runs:
                folder = args.eg_runs
            reports = [train(folder / f"seed{s}", recipe, s, model, epochs, limit if model else ()) for s in its_seeds]
            int8 = [int8_of(folder / f"seed{s}") for s in its_seeds]
            name = model.removeprefix("timm:") if model else reports[0]["model"]
            acc, std = mean_std([r["test"]["accuracy"] for r in reports])
            vals = [r["stages"]["student"]["best_val_score"] for r in reports]
            minutes = statistics.fmean(sum(st["train_minutes"] for st in r["stages"].values()) for r in reports)
            files[f"{name} fp32"] = folder / "seed0" / "model.onnx"
            files[f"{name} int8"] = int8[0]["path"]
            rows.append({"model": name, "form": "FP32", "key": f"{name} fp32", "acc": acc, "acc_std": std,
                         "val": statistics.fmean(vals), "train_minutes": minutes,
                         "epochs": _epochs_run(reports, epochs), "accs": [r["test"]["accuracy"] for r in reports],
                         "seeds": len(reports)})  # fmt: skip
            a8, s8 = mean_std([q["test"] for q in int8])
            rows.append({"model": name, "form": "INT8" + (" (deployed)" if int8[0]["deployed"] else ""),
                         "key": f"{name} int8", "acc": a8, "acc_std": s8,
                         "val": statistics.fmean(q["val"] for q in int8), "seeds": len(int8)})  # fmt: skip
        res = {"mode": "full", "recipe": args.recipe, "rounds": args.rounds, "budget_minutes": budget_s / 60,
               "seeds": list(seeds)}  # fmt: skip
        for need in ("mobilenetv3_small_050",):  # the yardstick must be in the duel
            assert f"{need} fp32" in files
    res["name"] = args.name
    res["speed"] = measure(files, args.rounds)
    res["rows"] = rows
    res["files"] = {k: str(v) for k, v in files.items()}
    res["machine"] = machine()
    name = args.name if not args.quick else f"{args.name}_quick"
    atomic_write_json(args.out / f"{name}.json", res)
    atomic_write_text(args.out / f"{name}.md", render(res))
    if not args.quick:
        pareto(res, args.out / f"{name}_pareto.png")
    print(render(res))
    return 0


if __name__ == "__main__":
    sys.exit(main())
