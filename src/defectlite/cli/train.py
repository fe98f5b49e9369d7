"""``defectlite train``: run a recipe (teacher, distilled student, re-parameterise, test, export, report)."""

from __future__ import annotations

import argparse
import json
import os
import time
from pathlib import Path

from defectlite.cli.options import add_command

DEFAULT_RECIPE = "neu-cpu-repnet-fast"
# options that define a run: given beside --resume they would change it, so they are refused
RUN_OPTIONS = ("data", "format", "recipe", "model", "seed", "channels", "epochs", "overrides", "teacher", "ensemble",
               "teacher_ensemble", "skip_bad", "keep_leaks")  # fmt: skip


def register(sub: argparse._SubParsersAction, parents: list) -> None:
    p = add_command(
        sub,
        "train",
        parents,
        help="train a defect model from a folder of images (the main job)",
        description=(
            "Train a recipe end to end: split the data (stratified, seeded; splits.csv), train the teacher, "
            "distil the student, re-parameterise it, evaluate on the test split once, export model.onnx and "
            "write report.md. With no arguments: the default recipe on NEU-CLS from the data root "
            "($DEFECTLITE_DATA, else ../shared/datasets beside the checkout). An interrupted run continues with "
            "--resume RUN exactly as it was started."
        ),
    )
    p.add_argument(
        "--data",
        help="data folder (class sub-folders, train/val/test tree, NEU or TIG layout; detection: VOC, YOLO or COCO); "
        "default: the recipe's data set under the data root",
    )
    p.add_argument(
        "--format", help="data layout, e.g. folder, neu, tig (detection: voc, yolo, coco); default: detect it"
    )
    p.add_argument(
        "--recipe", help=f"shipped recipe name or a YAML file (`defectlite recipes`); default {DEFAULT_RECIPE}"
    )
    p.add_argument(
        "--model",
        help="the network to train and deploy (`defectlite models`; timm:<name> for any timm model): sets "
        "student.model and, in ensemble recipes, ensemble.member.model (default: the recipe's)",
    )
    p.add_argument("--seed", type=int, help="split and training seed (default: the recipe's, 0)")
    p.add_argument("--channels", type=int, choices=[1, 3], help="decode images as grey (1) or RGB (3)")
    p.add_argument(
        "--epochs",
        type=int,
        metavar="N",
        help="train the student N epochs and every other stage in the recipe's proportion to it (warm-up, "
        "milestones and SWA epochs scaled alike); e.g. the default recipe's teacher 60 / student 80 becomes 6 / 8 "
        "with --epochs 8",
    )
    p.add_argument(
        "--set",
        dest="overrides",
        action="append",
        metavar="KEY=VALUE",
        help="override a recipe field, e.g. --set student.optim.lr=0.05 (repeatable; checked at once)",
    )
    p.add_argument(
        "--teacher", type=Path, metavar="RUN", help="distil from the deployed model of an earlier run (or a checkpoint)"
    )
    p.add_argument(
        "--ensemble",
        type=int,
        metavar="N",
        help="train N members (own seeds; the recipe's ensemble.member stage, else the student's) and distil the "
        "student from their ensemble (WeldNet paper)",
    )
    p.add_argument(
        "--teacher-ensemble",
        type=Path,
        metavar="RUN",
        help="distil from the members (member*/) of an earlier run instead of training them",
    )
    p.add_argument(
        "--skip-bad", action="store_true", default=None, help="leave unreadable images out (listed) instead of failing"
    )
    p.add_argument(
        "--keep-leaks",
        action="store_true",
        default=None,
        help="keep val/test images byte-identical to a training image in the scores (they are left out by default; "
        "a split defectlite makes keeps identical files together anyway)",
    )
    p.add_argument(
        "--nproc",
        type=int,
        metavar="N",
        help="train data-parallel in N processes on this machine (the run folder is made here, then continued under "
        "`torchrun --standalone --nproc_per_node N`; gloo on CPU, NCCL on CUDA; the recipe's batch_size stays the "
        "global batch; with --members, those members data-parallel). Several "
        "machines: start `torchrun --nnodes ... -m defectlite.cli.main train ...` on each",
    )
    p.add_argument(
        "--members",
        metavar="I,J,...",
        help="train only these ensemble members into the run folder and stop (spread members over machines with any "
        "scheduler; then distil with --teacher-ensemble RUN, or --resume the run once all members are there)",
    )
    p.add_argument(
        "--jobs",
        type=int,
        metavar="J",
        help="train the ensemble members J at a time as separate processes, the cores split between them",
    )
    from defectlite.tasks import task_options

    for task, opt in task_options():  # options a task declares in its table line (torch-free)
        p.add_argument(opt.flag, dest=_task_dest(opt), metavar=opt.metavar, help=f"{opt.help} ({task} task: {opt.key})")
    where = p.add_mutually_exclusive_group()
    where.add_argument("--out", type=Path, metavar="RUN", help="run folder (default: runs/<recipe>-s<seed>-<time>)")
    where.add_argument(
        "--resume", type=Path, metavar="RUN", help="continue an interrupted run exactly as it was started"
    )
    p.set_defaults(func=run)


def _task_dest(opt) -> str:
    return "task_option_" + opt.flag.lstrip("-").replace("-", "_")


def _task_sets(args: argparse.Namespace) -> list[str]:
    """``--set``-style items of the task options given (each sets its recipe field, checked as ``--set`` is)."""
    from defectlite.tasks import task_options

    given = [(opt, getattr(args, _task_dest(opt), None)) for _, opt in task_options()]
    return [f"{opt.key}={value}" for opt, value in given if value is not None]


def build_config(args: argparse.Namespace):
    """The run's recipe from the command line: recipe, then ``--model``, ``--epochs``, ``--set`` and the other
    options, checked at once (no data is read).

    Raises:
        ConfigError: unknown recipe, key or a bad value (the message names it).
    """
    from defectlite.train.config import apply_overrides, load_recipe, model_overrides, scale_epochs

    cfg = load_recipe(args.recipe or DEFAULT_RECIPE)
    sets = model_overrides(cfg, args.model) if args.model else []
    if args.epochs is not None:
        sets += scale_epochs(cfg, args.epochs)
    sets += _task_sets(args)
    sets += args.overrides or []
    for key, value in (  # text quoted: a folder named 2024, 1e3 or "a: b" stays a string
        ("data.path", args.data and json.dumps(str(args.data))),
        ("data.format", args.format and json.dumps(args.format)),
        ("seed", args.seed),
        ("data.channels", args.channels),
        ("ensemble.members", args.ensemble),
    ):
        if value is not None:
            sets.append(f"{key}={value}")
    if args.skip_bad:
        sets.append("data.skip_bad=true")
    if args.keep_leaks:
        sets.append("data.keep_leaks=true")
    if args.data and args.format is None:
        sets.append("data.format=auto")
    return apply_overrides(cfg, sets)


def _refuse_with_resume(args: argparse.Namespace) -> None:
    from defectlite.errors import ConfigError

    given = [f"--{name.replace('_', '-')}" for name in RUN_OPTIONS if getattr(args, name) not in (None, [], False)]
    from defectlite.tasks import task_options

    given += [opt.flag for _, opt in task_options() if getattr(args, _task_dest(opt), None) is not None]
    if given:
        raise ConfigError(
            f"--resume continues {args.resume} exactly as it was started (its config.yaml and run.json); "
            f"{', '.join(given).replace('--overrides', '--set')} would change it. Start a new run with --out instead."
        )


def _teacher_source(args: argparse.Namespace):
    from defectlite.errors import ConfigError
    from defectlite.runs import TeacherSource, open_run

    if args.teacher and args.teacher_ensemble:
        raise ConfigError("give --teacher or --teacher-ensemble, not both")
    if args.teacher:
        from defectlite.pipeline import resolve_teacher

        return TeacherSource("checkpoint", str(resolve_teacher(args.teacher).resolve()))
    if args.teacher_ensemble:
        if not open_run(args.teacher_ensemble).members():
            raise ConfigError(f"--teacher-ensemble {args.teacher_ensemble}: the run has no trained members (member*/)")
        return TeacherSource("ensemble", str(Path(args.teacher_ensemble).resolve()))
    return None


def run(args: argparse.Namespace) -> int:
    members = _members(args.members)
    nproc = args.nproc if args.nproc and args.nproc > 1 and "WORLD_SIZE" not in os.environ else None
    if args.resume:
        _refuse_with_resume(args)
        from defectlite.pipeline import resume_run
        from defectlite.runs import open_run

        run_dir = args.resume
        run_obj = open_run(run_dir)
        args.resume_hint = f"resume with: defectlite train --resume {run_dir}"
        if members is not None:
            _train_members(run_obj, members, nproc, args)
            return 0
        _print_main(f"resuming {run_dir}")
        report = resume_run(run_obj, progress=not args.quiet, jobs=args.jobs, nproc=nproc, verbose=args.verbose)
    else:
        cfg = build_config(args)  # a bad value fails here, before PyTorch is even imported
        from defectlite.pipeline import train_run
        from defectlite.runs import create_run
        from defectlite.train import distributed as dist

        teacher = _teacher_source(args)
        dist.init_from_env(cfg.device)
        default = Path("runs") / f"{cfg.name}-s{cfg.seed}-{time.strftime('%Y%m%d-%H%M%S')}"
        run_dir = dist.broadcast(args.out or default)  # every rank writes to rank 0's folder
        args.resume_hint = f"resume with: defectlite train --resume {run_dir}"
        _print_main(f"run folder: {run_dir}")
        if members is not None:
            _train_members(create_run(run_dir, cfg, teacher=teacher, argv=args.argv), members, nproc, args)
            _print_main(f"trained member(s) {members} into {run_dir}; distil with --resume {run_dir}")
            return 0
        report = train_run(cfg, run_dir, teacher=teacher, progress=not args.quiet, argv=args.argv, jobs=args.jobs,
                           nproc=nproc, verbose=args.verbose)  # fmt: skip
    if report is not None:  # rank 0 (or a single process)
        print_summary(report, Path(run_dir))
    return 0


def _train_members(run_obj, members: list[int], nproc: int | None, args: argparse.Namespace) -> None:
    """``--members``: in this process, or data-parallel under torchrun with ``--nproc``."""
    from defectlite.pipeline import train_members
    from defectlite.pipeline.parallel import run_under_torchrun

    if nproc:
        run_under_torchrun(run_obj, nproc, progress=not args.quiet, members=members, verbose=args.verbose)
    else:
        train_members(run_obj, members, progress=not args.quiet)


def _print_main(text: str) -> None:
    if os.environ.get("RANK", "0") == "0":
        print(text, flush=True)


def _members(text: str | None) -> list[int] | None:
    from defectlite.errors import ConfigError

    if text is None:
        return None
    try:
        out = sorted({int(t) for t in text.split(",") if t.strip()})
    except ValueError:
        raise ConfigError(f"--members takes member indices like 0,2 (got {text!r})") from None
    if not out or min(out) < 0:
        raise ConfigError(f"--members takes member indices >= 0 (got {text!r})")
    return out


def print_summary(report: dict, run_dir: Path) -> None:
    """The lines printed after a run: skipped files, the test headline, size, latency, time, where things are."""
    from defectlite.runs import open_run
    from defectlite.tasks import get_task

    skipped = report["data"].get("skipped") or []
    if skipped:
        print(f"skipped {len(skipped)} unreadable image(s) (--skip-bad):")
        for path, why in skipped:
            print(f"  {path}: {why}")
    b1 = next(x for x in report["profile"]["timings"] if x["runtime"].startswith("onnxruntime") and x["batch"] == 1)
    print(
        f"test {get_task(report['task']).headline(report['test'])} | {report['profile']['params_deployed']:,} params | "
        f"ONNX Runtime {b1['median_ms']:.3f} ms/image ({b1['threads']} thread) | {report['wall_minutes']:.1f} min"
    )
    run = open_run(run_dir)
    print(f"report: {run.report_md}\nmodel:  {run.onnx}")
