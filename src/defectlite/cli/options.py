"""What every command's parser shares: the help formatter and the verbosity options."""

from __future__ import annotations

import argparse


class HelpFormatter(argparse.ArgumentDefaultsHelpFormatter):
    """Shows an option's default once: only when its help does not already say it and there is one to show."""

    def _get_help_string(self, action: argparse.Action) -> str:
        text = action.help or ""
        if "default" in text or action.default in (None, False, argparse.SUPPRESS) or action.option_strings == []:
            return text
        return super()._get_help_string(action)


def verbosity_options() -> argparse.ArgumentParser:
    """``-q`` / ``-v``, accepted before or after the command (``defectlite -q train`` = ``defectlite train -q``)."""
    common = argparse.ArgumentParser(add_help=False)
    group = common.add_mutually_exclusive_group()
    group.add_argument(
        "-q", "--quiet", action="store_true", default=argparse.SUPPRESS, help="only warnings and errors, no progress"
    )
    group.add_argument("-v", "--verbose", action="store_true", default=argparse.SUPPRESS, help="debug messages as well")
    return common


def add_command(sub: argparse._SubParsersAction, name: str, parents: list, **kwargs) -> argparse.ArgumentParser:
    """Add the sub-command ``name`` with the shared options and help formatter."""
    return sub.add_parser(name, parents=parents, formatter_class=HelpFormatter, **kwargs)


def add_answer_options(p: argparse.ArgumentParser) -> None:
    """``--option KEY=VALUE`` (repeatable): an answer option of the model's task, checked against the options its
    runtime declares (a classifier: ``min_confidence``; a detector: ``conf``, ``iou``, ``max_det``)."""
    p.add_argument(
        "--option",
        dest="answer_options",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="an answer option of the model's task, e.g. --option min_confidence=0.9 (classifier) or --option "
        "max_det=50 (detector); repeatable; an option the model's task does not know is an error",
    )


def answer_options(args: argparse.Namespace, **aliases: object) -> dict[str, object]:
    """The ``--option KEY=VALUE`` pairs, then the named flags that are aliases of options (given ones win).

    Raises:
        ConfigError: an item without ``=``.
    """
    from defectlite.errors import ConfigError

    out: dict[str, object] = {}
    for item in args.answer_options:
        key, sep, value = item.partition("=")
        if not sep or not key.strip():
            raise ConfigError(f"--option takes KEY=VALUE, got {item!r}")
        out[key.strip()] = value.strip()
    return out | {k: v for k, v in aliases.items() if v is not None}
