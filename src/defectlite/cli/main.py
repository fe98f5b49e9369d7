"""``defectlite`` command line: one sub-command per module of this package; only cli/ prints."""

from __future__ import annotations

import argparse
import logging
import sys

from defectlite.errors import DefectliteError, missing_train_extra

COMMANDS = ("train", "export", "predict", "models", "recipes", "compare", "prune", "quantize", "serve", "explain")


def build_parser() -> argparse.ArgumentParser:
    """The argument parser with every sub-command registered."""
    import importlib

    parser = argparse.ArgumentParser(
        prog="defectlite",
        description="Train, compress, explain and deploy lightweight surface-defect classifiers on a CPU.",
        epilog="Run `defectlite COMMAND --help` for the options of a command.",
    )
    parser.add_argument("--version", action="version", version=f"%(prog)s {_version()}")
    parser.add_argument("-q", "--quiet", action="store_true", help="only warnings and errors, no progress bars")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    for name in COMMANDS:
        importlib.import_module(f"defectlite.cli.{name}").register(sub)
    return parser


def _version() -> str:
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version("defectlite")
    except PackageNotFoundError:
        return "unknown"


def main(argv: list[str] | None = None) -> int:
    """Entry point of the ``defectlite`` console script; returns the exit status."""
    args = build_parser().parse_args(argv)
    logging.basicConfig(level=logging.WARNING, format="%(message)s", stream=sys.stderr, force=True)
    logging.getLogger("defectlite").setLevel(logging.WARNING if args.quiet else logging.INFO)
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


if __name__ == "__main__":
    sys.exit(main())
