"""``defectlite`` command line: one sub-command per module of this package; only cli/ prints."""

from __future__ import annotations

import argparse
import logging
import sys

from defectlite.cli.options import HelpFormatter, verbosity_options
from defectlite.errors import DefectliteError, missing_train_extra

COMMANDS = (
    "train",
    "val",
    "export",
    "predict",
    "models",
    "recipes",
    "compare",
    "prune",
    "quantize",
    "serve",
    "explain",
)


def build_parser() -> argparse.ArgumentParser:
    """The argument parser with every sub-command registered (each module of cli/ registers one)."""
    import importlib

    common = verbosity_options()
    parser = argparse.ArgumentParser(
        prog="defectlite",
        description="Train, compress, explain and deploy lightweight surface-defect models (classifiers and "
        "detectors) that run on a CPU.",
        epilog="Run `defectlite COMMAND --help` for the options of a command.",
        parents=[common],
        formatter_class=HelpFormatter,
    )
    parser.add_argument("--version", action="version", version=f"%(prog)s {_version()}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    for name in COMMANDS:
        importlib.import_module(f"defectlite.cli.{name}").register(sub, [common])
    return parser


def _version() -> str:
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version("defectlite")
    except PackageNotFoundError:
        return "unknown"


def main(argv: list[str] | None = None) -> int:
    """Entry point of the ``defectlite`` console script; returns the exit status."""
    argv = list(sys.argv[1:] if argv is None else argv)
    args = build_parser().parse_args(argv)
    args.argv = ["defectlite", *argv]  # recorded in a run's run.json
    args.quiet, args.verbose = getattr(args, "quiet", False), getattr(args, "verbose", False)
    logging.basicConfig(level=logging.WARNING, format="%(message)s", stream=sys.stderr, force=True)
    level = logging.WARNING if args.quiet else logging.DEBUG if args.verbose else logging.INFO
    logging.getLogger("defectlite").setLevel(level)
    try:
        return int(args.func(args) or 0)
    except DefectliteError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    except ModuleNotFoundError as e:
        why = missing_train_extra(e)
        if why is None:
            raise
        print(
            f"error: `defectlite {args.command}` needs {why}; an exported model.onnx needs only `predict` and `serve`",
            file=sys.stderr,
        )
        return 2
    except BrokenPipeError:  # output piped into `head` and the like
        sys.stderr.close()
        return 0
    except KeyboardInterrupt:
        hint = getattr(args, "resume_hint", None)
        print(f"\ninterrupted{'; ' + hint if hint else ''}", file=sys.stderr)
        return 130


if __name__ == "__main__":  # also how torchrun starts each worker (`--nproc`, `torchrun -m defectlite.cli.main`)
    status = main()
    if "torch" in sys.modules:  # a command that never imported PyTorch joined no group
        from defectlite.train.distributed import exit_worker

        exit_worker(status)
    sys.exit(status)
