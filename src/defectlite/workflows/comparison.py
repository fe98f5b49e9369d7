"""Train several models under one recipe and budget, then compare them in one table and one plot.

``<out>/<model>/seed<s>/`` is an ordinary run folder per model and seed (resumable; finished runs
are skipped). After training, the ONNX Runtime batch-1 latency of every model is re-measured in
one process, interleaved over rounds, so the latency column is comparable. Writes
``comparison.md``, ``comparison.json`` and ``pareto.png`` (test accuracy vs latency, point size =
parameters).
"""

from __future__ import annotations

import dataclasses
import logging
import statistics
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from defectlite.errors import ConfigError
from defectlite.evaluate.profile import interleaved_ort_latency
from defectlite.pipeline import train_run
from defectlite.train.config import RecipeCfg, apply_overrides, model_overrides
from defectlite.utils import atomic_write, atomic_write_json, atomic_write_text

log = logging.getLogger(__name__)


def _mean_std(xs: Sequence[float]) -> tuple[float, float]:
    return statistics.fmean(xs), statistics.stdev(xs) if len(xs) > 1 else 0.0


def compare(
    cfg: RecipeCfg,
    models: Sequence[str],
    seeds: Sequence[int],
    out: Path,
    *,
    overrides: Sequence[str] = (),
    threads: int = 1,
    progress: bool = True,
) -> dict[str, Any]:
    """Train every model for every seed with ``cfg`` (its student replaced) and compare.

    A recipe with a teacher distils every model from a teacher trained in the same run (equal terms;
    the teacher's minutes count in the training time); the ``*-compare-fast`` recipes have none.

    Args:
        cfg: the shared recipe (budget, data, augmentation, schedule).
        models: registry names (or ``timm:<name>``); ``name[key=value,...]`` passes builder kwargs, e.g.
            ``dsc_cnn_140k[blurpool=true]``.
        seeds: split and training seeds.
        out: the comparison folder.
        overrides: extra ``key=value`` overrides applied to every run.
        threads: ONNX Runtime threads for the latency column.

    Raises:
        ConfigError: a recipe of another task than classification (the table compares accuracy and MCC).
    """
    if cfg.task != "classify":
        raise ConfigError(
            f"compare ranks classifiers by accuracy and MCC; recipe {cfg.name!r} is a {cfg.task} recipe (train each "
            "model with `defectlite train --model M` and compare their reports)"
        )
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    rows = []
    for spec in models:
        name, kwargs = parse_model_spec(spec)
        reports = []
        for seed in seeds:
            run_dir = out / spec.replace(":", "_") / f"seed{seed}"
            sets = [f"seed={seed}", *model_overrides(cfg, name), *overrides]
            run_cfg = apply_overrides(cfg, sets)
            run_cfg = dataclasses.replace(run_cfg, student=dataclasses.replace(run_cfg.student, model_kwargs=kwargs))
            report_path = run_dir / "report.json"
            if report_path.is_file():
                import json

                reports.append(json.loads(report_path.read_text()))
            else:
                log.info("compare: %s, seed %d -> %s", spec, seed, run_dir)
                reports.append(train_run(run_cfg, run_dir, progress=progress))
        rows.append(_summarise(spec, reports, out / spec.replace(":", "_") / f"seed{seeds[0]}" / "model.onnx"))
    latency = interleaved_ort_latency({r["model"]: Path(r["onnx"]) for r in rows}, threads=threads)
    for r in rows:
        r["ort_b1_ms"] = latency[r["model"]]["median_ms"]
        r["ort_b1_p95_ms"] = latency[r["model"]]["p95_ms"]
    result = {
        "recipe": cfg.name,
        "seeds": list(seeds),
        "overrides": list(overrides),
        "rows": rows,
        "latency": {"threads": threads, "rounds": 5, "runs_per_round": 100, "warmup": 20, "batch": 1},
    }
    atomic_write_json(out / "comparison.json", result)
    atomic_write_text(out / "comparison.md", render_comparison(result))
    pareto_plot(rows, out / "pareto.png")
    return result


def parse_model_spec(spec: str) -> tuple[str, dict[str, Any]]:
    """``name[key=value,...]`` -> (name, kwargs); values parsed as YAML (true, 3, 0.5, text)."""
    import yaml

    if "[" not in spec:
        return spec, {}
    name, _, rest = spec.partition("[")
    kwargs = {}
    for item in filter(None, rest.rstrip("]").split(",")):
        key, _, value = item.partition("=")
        kwargs[key.strip()] = yaml.safe_load(value)
    return name, kwargs


def _summarise(spec: str, reports: list[dict], onnx: Path) -> dict[str, Any]:
    acc = _mean_std([r["test"]["accuracy"] for r in reports])
    mcc = _mean_std([r["test"]["mcc"] for r in reports])
    prof = reports[0]["profile"]
    thr = next(t for t in prof["timings"] if t["batch"] > 1 and t["runtime"].startswith("onnxruntime"))
    return {
        "model": spec,
        "accuracy_mean": acc[0],
        "accuracy_std": acc[1],
        "mcc_mean": mcc[0],
        "mcc_std": mcc[1],
        "accuracies": [r["test"]["accuracy"] for r in reports],
        "params": prof["params_deployed"],
        "macs": prof["macs"],
        "ort_throughput": thr["images_per_s"],
        "train_minutes": statistics.fmean(sum(s["train_minutes"] for s in r["stages"].values()) for r in reports),
        "onnx": str(onnx),
        "input_shape": prof["input_shape"],
    }


def render_comparison(r: dict[str, Any]) -> str:
    """Markdown table of a comparison."""
    lat = r["latency"]
    lines = [
        f"# Comparison under recipe `{r['recipe']}` ({len(r['seeds'])} seeds: {r['seeds']})",
        "",
        f"Overrides: {r['overrides'] or 'none'}. Test accuracy and MCC: mean ± std over seeds (each seed its own "
        f"split and initialisation; model selection on validation). Latency: ONNX Runtime batch 1, median of "
        f"{lat['rounds']} interleaved rounds x {lat['runs_per_round']} runs, {lat['threads']} thread, all models "
        "in one process. Throughput: batch 64, all cores. MACs per image.",
        "",
        "| model | test acc | MCC | params | MACs (M) | ORT b1 ms (p95) | img/s b64 | train min/seed |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for x in sorted(r["rows"], key=lambda x: -x["accuracy_mean"]):
        lines.append(
            f"| {x['model']} | {100 * x['accuracy_mean']:.2f} ± {100 * x['accuracy_std']:.2f} % | "
            f"{100 * x['mcc_mean']:.2f} ± {100 * x['mcc_std']:.2f} % | {x['params']:,} | {x['macs'] / 1e6:.1f} | "
            f"{x['ort_b1_ms']:.3f} ({x['ort_b1_p95_ms']:.3f}) | {x['ort_throughput']:,.0f} | {x['train_minutes']:.1f} |"
        )
    lines += ["", "Accuracy vs latency: `pareto.png` (point area ~ parameters).", ""]
    return "\n".join(lines)


def pareto_plot(rows: list[dict[str, Any]], path: Path) -> Path:
    """Test accuracy (mean ± std) against ONNX Runtime batch-1 latency; marker area ~ parameters."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7.5, 5))
    top = max(r["params"] for r in rows)
    for r in rows:
        size = 40 + 1500 * (r["params"] / top) ** 0.5
        ax.errorbar(r["ort_b1_ms"], 100 * r["accuracy_mean"], yerr=100 * r["accuracy_std"], fmt="none", ecolor="gray")
        ax.scatter(r["ort_b1_ms"], 100 * r["accuracy_mean"], s=size, alpha=0.5)
        ax.annotate(r["model"], (r["ort_b1_ms"], 100 * r["accuracy_mean"]), fontsize=7, ha="left", va="bottom")
    ax.set_xscale("log")
    ax.set_xlabel("ONNX Runtime batch-1 latency, ms (log)")
    ax.set_ylabel("test accuracy, % (mean ± std over seeds)")
    ax.grid(alpha=0.3)
    fig.tight_layout()
    atomic_write(path, lambda p: fig.savefig(p, dpi=120, format="png"))
    plt.close(fig)
    return path


__all__ = ["compare", "parse_model_spec", "render_comparison"]
