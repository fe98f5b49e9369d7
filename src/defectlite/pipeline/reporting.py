"""The end of a run: deploy (:mod:`defectlite.pipeline.deployment`), evaluate every trained model on the test split
once, and assemble and write the report (``report.json``, ``report.md`` with the task's sections and figures)."""

from __future__ import annotations

import time
from typing import Any

from defectlite.compress.reparam import reparameterize
from defectlite.compress.restore import load_checkpoint
from defectlite.evaluate.profile import machine
from defectlite.evaluate.report import write_curves, write_report
from defectlite.pipeline.context import RunContext, data_summary
from defectlite.pipeline.deployment import Deployed, deploy_checkpoint, deploy_int8, export_and_check, profile_model
from defectlite.train.loop import read_history


def evaluate_all(ctx: RunContext, deployed: Deployed) -> dict[str, dict[str, Any]]:
    """Test metrics of every trained model of the run (teacher, members, student; the deployed one as deployed)
    and of the ensemble combinations the task reports; the test split is read here, once."""
    run, task, data = ctx.run, ctx.task, ctx.data
    out = {}
    for name in ("teacher", *run.members(), "student"):
        if name == run.deployed_stage:
            out[name] = task.evaluate(deployed.fused, data, "test", deployed.card)
        elif run.has_best(name):
            net, ncard = load_checkpoint(run.best(name))
            out[name] = task.evaluate(reparameterize(net), data, "test", ncard)
    members = run.members()
    if members and ctx.cfg.ensemble.members:
        ens = ctx.cfg.ensemble
        ensemble = task.ensemble_teacher([run.best(m) for m in members], ens.combine, ens.k, data.classes)
        out.update(task.evaluate_ensemble(ensemble, data, deployed.card))
    return out


def finish_run(ctx: RunContext, stages: dict[str, Any], *, started: float | None = None) -> dict[str, Any]:
    """Deploy, evaluate on test once, export, quantise, profile; write ``report.json`` and ``report.md``.

    Args:
        stages: report summaries of the stages trained (:func:`~defectlite.pipeline.training.stage_summary`).
        started: ``time.perf_counter()`` at the start of the run's work, for ``wall_minutes``.

    Returns:
        The report.
    """
    run, cfg, task = ctx.run, ctx.cfg, ctx.task
    deployed = deploy_checkpoint(ctx)
    test_all = evaluate_all(ctx, deployed)
    export = export_and_check(run.onnx, deployed, task, task.split_truth(ctx.data, "val")[0][:64])
    int8 = deploy_int8(ctx)
    h, w = cfg.data.input_size
    shape = (1, cfg.data.channels, h, w)
    report = {
        "task": task.name,
        "recipe": cfg.name,
        "seed": cfg.seed,
        "model": deployed.card["model"],
        "data": data_summary(ctx.data),
        "stages": stages,
        "test": test_all[run.deployed_stage],
        "test_all": test_all,
        "calibration": deployed.card.get("calibration"),
        "profile": profile_model(deployed, run.onnx, run.deployed_weights, shape, cfg.profile),
        "export": export,
        "int8": int8,
        "paper": cfg.paper,
        "machine": machine(),
    }
    report["figures"] = task.figures(run, report, ctx.data)
    curves = write_curves({s: read_history(run.stage(s).metrics) for s in stages}, run.curves_png)
    report["figures"]["curves"] = curves.name if curves else None
    report["paper_values"] = task.paper_values(report)
    if started is not None:
        report["wall_minutes"] = (time.perf_counter() - started) / 60
    write_report(run, report, task.report_lines(report))
    return report
