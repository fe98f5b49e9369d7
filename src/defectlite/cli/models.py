"""``defectlite models``: list registered models with parameters and MACs at an input size."""

from __future__ import annotations

import argparse

from defectlite.cli.options import add_command


def register(sub: argparse._SubParsersAction, parents: list) -> None:
    p = add_command(
        sub,
        "models",
        parents,
        help="list registered models with params and MACs",
        description="List registry names with parameters (training and deployed form), MACs and FLOPs (= 2 x MACs; "
        "convolutions and linear layers) at an input size. Any timm model can also be trained as timm:<name>.",
    )
    p.add_argument(
        "--input-size", type=int, nargs=2, default=[200, 200], metavar=("H", "W"), help="input size for the MACs"
    )
    p.add_argument("--in-chans", type=int, default=1, help="input channels (1 = grey, 3 = RGB)")
    p.add_argument("--num-classes", type=int, default=6, help="classes (the output width)")
    p.add_argument("--task", help="only models of this task (classify, detect); default: all")
    p.add_argument("names", nargs="*", help="only these models (default: all)")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from defectlite.compress.reparam import reparameterize
    from defectlite.evaluate.profile import count_macs, count_params
    from defectlite.models import create_model, list_models, model_info
    from defectlite.tasks import get_task, task_names

    for task in task_names():  # a task registers the models it ships in its own folder when it loads
        get_task(task)
    names = args.names or list_models(args.task)
    shape = (1, args.in_chans, *args.input_size)
    print(f"{'name':<24}{'params':>12}{'deployed':>12}{'MACs (M)':>11}{'FLOPs (M)':>11}  source   [input {shape[1:]}]")
    for name in names:
        model = create_model(name, args.num_classes, args.in_chans)
        deployed = (
            reparameterize(model) if not name.startswith("timm:") and model_info(name).reparameterizable else model
        )
        paper = model_info(name).paper if not name.startswith("timm:") else "timm"
        macs = count_macs(deployed, shape)
        print(
            f"{name:<24}{count_params(model):>12,}{count_params(deployed):>12,}"
            f"{macs / 1e6:>11.1f}{2 * macs / 1e6:>11.1f}  {paper}"
        )
    return 0
