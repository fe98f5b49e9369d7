"""One process of a run spread over several: ``python -m defectlite.pipeline.worker RUN [--members I,J] [--quiet |
--verbose]``. :mod:`defectlite.pipeline.parallel` starts it, once per torchrun rank (``nproc``) or per group of
ensemble members (``jobs``, with ``OMP_NUM_THREADS`` set to its share of the cores)."""

from __future__ import annotations

import logging
import sys

from defectlite.pipeline.training import resume_run, train_members
from defectlite.runs import open_run


def work(argv: list[str]) -> int:
    """Continue the run folder ``argv[0]`` (under torchrun rank 0 deploys and reports), or train only the members
    after ``--members``; ``--quiet`` / ``--verbose`` set the log level as the CLI's do.

    Returns:
        0 (errors propagate).
    """
    quiet, verbose = "--quiet" in argv, "--verbose" in argv
    logging.basicConfig(level=logging.WARNING, format="%(message)s", stream=sys.stderr, force=True)
    level = logging.WARNING if quiet else logging.DEBUG if verbose else logging.INFO
    logging.getLogger("defectlite").setLevel(level)
    run = open_run(argv[0])
    if "--members" in argv:
        train_members(run, [int(i) for i in argv[argv.index("--members") + 1].split(",")], progress=not quiet)
    else:
        resume_run(run, progress=not quiet)
    return 0


if __name__ == "__main__":
    from defectlite.train.distributed import exit_worker

    status = work(sys.argv[1:])
    exit_worker(status)  # a torchrun rank leaves its process group first (a no-op otherwise)
    sys.exit(status)
