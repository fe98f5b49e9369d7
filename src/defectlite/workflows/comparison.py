"""Train several models under one recipe and budget, then compare them in one table and one plot.

``<out>/<model>/seed<s>/`` is an ordinary run folder per model and seed (resumable; finished runs
are skipped). After training, the ONNX Runtime batch-1 latency of every model is re-measured in
one process, interleaved over rounds, so the latency column is comparable. Writes
``comparison.md``, ``comparison.json`` and ``pareto.png`` (the task's headline test metric, e.g. accuracy or
mAP@0.5, vs latency, point size = parameters).
"""

from __future__ import annotations

import dataclasses
import json
import logging
import statistics
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from defectlite.evaluate.profile import interleaved_ort_latency
from defectlite.pipeline import train_run
from defectlite.runs import deployed_onnx, is_run, open_run
from defectlite.tasks import get_task
from defectlite.tasks.base import Runtime
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

    The table ranks by the task's headline metric (:attr:`Task.score_key`: accuracy, mAP@0.5, ...) with its
    second one beside it (MCC, mAP@0.5:0.95, ...).

    Raises:
        ConfigError: a recipe its task refuses (checked before anything is trained).
    """
    task = get_task(cfg.task)
    task.check_config(cfg)
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
            done = open_run(run_dir) if is_run(run_dir) else None
            if done is not None and done.report_json.is_file():
                reports.append(json.loads(done.report_json.read_text()))
            else:
                log.info("compare: %s, seed %d -> %s", spec, seed, run_dir)
                reports.append(train_run(run_cfg, run_dir, progress=progress))
        first = out / spec.replace(":", "_") / f"seed{seeds[0]}"
        rows.append(_summarise(spec, reports, deployed_onnx(first), task.runtime))
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


def _summarise(spec: str, reports: list[dict], onnx: Path, runtime: Runtime) -> dict[str, Any]:
    key, second = runtime.score_key, runtime.secondary_key
    scores = [r["test"][key] or 0.0 for r in reports]
    head = _mean_std(scores)
    beside = _mean_std([r["test"][second] or 0.0 for r in reports])
    prof = reports[0]["profile"]
    thr = next(t for t in prof["timings"] if t["batch"] > 1 and t["runtime"].startswith("onnxruntime"))
    return {
        "model": spec,
        "score_name": key,
        "score_mean": head[0],
        "score_std": head[1],
        "secondary_name": second,
        "secondary_mean": beside[0],
        "secondary_std": beside[1],
        "scores": scores,
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
    first = r["rows"][0] if r["rows"] else {"score_name": "score", "secondary_name": "secondary"}
    key, second = first["score_name"], first["secondary_name"]
    lines = [
        f"# Comparison under recipe `{r['recipe']}` ({len(r['seeds'])} seeds: {r['seeds']})",
        "",
        f"Overrides: {r['overrides'] or 'none'}. Test {key} and {second}: mean ± std over seeds (each seed its own "
        f"split and initialisation; model selection on validation). Latency: ONNX Runtime batch 1, median of "
        f"{lat['rounds']} interleaved rounds x {lat['runs_per_round']} runs, {lat['threads']} thread, all models "
        "in one process. Throughput: batch 64, all cores. MACs per image.",
        "",
        f"| model | test {key} | {second} | params | MACs (M) | ORT b1 ms (p95) | img/s b64 | train min/seed |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for x in sorted(r["rows"], key=lambda x: -x["score_mean"]):
        lines.append(
            f"| {x['model']} | {100 * x['score_mean']:.2f} ± {100 * x['score_std']:.2f} % | "
            f"{100 * x['secondary_mean']:.2f} ± {100 * x['secondary_std']:.2f} % | {x['params']:,} | "
            f"{x['macs'] / 1e6:.1f} | "
            f"{x['ort_b1_ms']:.3f} ({x['ort_b1_p95_ms']:.3f}) | {x['ort_throughput']:,.0f} | {x['train_minutes']:.1f} |"
        )
    lines += ["", f"Test {key} vs latency: `pareto.png` (point area ~ parameters).", ""]
    return "\n".join(lines)


def pareto_plot(rows: list[dict[str, Any]], path: Path) -> Path:
    """The headline test metric (mean ± std) against ONNX Runtime batch-1 latency; marker area ~ parameters."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7.5, 5))
    top = max(r["params"] for r in rows)
    for r in rows:
        size = 40 + 1500 * (r["params"] / top) ** 0.5
        ax.errorbar(r["ort_b1_ms"], 100 * r["score_mean"], yerr=100 * r["score_std"], fmt="none", ecolor="gray")
        ax.scatter(r["ort_b1_ms"], 100 * r["score_mean"], s=size, alpha=0.5)
        ax.annotate(r["model"], (r["ort_b1_ms"], 100 * r["score_mean"]), fontsize=7, ha="left", va="bottom")
    ax.set_xscale("log")
    ax.set_xlabel("ONNX Runtime batch-1 latency, ms (log)")
    ax.set_ylabel(f"test {rows[0]['score_name']}, % (mean ± std over seeds)")
    ax.grid(alpha=0.3)
    fig.tight_layout()
    atomic_write(path, lambda p: fig.savefig(p, dpi=120, format="png"))
    plt.close(fig)
    return path


__all__ = ["compare", "parse_model_spec", "render_comparison"]
