"""NEU-DET benchmark of the default detection recipe, its pruned + distilled form, and a torchvision peer.

Per seed, resumable, each seed's result written as soon as it is complete:

1. ``defectlite train --recipe neu-det-yolo-lite-fast --seed s`` (the default detection recipe);
2. ``defectlite prune RUN --ratio R --layers L --finetune-epochs E --distill`` (BN-gamma channel pruning, layer
   pruning of CSP bottlenecks, fine-tuning with distillation from the unpruned model: the paper's Section 3);
3. the peer: torchvision ``ssdlite320_mobilenet_v3_large`` (BSD-3, ``weights=None, weights_backbone=None``),
   trained on the same split, augmentation and images for the same wall-clock time as step 1 (mosaic off for the
   same last share of its epochs), scored by the same COCO evaluator on the same test images;
4. ONNX Runtime latency of the deployed and the pruned model *including decoding and NMS* (the Predictor's
   postprocessing), batch 1, 1 and 2 threads, median of interleaved rounds after warm-up, on real test images.

Writes ``<out>/neu_det.json`` and ``neu_det.md``: mAP@0.5 and mAP@0.5:0.95 (mean ± std over seeds), per-class AP,
params, MACs, latency and FPS, training minutes, and the pruned and peer rows beside them.

    python benchmarks/neu_det.py --seeds 3
"""

from __future__ import annotations

import argparse
import json
import math
import statistics
import subprocess
import sys
import time
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import torch

from defectlite.data.transforms import normalize
from defectlite.deploy.predictor import Predictor
from defectlite.evaluate.profile import machine, time_call
from defectlite.runs import open_run
from defectlite.tasks import get_task
from defectlite.utils import atomic_write_json, atomic_write_text
from defectlite.workflows.pruning import prune_folder

RECIPE = "neu-det-yolo-lite-fast"


def cli(*args: str) -> None:
    cmd = [sys.executable, "-m", "defectlite.cli.main", "-q", *args]
    print("$", " ".join(cmd[3:]), flush=True)
    subprocess.run(cmd, check=True)


def train(seed: int, run: Path, sets: list[str]) -> dict:
    if not (run / "report.json").is_file():
        if (run / "config.yaml").is_file():
            cli("train", "--resume", str(run))
        else:
            cli("train", "--recipe", RECIPE, "--seed", str(seed), "--out", str(run), *[f"--set={s}" for s in sets])
    return json.loads((run / "report.json").read_text())


def prune_settings(args: argparse.Namespace) -> dict:
    """The pruning settings a seed's entry records (an entry pruned otherwise is not silently kept)."""
    return {"ratio": args.ratio, "layers": args.layers, "finetune_epochs": args.finetune_epochs,
            "round_to": args.round_to}  # fmt: skip


def prune(run: Path, ratio: float, layers: int, epochs: int, round_to: int | None = None) -> dict:
    out = run / prune_folder(ratio, layers, round_to)
    if not (out / "prune_report.json").is_file():
        cli("prune", str(run), "--ratio", str(ratio), "--layers", str(layers), "--finetune-epochs", str(epochs),
            *(["--round-to", str(round_to)] if round_to else []))  # fmt: skip
    return json.loads((out / "prune_report.json").read_text())


def latency_with_nms(onnx_path: Path, images: np.ndarray, threads: int, rounds: int = 5, runs: int = 40) -> dict:
    """Batch-1 ms of ONNX Runtime + decoding + NMS (the Predictor's whole answer) on real images, of exactly
    the file named (never its INT8 sibling)."""
    p = Predictor(onnx_path, threads=threads, fp32=True)
    x = normalize(images, p.meta["mean"], p.meta["std"])
    size = [tuple(images.shape[-2:])]
    samples = []
    for r in range(rounds):
        i = r % len(x)
        samples.append(time_call(lambda i=i: p.answers(p.run(x[i : i + 1]), size), warmup=10, runs=runs))
    ms = float(np.median(np.concatenate(samples)))
    return {"threads": threads, "median_ms": round(ms, 3), "fps": round(1e3 / ms, 1)}


def peer(run: Path, budget_s: float, seed: int) -> dict:
    """torchvision SSDLite320-MobileNetV3 from scratch, trained for ``budget_s`` seconds on the run's split."""
    from torchvision.models.detection import ssdlite320_mobilenet_v3_large

    from defectlite.tasks.detect.augment import DetAugment
    from defectlite.tasks.detect.dataset import DetDataset, collate

    r = open_run(run)
    cfg, task = r.config(), get_task(r.task)
    data = task.load_data(cfg, r, progress=False)
    torch.manual_seed(seed)
    k = len(data.classes)
    model = ssdlite320_mobilenet_v3_large(weights=None, weights_backbone=None, num_classes=k + 1)
    a = cfg.student.augment
    aug = DetAugment(hflip=0.5, vflip=0.5, scale=a.scale, translate=a.translate, brightness=a.brightness,
                     contrast=a.contrast, mosaic_prob=a.mosaic)  # fmt: skip
    images, boxes, labels = data.det_subset("train")
    ds = DetDataset(images, boxes, labels, aug)
    loader = torch.utils.data.DataLoader(ds, 16, shuffle=True, drop_last=True, collate_fn=collate)
    opt = torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9, weight_decay=4e-5)
    close_share = a.close_mosaic / max(cfg.student.optim.epochs, 1)  # mosaic off for the same last share of epochs
    t0, epochs, epoch = time.perf_counter(), None, 0
    while epochs is None or epoch < epochs:
        if epochs is not None and epoch >= epochs - round(close_share * epochs):
            ds.mosaic_prob = 0.0
        model.train()
        for step, (x, targets) in enumerate(loader):
            if epochs is not None:  # cosine over the epochs that fit the budget
                lr = 0.005 * (1 + math.cos(math.pi * (epoch + step / len(loader)) / epochs))
                for g in opt.param_groups:
                    g["lr"] = lr
            xs = [img.float().div(255).expand(3, -1, -1) for img in x]
            tg = [{"boxes": targets[targets[:, 0] == i, 2:], "labels": targets[targets[:, 0] == i, 1].long() + 1}
                  for i in range(len(xs))]  # fmt: skip
            losses = model(xs, tg)
            loss = sum(losses.values())
            opt.zero_grad()
            loss.backward()
            opt.step()
        epoch += 1
        if epochs is None:
            epochs = max(1, int(budget_s / (time.perf_counter() - t0)))
    minutes = (time.perf_counter() - t0) / 60
    test_images, truths, sizes = task.split_truth(data, "test")
    model.eval()
    preds = []
    h_in, w_in = test_images.shape[-2:]
    with torch.no_grad():
        for i in range(0, len(test_images), 16):
            xs = [torch.from_numpy(im).float().div(255).expand(3, -1, -1) for im in test_images[i : i + 16]]
            for out, (h, w) in zip(model(xs), sizes[i : i + 16]):
                keep = out["scores"] >= 0.001
                b = out["boxes"][keep].numpy() * np.array([w / w_in, h / h_in, w / w_in, h / h_in], np.float32)
                preds.append(SimpleNamespace(boxes=b.astype(np.float32), scores=out["scores"][keep].numpy(),
                                             labels=out["labels"][keep].numpy() - 1))  # fmt: skip
    m = task.runtime.score(preds, truths, {"classes": data.classes})
    params = sum(p.numel() for p in model.parameters())
    return {"model": "torchvision ssdlite320_mobilenet_v3_large (from scratch)", "epochs": epochs,
            "train_minutes": minutes, "map50": m["map50"], "map": m["map"], "params": params}  # fmt: skip


def forms(run: Path, report: dict, pr: dict, args: argparse.Namespace) -> dict:
    """The default model and its pruned + distilled form, each as FP32 and INT8: mAP, params, MACs and the
    latency including decode + NMS (1 and 2 threads) on 20 real test images, all measured here."""
    r = open_run(run)
    data = get_task("detect").load_data(r.config(), r, progress=False)
    test = data.det_subset("test")[0][:20]
    rows, out = pr["rows"], run / pr["out"]

    def form(onnx_path: Path, map50: float, params: int, macs: float, **extra) -> dict:
        lat = [latency_with_nms(onnx_path, test, t) for t in (1, 2)]
        return {"map50": map50, "params": params, "macs": macs, "latency": lat, **extra}

    params, macs = report["profile"]["params_deployed"], report["profile"]["macs"]
    minutes = sum(s["train_minutes"] for s in report["stages"].values())
    kd = rows["finetuned_kd"]
    settings = prune_settings(args)
    entry = {
        "default": form(
            run / "model.onnx",
            report["test"]["map50"],
            params,
            macs,
            map=report["test"]["map"],
            per_class=report["test"]["per_class"],
            train_minutes=minutes,
        ),  # fmt: skip
        "pruned": form(
            out / "finetuned_kd.onnx",
            kd["test_score"],
            kd["params"],
            kd["macs"],
            map=kd.get("test_map"),
            settings=settings,
        ),  # fmt: skip
        "pruned_int8": form(
            out / "finetuned_kd_int8.onnx", rows["finetuned_kd_int8"]["test_score"], kd["params"], kd["macs"]
        ),  # fmt: skip
    }
    if (run / "model.int8.onnx").is_file():  # deployed by train (validation within int8.max_drop)
        entry["default_int8"] = form(run / "model.int8.onnx", report["int8"]["int8"]["test"], params, macs)
    return entry


def mean_std(xs: list[float]) -> str:
    xs = [x for x in xs if x is not None]
    if not xs:
        return "—"
    s = statistics.stdev(xs) if len(xs) > 1 else 0.0
    return f"{100 * statistics.fmean(xs):.2f} ± {100 * s:.2f}"


def render(res: dict) -> str:
    seeds = sorted(res["seeds"], key=int)
    rows = [res["seeds"][s] for s in seeds]
    lines = [
        f"# NEU-DET: `{RECIPE}`, its pruned + distilled form, and a torchvision peer ({len(seeds)} seed(s))",
        "",
        f"Machine: {res['machine']['cpu']}, {res['machine']['cores']} cores, torch {res['machine']['torch']}, "
        f"onnxruntime {res['machine']['onnxruntime']}. Test split of each seed's own 8:1:1 split (stratified by an "
        "image's dominant class), COCO bbox protocol (faster-coco-eval), score threshold 0.001, boxes in the "
        "images' own pixels. Latency: ONNX Runtime batch 1 including decoding and NMS (NumPy), median after "
        "warm-up, on real test images; speed-up: the default model of the same precision over this one, same run. "
        "The paper's numbers are on its own private 4-class data at 416 px on a GPU "
        "with ImageNet pre-training; these are from scratch on a CPU.",
        "",
        "| model | mAP@0.5 | mAP@0.5:0.95 | params | MACs (G) | ms b1, 1 thread (FPS) | ms b1, 2 threads (FPS) "
        "| speed-up (1 thread) | train min |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    table = (("default", f"{RECIPE} (yolo_lite), FP32", "default"), ("default_int8", "the same, INT8 (deployed)",
             "default_int8"), ("pruned", "pruned + distilled, FP32", "default"),
             ("pruned_int8", "pruned + distilled, INT8", "default_int8"))  # fmt: skip
    for key, name, base in table:
        if not all(key in r and base in r for r in rows):
            continue
        lat1 = statistics.fmean(r[key]["latency"][0]["median_ms"] for r in rows)
        lat2 = statistics.fmean(r[key]["latency"][1]["median_ms"] for r in rows)
        speed = statistics.fmean(r[base]["latency"][0]["median_ms"] / r[key]["latency"][0]["median_ms"] for r in rows)
        train = statistics.fmean(r[key]["train_minutes"] for r in rows) if "train_minutes" in rows[0][key] else None
        lines.append(
            f"| {name} | {mean_std([r[key]['map50'] for r in rows])} | {mean_std([r[key].get('map') for r in rows])} "
            f"| {int(statistics.fmean(r[key]['params'] for r in rows)):,} | "
            f"{statistics.fmean(r[key]['macs'] for r in rows) / 1e9:.2f} | {lat1:.2f} ({1e3 / lat1:.0f}) | "
            f"{lat2:.2f} ({1e3 / lat2:.0f}) | {speed:.2f}x | {'—' if train is None else f'{train:.1f}'} |"
        )
    peers = [r["peer"] for r in rows if "peer" in r]
    if peers:
        of = "" if len(peers) == len(rows) else f" ({len(peers)} of {len(rows)} seeds)"
        lines.append(
            f"| {peers[0]['model']}, same wall-clock budget{of} | {mean_std([p['map50'] for p in peers])} "
            f"| {mean_std([p['map'] for p in peers])} | {peers[0]['params']:,} | — | — | — | "
            f"— | {statistics.fmean(p['train_minutes'] for p in peers):.1f} |"
        )
    settings = rows[0]["pruned"].get("settings", {})
    lines += ["", f"Training: `{RECIPE}`" + "".join(f" `--set {o}`" for o in res.get("overrides", [])) + "; pruning: "
              + ", ".join(f"{k} {v}" for k, v in settings.items()) + " (`defectlite prune`, distilled)."]  # fmt: skip
    lines += [f"Peer of seed {s}: {r['peer']['note']}." for s, r in zip(seeds, rows) if "note" in r.get("peer", {})]
    lines += ["", "Per class AP@0.5 of the default model (mean over seeds):", "", "| class | AP@0.5 |", "|---|---|"]
    for c in rows[0]["default"]["per_class"]:
        lines.append(f"| {c} | {mean_std([r['default']['per_class'][c]['ap50'] for r in rows])} |")
    lines += ["", "Per seed:", "", "| seed | default mAP@0.5 | pruned mAP@0.5 | params removed | peer mAP@0.5 |",
              "|---|---|---|---|---|"]  # fmt: skip
    for s, r in zip(seeds, rows):
        removed = 1 - r["pruned"]["params"] / r["default"]["params"]
        peer_map = f"{100 * r['peer']['map50']:.2f}" if "peer" in r else "—"
        lines.append(f"| {s} | {100 * r['default']['map50']:.2f} | {100 * r['pruned']['map50']:.2f} | "
                     f"{100 * removed:.1f} % | {peer_map} |")  # fmt: skip
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--seeds", type=int, default=3)
    ap.add_argument("--runs", type=Path, default=Path("runs/bench-neu-det"))
    ap.add_argument("--out", type=Path, default=Path(__file__).parent / "results")
    ap.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE")
    # defaults: the smallest setting that meets the size and speed targets on a trained yolo_lite (ratio 0.4
    # with widths in multiples of 8: 65 % of parameters removed, 2.5x faster network; 0.35: 59.8 %), not more
    ap.add_argument("--ratio", type=float, default=0.4, help="channel pruning ratio (default: %(default)s)")
    ap.add_argument("--layers", type=int, default=0, help="residual blocks removed (default: %(default)s)")
    ap.add_argument("--round-to", type=int, default=8, help="pruned channel counts multiples of this (default: 8)")
    ap.add_argument("--finetune-epochs", type=int, default=30, help="each fine-tuning (default: %(default)s)")
    ap.add_argument(
        "--no-peer", action="store_true", help="skip the torchvision peer (a later run without this flag adds it)"
    )
    args = ap.parse_args(argv)
    path = args.out / "neu_det.json"
    res = json.loads(path.read_text()) if path.is_file() else {"recipe": RECIPE, "seeds": {}}
    trained = any("default" in e for e in res["seeds"].values())  # a file of before this key: trained without --set
    if res.setdefault("overrides", [] if trained else args.overrides) != args.overrides:
        sys.exit(f"{path}: its seeds were trained with --set {res['overrides']}, not {args.overrides}: pass --out")
    for seed in range(args.seeds):
        old = res["seeds"].get(str(seed))
        if old is not None and "pruned_int8" in old:
            wanted = prune_settings(args)
            done = {k: old["pruned"].get("settings", {}).get(k) for k in wanted}
            if done != wanted:
                sys.exit(f"{path}: seed {seed} was pruned with {done}, not {wanted}: pass --out to another folder")
            if "peer" in old or args.no_peer:
                continue
            entry = old  # complete but run with --no-peer: only its peer is added
        else:
            run = args.runs / f"seed{seed}"
            report = train(seed, run, args.overrides)
            pr = prune(run, args.ratio, args.layers, args.finetune_epochs, args.round_to)
            entry = forms(run, report, pr, args)  # an entry of an older version of this script: re-measured
            if old is not None and "peer" in old:
                entry["peer"] = old["peer"]
        if "peer" not in entry and not args.no_peer:
            entry["peer"] = peer(args.runs / f"seed{seed}", entry["default"]["train_minutes"] * 60, seed)
        res["seeds"][str(seed)] = entry
        res["machine"] = machine()
        atomic_write_json(path, res)
        atomic_write_text(path.with_suffix(".md"), render(res))
        print(render(res), flush=True)
    if res["seeds"] and "machine" in res:
        atomic_write_text(path.with_suffix(".md"), render(res))
    return 0


if __name__ == "__main__":
    sys.exit(main())
