"""Beyond one process, measured on this machine: DDP training, ensemble members in parallel, Ray Data inspection.

    python benchmarks/scale.py ddp            # default recipe, seed 0: --nproc 1 vs --nproc 2 (accuracy, wall time)
    python benchmarks/scale.py jobs           # a 5-member NEU ensemble's members: --jobs 1 vs --jobs 2 (wall time)
    python benchmarks/scale.py ray --model M  # 10,000 images (NEU repeated): predict --engine ray (its defaults,
                                              # --actors 2, --batch-size 256, both, and --address auto on a
                                              # cluster started before the clock) vs local; --images N

Each writes ``benchmarks/results/scale_<what>.{json,md}``. Wall times are of the whole command, on the same cores,
one after the other (nothing else running).
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import threading
import time
from pathlib import Path

from defectlite.data.locate import default_data_root
from defectlite.evaluate.profile import machine
from defectlite.utils import atomic_write_json, atomic_write_text

RESULTS = Path(__file__).parent / "results"


def timed(cmd: list[str], env: dict | None = None, quiet: bool = False) -> float:
    """Wall seconds of a command (which must succeed); ``quiet``: its standard output is discarded (still timed)."""
    print("$", " ".join(cmd), flush=True)
    t0 = time.perf_counter()
    subprocess.run(cmd, check=True, env={**os.environ, **(env or {})}, stdout=subprocess.DEVNULL if quiet else None)
    return time.perf_counter() - t0


def ddp(runs: Path, epochs: int | None) -> dict:
    rows = {}
    for n in (1, 2):
        run = runs / f"ddp-nproc{n}"
        if not (run / "report.json").is_file():
            extra = ["--epochs", str(epochs)] if epochs else []
            cmd = [sys.executable, "-m", "defectlite.cli.main", "-q", "train", "--out", str(run), *extra]
            wall = timed([*cmd, "--nproc", str(n)] if n > 1 else cmd)
            (run / "wall_s.txt").write_text(f"{wall}\n")
        report = json.loads((run / "report.json").read_text())
        wall = float((run / "wall_s.txt").read_text()) / 60
        rows[n] = {"test_accuracy": report["test"]["accuracy"], "wall_minutes": wall,
                   "train_minutes": sum(s["train_minutes"] for s in report["stages"].values())}  # fmt: skip
    lines = ["# DDP on one machine: default recipe, seed 0", "", "| processes | test accuracy | train min | wall min |",
             "|---|---|---|---|"]  # fmt: skip
    lines += [f"| {n} | {100 * r['test_accuracy']:.2f} % | {r['train_minutes']:.1f} | {r['wall_minutes']:.1f} |"
              for n, r in rows.items()]  # fmt: skip
    return {"rows": rows, "md": lines}


def jobs(runs: Path, epochs: int) -> dict:
    rows = {}
    for j in (1, 2):
        run = runs / f"jobs{j}"
        if not (run / "wall_s.txt").is_file():
            cmd = [sys.executable, "-m", "defectlite.cli.main", "-q", "train", "--recipe", "neu-ensemble-fast",
                   "--model", "cpu_repnet_m", "--epochs", str(epochs), "--out", str(run), "--jobs", str(j)]  # fmt: skip
            wall = timed(cmd)
            (run / "wall_s.txt").write_text(f"{wall}\n")
        report = json.loads((run / "report.json").read_text())
        members = [s for k, s in report["stages"].items() if k.startswith("member")]
        rows[j] = {"wall_minutes": float((run / "wall_s.txt").read_text()) / 60,
                   "member_train_minutes": sum(s["train_minutes"] for s in members),
                   "focal_ensemble_accuracy": report["test_all"]["focal_ensemble"]["accuracy"]}  # fmt: skip
    lines = [f"# Ensemble members in parallel: 5 members of cpu_repnet_m (neu-ensemble-fast, --epochs {epochs})", "",
             "| --jobs | wall min (members + student) | member training min, summed | focal ensemble test acc |",
             "|---|---|---|---|"]  # fmt: skip
    lines += [f"| {j} | {r['wall_minutes']:.1f} | {r['member_train_minutes']:.1f} | "
              f"{100 * r['focal_ensemble_accuracy']:.2f} % |" for j, r in rows.items()]  # fmt: skip
    return {"rows": rows, "md": lines}


def _rss_mb(pattern: str) -> float:
    """Resident memory (MB) of the processes whose command line contains ``pattern``."""
    total = 0
    for pid in os.listdir("/proc"):
        if not pid.isdigit():
            continue
        try:
            if pattern in Path(f"/proc/{pid}/cmdline").read_bytes().decode(errors="replace"):
                status = Path(f"/proc/{pid}/status").read_text()
                total += next(int(ln.split()[1]) for ln in status.splitlines() if ln.startswith("VmRSS"))
        except (OSError, StopIteration):
            continue
    return total / 1024


RAY_CONFIGS = {  # what predict --engine ray is given beside the defaults
    "default": [],
    "--actors 2": ["--actors", "2"],
    "--batch-size 256": ["--batch-size", "256"],
    "--actors 2 --batch-size 256": ["--actors", "2", "--batch-size", "256"],
    "--address auto (a running `ray start --head`)": ["--address", "auto"],
}
RAY_HEAD = ["ray", "start", "--head", "--num-cpus", str(len(os.sched_getaffinity(0))), "--include-dashboard=false",
            "--disable-usage-stats"]  # fmt: skip


def ray(runs: Path, model: Path, n: int) -> dict:
    folder = runs / f"ray-images-{n}"
    src = sorted((default_data_root() / "neu-surface-defect" / "images").glob("*.jpg"))
    if not folder.is_dir():
        folder.mkdir(parents=True)
        for i in range(n):  # links, not copies: n names over the 1,800 NEU files
            os.symlink(src[i % len(src)], folder / f"{i:06d}_{src[i % len(src)].name}")
    for f in sorted(folder.iterdir()):  # warm the page cache (links and images) so that no engine pays for a cold disk
        f.read_bytes()
    local_s = timed([sys.executable, "-m", "defectlite.cli.main", "-q", "predict", str(model), str(folder), "--csv",
                     str(runs / "local.csv")], {"OMP_NUM_THREADS": "1"}, quiet=True)  # fmt: skip
    rows: dict = {"images": n, "local_s": local_s, "local_images_per_s": n / local_s, "ray": {}}
    lines = [f"# Batch inspection of {n:,} images (NEU repeated), 2 cores", "",
             "Wall time of the whole command (Ray's start-up included, except with `--address auto`, whose cluster "
             "was started before the clock), one after the other, nothing else running, every file read once "
             "before the first clock (a cold disk cost the first engine timed up to 5x).",
             "", "| engine | wall s | images/s | Ray / local | peak RSS of the Ray processes, MB |",
             "|---|---|---|---|---|",
             f"| local `predict --csv` (1 thread) | {local_s:.1f} | {n / local_s:.0f} | 1 | — |"]  # fmt: skip
    for name, extra in RAY_CONFIGS.items():
        peak = {"mb": 0.0}
        stop = threading.Event()

        def watch(stop: threading.Event = stop, peak: dict = peak) -> None:
            while not stop.is_set():
                peak["mb"] = max(peak["mb"], _rss_mb("ray"))
                time.sleep(0.5)

        shutil.rmtree(runs / "ray-out", ignore_errors=True)  # predict --engine ray refuses a folder holding Parquet
        cluster = "--address" in extra
        if cluster:  # started before the clock: a plant's cluster is up before its jobs come
            subprocess.run(RAY_HEAD, check=True, stdout=subprocess.DEVNULL)
        t = threading.Thread(target=watch, daemon=True)
        t.start()
        try:
            ray_s = timed([sys.executable, "-m", "defectlite.cli.main", "-q", "predict", str(model), str(folder),
                           "--engine", "ray", "--out", str(runs / "ray-out"), *extra])  # fmt: skip
        finally:
            stop.set()
            t.join()
            if cluster:
                subprocess.run(["ray", "stop"], check=False, stdout=subprocess.DEVNULL)
        rows["ray"][name] = {"s": ray_s, "images_per_s": n / ray_s, "ratio": local_s / ray_s, "peak_rss_mb": peak["mb"]}
        lines.append(f"| `--engine ray` {name} | {ray_s:.1f} | {n / ray_s:.0f} | {local_s / ray_s:.2f} | "
                     f"{peak['mb']:.0f} |")  # fmt: skip
    return {"rows": rows, "md": lines}


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("what", choices=["ddp", "jobs", "ray"])
    ap.add_argument("--runs", type=Path, default=Path("runs/bench-scale"))
    ap.add_argument("--epochs", type=int, help="ddp: override the default recipe's epochs; jobs: member epochs")
    ap.add_argument("--model", type=Path, help="ray: the model.onnx to run")
    ap.add_argument("--images", type=int, default=10_000, help="ray: images to inspect")
    args = ap.parse_args(argv)
    args.runs.mkdir(parents=True, exist_ok=True)
    if args.what == "ddp":
        res = ddp(args.runs, args.epochs)
    elif args.what == "jobs":
        res = jobs(args.runs, args.epochs or 20)
    else:
        if args.model is None:
            ap.error("ray needs --model")
        res = ray(args.runs, args.model, args.images)
    res["machine"] = machine()
    md = [*res.pop("md"), "", f"Machine: {res['machine']['cpu']}, {res['machine']['cores']} cores.", ""]
    name = f"scale_{args.what}" + (f"_{args.images}" if args.what == "ray" and args.images != 10_000 else "")
    atomic_write_json(RESULTS / f"{name}.json", res)
    atomic_write_text(RESULTS / f"{name}.md", "\n".join(md))
    print("\n".join(md))
    return 0


if __name__ == "__main__":
    sys.exit(main())
