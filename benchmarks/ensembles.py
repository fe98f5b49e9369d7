"""Ensemble-distillation benchmark (WeldNet paper, Tables 3-4) on NEU-CLS and casting-product.

For each data set, model, training-set fraction and seed: ``defectlite train --recipe <ds>-ensemble-fast
--model <model> --set data.train_fraction=<f> --seed <s>``
(resumable). Then a
table like Tables 3-4: single model (mean of the 5 members), mean ensemble, focal ensemble, FE + KD
student, test accuracy mean ± std over seeds, parameters, and ONNX Runtime batch-1 latency of a single
member, the focal ensemble and the student (exported the same way, measured interleaved in one process).

    python benchmarks/ensembles.py --seeds 3 --fractions 0.1        # the reduced-data study
    python benchmarks/ensembles.py --seeds 1 --fractions 1.0        # full training sets
    python benchmarks/ensembles.py --summary                         # all result files in one table
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
from pathlib import Path

from defectlite.compress.reparam import reparameterize
from defectlite.compress.restore import load_checkpoint
from defectlite.deploy.onnx_export import export_onnx
from defectlite.evaluate.profile import count_params, interleaved_ort_latency
from defectlite.runs import open_run
from defectlite.tasks.classify.ensemble import Ensemble
from defectlite.utils import atomic_write_json, atomic_write_text


def run_one(
    ds: str, model: str, fraction: float, seed: int, run_dir: Path, epochs: int | None, sets: list[str]
) -> dict:
    if not (run_dir / "report.json").is_file():
        if (run_dir / "config.yaml").is_file():
            cmd = ["defectlite", "-q", "train", "--resume", str(run_dir)]
        else:
            cmd = [
                "defectlite",
                "-q",
                "train",
                "--recipe",
                f"{ds}-ensemble-fast",
                "--seed",
                str(seed),
                "--out",
                str(run_dir),
                "--model",
                model,
                "--set",
                f"data.train_fraction={fraction}",
            ]
            if epochs:  # members; the distilled student trains 3x as long (see the recipe)
                cmd += [
                    "--set",
                    f"ensemble.member.optim.epochs={epochs}",
                    "--set",
                    f"student.optim.epochs={3 * epochs}",
                ]
            cmd += [a for kv in sets for a in ("--set", kv)]
        print("$", " ".join(cmd), flush=True)
        subprocess.run(cmd, check=True)
    return json.loads((run_dir / "report.json").read_text())


def ensemble_onnx(run_dir: Path, method: str = "focal", k: float = 2.0) -> tuple[Path, Path, int]:
    """Export member 0 and the whole ensemble (same exporter) for the latency comparison."""
    single, ens = run_dir / "member0.onnx", run_dir / f"ensemble_{method}.onnx"
    members, card, run = [], None, open_run(run_dir)
    for stage in run.members():
        model, card = load_checkpoint(run.best(stage))
        members.append(reparameterize(model))
    if not single.is_file():
        export_onnx(members[0], card, single)
    if not ens.is_file():
        export_onnx(Ensemble(members, method, k), {**card, "model": f"{method}-ensemble of {len(members)}"}, ens)
    return single, ens, sum(count_params(m) for m in members)


def member_epochs(fraction: float, epochs: int | None = None) -> int | None:
    """Member epochs of a run: ``epochs`` if given (--epochs), else 40 below half the training split,
    else the recipe's (None)."""
    return epochs or (40 if fraction < 0.5 else None)


def group_key(ds: str, model: str, fraction: float, epochs: int | None, sets: list[str] | None) -> tuple:
    """What makes two result groups the same experiment: data set, model, fraction, member epochs, overrides."""
    return ds, model, float(fraction), member_epochs(fraction, epochs), tuple(sets or ())


def refuse_overwrite(path: Path, planned: set[tuple]) -> None:
    """Stop before any training if ``path`` holds results of other experiments than ``planned``.

    Result files are named by data set and fraction only, so a run of another model or with other
    overrides into the same folder would replace them; the same experiments (e.g. more seeds) may.

    Raises:
        SystemExit: naming the file, what it holds, and that ``--out DIR`` keeps both.
    """
    if not path.is_file():
        return
    held = {
        group_key(g["dataset"], g["model"], g["fraction"], g.get("member_epochs"), g.get("overrides"))
        for g in json.loads(path.read_text())["groups"]
    }
    if held != planned:
        raise SystemExit(
            f"{path} holds other results ({sorted(held)}) than this run's {sorted(planned)}; "
            "it would be overwritten: pass --out DIR to write elsewhere"
        )


def gain_and_kept(group: dict) -> tuple[float, float]:
    """Focal-ensemble gain over a single model and the part the student keeps (accuracy fractions)."""
    acc = group["accuracy"]
    single = acc["single (member mean)"][0]
    return acc["focal ensemble"][0] - single, acc["FE + KD student"][0] - single


def per_seed(reports: list[dict]) -> dict[str, list[float]]:
    """Test accuracy per seed of each row of the table (single = mean of the members)."""
    return {
        "single (member mean)": [
            statistics.fmean(v["accuracy"] for k, v in r["test_all"].items() if k.startswith("member")) for r in reports
        ],
        "mean ensemble": [r["test_all"]["mean_ensemble"]["accuracy"] for r in reports],
        "focal ensemble": [r["test_all"]["focal_ensemble"]["accuracy"] for r in reports],
        "FE + KD student": [r["test_all"]["student"]["accuracy"] for r in reports],
    }


def summarise(accuracies: dict[str, list[float]]) -> dict[str, tuple[float, float]]:
    """Mean and sample std over seeds of each row of :func:`per_seed`."""
    return {k: (statistics.fmean(v), statistics.stdev(v) if len(v) > 1 else 0.0) for k, v in accuracies.items()}


def merge_earlier(group: dict, earlier: dict, source: Path) -> None:
    """Add to ``group`` the seeds of the same data set / model / fraction from an earlier result file.

    For seeds trained in another session whose run folders are gone. Files written before
    ``--first-seed`` existed hold seeds 0 .. n-1 and, with one seed, their means are its accuracies.
    Latencies stay this run's.

    Raises:
        SystemExit: a seed present in both, or a multi-seed file without per-seed accuracies.
    """
    key = (group["dataset"], group["model"], group["fraction"])
    for g in earlier["groups"]:
        if (g["dataset"], g["model"], g["fraction"]) != key:
            continue
        seeds = g.get("seed_list") or list(range(g["seeds"]))
        if set(seeds) & set(group["seed_list"]):
            raise SystemExit(f"{source}: seed(s) {sorted(set(seeds) & set(group['seed_list']))} are in this run too")
        per = g.get("accuracy_per_seed")
        if per is None and len(seeds) != 1:
            raise SystemExit(f"{source}: {len(seeds)} seeds but no per-seed accuracies to merge")
        per = per or {k: [m] for k, (m, _) in g["accuracy"].items()}
        all_seeds = [*seeds, *group["seed_list"]]
        for row, values in per.items():
            pairs = sorted(zip(all_seeds, [*values, *group["accuracy_per_seed"][row]]))
            group["accuracy_per_seed"][row] = [v for _, v in pairs]
        group["seed_list"] = sorted(all_seeds)
        group["seeds"] = len(group["seed_list"])
        group["merged_from"] = [*group.get("merged_from", []), str(source)]


def parser() -> argparse.ArgumentParser:
    """The command line of this script."""
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--seeds", type=int, default=3, help="how many seeds")
    ap.add_argument("--first-seed", type=int, default=0, help="seeds first-seed .. first-seed + seeds - 1")
    ap.add_argument("--datasets", default="neu,casting")
    ap.add_argument("--models", default="weldnet,resnet18")
    ap.add_argument("--fractions", default="0.1", help="comma-separated training-set fractions")
    ap.add_argument(
        "--epochs", type=int, help="member epochs (default: recipe; 40 for fractions < 0.5); the student trains 3x"
    )
    ap.add_argument(
        "--set",
        dest="sets",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="a recipe override for every run, e.g. data.input_size=[96,96] (repeatable; recorded in the table)",
    )
    ap.add_argument("--runs", type=Path, default=Path("runs/bench-ensembles"))
    ap.add_argument("--out", type=Path, default=Path("benchmarks/results"))
    ap.add_argument(
        "--merge",
        type=Path,
        action="append",
        default=[],
        metavar="JSON",
        help="an earlier result file whose other seeds of the same groups join the table (repeatable)",
    )
    ap.add_argument(
        "--summary",
        action="store_true",
        help="train nothing: gather every ensembles_*.json in --out into one table, ensembles.md",
    )
    return ap


def result_plan(args: argparse.Namespace) -> tuple[Path, set[tuple]]:
    """The result file a run writes (``--out``/ensembles_<data sets>_f<fractions>[_s<first seed>].json) and
    the experiments (:func:`group_key`) it will hold."""
    tag = "_".join([*args.datasets.split(","), *(f"f{float(f):g}" for f in args.fractions.split(","))])
    tag += f"_s{args.first_seed}" if args.first_seed else ""
    planned = {
        group_key(ds, model, float(f), args.epochs, args.sets)
        for ds in args.datasets.split(",")
        for model in args.models.split(",")
        for f in args.fractions.split(",")
    }
    return args.out / f"ensembles_{tag}.json", planned


def main(argv: list[str] | None = None) -> int:
    args = parser().parse_args(argv)
    if args.summary:
        text = render_summary(sorted(args.out.glob("ensembles_*.json")))
        atomic_write_text(args.out / "ensembles.md", text)
        print(text)
        return 0
    result_path, planned = result_plan(args)
    refuse_overwrite(result_path, planned)
    earlier = [(path, json.loads(path.read_text())) for path in args.merge]
    groups = []
    for ds in args.datasets.split(","):
        for model in args.models.split(","):
            for fraction in map(float, args.fractions.split(",")):
                epochs = member_epochs(fraction, args.epochs)
                reports, folders = [], []
                seeds = list(range(args.first_seed, args.first_seed + args.seeds))
                for seed in seeds:
                    folder = args.runs / ds / model / f"f{fraction:g}" / f"seed{seed}"
                    reports.append(run_one(ds, model, fraction, seed, folder, epochs, args.sets))
                    folders.append(folder)
                single, ens, ens_params = ensemble_onnx(folders[0])
                lat = interleaved_ort_latency(
                    {"single": single, "focal ensemble": ens, "student": folders[0] / "model.onnx"}
                )
                groups.append(
                    {
                        "dataset": ds,
                        "model": model,
                        "fraction": fraction,
                        "seeds": args.seeds,
                        "seed_list": seeds,
                        "member_epochs": epochs,
                        "overrides": args.sets,
                        "accuracy_per_seed": per_seed(reports),
                        "train_images": reports[0]["data"]["counts"]["train"],
                        "params_single": reports[0]["profile"]["params_deployed"],
                        "params_ensemble": ens_params,
                        "latency": lat,
                    }
                )
                for path, data in earlier:
                    merge_earlier(groups[-1], data, path)
                groups[-1]["accuracy"] = summarise(groups[-1]["accuracy_per_seed"])
    result = {"groups": groups}
    args.out.mkdir(parents=True, exist_ok=True)
    atomic_write_json(result_path, result)
    atomic_write_text(result_path.with_suffix(".md"), render(result))
    print(render(result))
    return 0


def render(r: dict) -> str:
    """Tables 3-4 of the WeldNet paper, per data set / model / training fraction."""
    lines = ["# Ensembles and ensemble-distillation (WeldNet paper Tables 3-4)", ""]
    for g in r["groups"]:
        lat = g["latency"]
        gain, kept = gain_and_kept(g)
        lines += [
            f"## {g['dataset']}, {g['model']}, {100 * g['fraction']:g} % of the training split "
            f"({g['train_images']} images), {g['seeds']} seed(s): {', '.join(map(str, g.get('seed_list', [])))}",
            "",
            *([f"Overrides: `{' '.join(g['overrides'])}`.", ""] if g.get("overrides") else []),
            "| | test accuracy (mean ± std) | params | ORT b1 ms (1 thread) |",
            "|---|---|---|---|",
        ]
        for name, (m, s) in g["accuracy"].items():
            params = g["params_ensemble"] if "ensemble" in name else g["params_single"]
            key = {"single (member mean)": "single", "FE + KD student": "student"}.get(name, "focal ensemble")
            ms = lat[key]["median_ms"] if name != "mean ensemble" else lat["focal ensemble"]["median_ms"]
            lines.append(f"| {name} | {100 * m:.2f} ± {100 * s:.2f} % | {params:,} | {ms:.3f} |")
        share = f"{100 * kept / gain:.0f} %" if gain > 0 else "n/a (no ensemble gain)"
        lines += [
            "",
            f"Focal-ensemble gain over a single model: {100 * gain:+.2f} points; the distilled student "
            f"keeps {100 * kept:+.2f} points ({share} of the gain).",
            "",
        ]
    return "\n".join(lines) + "\n"


def render_summary(paths: list[Path]) -> str:
    """One table of every group in the result files ``paths``: the headline of each per-group table.

    Accuracies are test-set means ± sample std over seeds (%); latencies are ONNX Runtime batch-1
    medians (ms, 1 thread) of a single member and the student, measured in the same run. The budget
    column gives member / student epochs and the input side (recipe defaults: 20 / 60 epochs, 40 / 120
    below half the training split as in :func:`member_epochs`, 128 px).
    """
    lines = [
        "# Ensembles and ensemble-distillation: all results (WeldNet paper Tables 3-4)",
        "",
        "Written by `python benchmarks/ensembles.py --summary` from the result files named in the last column;",
        "each holds the per-seed accuracies and the overrides. Test accuracy in %, mean ± std over seeds; the",
        "student keeps (student - single) / (focal ensemble - single) of the ensemble's gain. Recipes:",
        "`neu-ensemble-fast` and `casting-ensemble-fast` (N = 5, focal k = 2, soft targets T = 4).",
        "",
        "| data | model | training images | budget (epochs, px) | seeds | single | mean ens. | focal ens. "
        "| FE + KD student | student keeps | ms single / student | file |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    groups = [(path, g) for path in paths for g in json.loads(path.read_text())["groups"]]
    for path, g in sorted(groups, key=lambda pg: (-pg[1]["fraction"], pg[1]["dataset"], pg[1]["model"])):
        acc = {k: f"{100 * m:.2f} ± {100 * s:.2f}" for k, (m, s) in g["accuracy"].items()}
        gain, kept = gain_and_kept(g)
        share = f"{100 * kept / gain:.0f} %" if gain > 0 and kept > 0 else "none"
        epochs = member_epochs(g["fraction"], g.get("member_epochs")) or 20
        size = next((o.split("=", 1)[1] for o in g.get("overrides") or [] if o.startswith("data.input_size=")), "")
        side = size.strip("[]").split(",")[0] if size else "128"
        lat = g["latency"]
        lines.append(
            f"| {g['dataset']} | {g['model']} | {g['train_images']} ({100 * g['fraction']:g} %) "
            f"| {epochs} / {3 * epochs}, {side} | {g['seeds']} "
            f"| {acc['single (member mean)']} | {acc['mean ensemble']} | {acc['focal ensemble']} "
            f"| {acc['FE + KD student']} | {share} "
            f"| {lat['single']['median_ms']:.3f} / {lat['student']['median_ms']:.3f} | `{path.name}` |"
        )
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    sys.exit(main())
