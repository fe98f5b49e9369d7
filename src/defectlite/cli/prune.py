"""``defectlite prune``: channel + layer pruning of a run's model, fine-tuning with distillation, INT8."""

from __future__ import annotations

import argparse
from pathlib import Path

from defectlite.cli.options import add_command


def register(sub: argparse._SubParsersAction, parents: list) -> None:
    p = add_command(
        sub,
        "prune",
        parents,
        help="prune a trained run (BN-gamma channels and residual blocks), fine-tune, quantise",
        description=(
            "Remove the share RATIO of channels with the smallest batch-norm |gamma| (one global threshold; "
            "Torch-Pruning keeps residual adds and depthwise convs consistent), then the LAYERS residual blocks "
            "with the smallest mean gamma, fine-tune with and without distillation from the unpruned model, "
            "quantise to INT8, and write RUN/prune-r<ratio>-l<layers>[-c<N>]/prune_report.md. Train the run with "
            "--set student.sparsity=1e-4 (L1 on gammas) first for best results."
        ),
    )
    p.add_argument("run", type=Path, metavar="RUN", help="run folder written by `defectlite train`")
    p.add_argument("--ratio", type=float, default=0.9, help="share of channels to remove (paper: 0.9)")
    p.add_argument("--layers", type=int, default=0, help="residual blocks to remove after channel pruning")
    p.add_argument(
        "--round-to", type=int, metavar="N", help="channel counts multiples of N (e.g. 8; narrower layers stay whole)"
    )
    p.add_argument("--finetune-epochs", type=int, default=10, help="epochs of each fine-tuning (with and without KD)")
    p.add_argument("--lr", type=float, default=0.01, help="fine-tuning learning rate")
    p.add_argument(
        "--distill",
        action=argparse.BooleanOptionalAction,
        default=True,
        help="also fine-tune with distillation from the unpruned model",
    )
    p.add_argument(
        "--ema",
        action=argparse.BooleanOptionalAction,
        default=True,
        help="select an EMA of the weights in fine-tuning (the decay of the run's deployed stage, if it has one)",
    )
    p.add_argument("--threads", type=int, default=1, help="ONNX Runtime threads for batch-1 latency")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from defectlite.workflows.pruning import prune_folder, prune_run

    report = prune_run(
        args.run,
        ratio=args.ratio,
        layers=args.layers,
        round_to=args.round_to,
        finetune_epochs=args.finetune_epochs,
        distill=args.distill,
        lr=args.lr,
        ema=args.ema,
        threads=args.threads,
        progress=not args.quiet,
    )
    base = report["rows"]["original"]
    for name, r in report["rows"].items():
        print(
            f"{name:<18} params {r['params']:>10,}  ORT b1 {r['ort_b1_ms']:7.3f} ms "
            f"({base['ort_b1_ms'] / r['ort_b1_ms']:.2f}x)  test {r['score_name']} {100 * r['test_score']:.2f} %"
        )
    print(f"report: {Path(args.run) / prune_folder(args.ratio, args.layers, args.round_to) / 'prune_report.md'}")
    return 0
