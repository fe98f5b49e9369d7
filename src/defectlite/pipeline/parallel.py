"""A run on several processes of one machine: data-parallel under ``torchrun`` (``nproc``), and ensemble members
trained several at a time (``jobs``). Library code: ``train_run(..., nproc=, jobs=)`` does what ``defectlite train
--nproc / --jobs`` does.

``python -m defectlite.pipeline.parallel RUN`` is the worker that :func:`run_under_torchrun` starts on each rank.
"""

from __future__ import annotations

import json
import multiprocessing
import os
import subprocess
import sys
from typing import Any

from defectlite.cpus import available_cpus
from defectlite.errors import TrainingError
from defectlite.runs import Run, open_run


def run_under_torchrun(
    run: Run, nproc: int, *, progress: bool = True, members: list[int] | None = None, verbose: bool = False
) -> dict[str, Any] | None:
    """Continue ``run`` data-parallel in ``nproc`` processes of this machine (``torchrun --standalone``), the cores
    split between them; every rank trains, rank 0 deploys and writes the report.

    Args:
        progress: progress bars and the per-epoch log lines (rank 0); verbose: debug messages as well.
        members: train only these ensemble members (each data-parallel), and no report.

    Returns:
        The report rank 0 wrote, or None when only ``members`` were trained.

    Raises:
        TrainingError: torchrun exited with an error (the run folder keeps what finished; resume it).
    """
    env = {**os.environ, "OMP_NUM_THREADS": str(max(1, available_cpus() // nproc))}
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc_per_node={nproc}",
           "-m", "defectlite.pipeline.parallel", str(run.root)]  # fmt: skip
    cmd += ([] if progress else ["--quiet"]) + (["--verbose"] if verbose else [])
    cmd += ["--members", ",".join(map(str, members))] if members is not None else []
    print("$", " ".join(cmd[1:]), flush=True)
    code = subprocess.run(cmd, env=env).returncode
    if code:
        raise TrainingError(f"torchrun exited with code {code}; resume with --resume {run.root}")
    return None if members is not None else json.loads(run.report_json.read_text())


def _member_job(root: str, members: list[int], threads: int) -> None:
    import torch

    from defectlite.pipeline.training import train_members

    torch.set_num_threads(threads)
    train_members(open_run(root), members, progress=False)


def train_members_in_parallel(run: Run, jobs: int) -> None:
    """Train ``run``'s ensemble members ``jobs`` at a time, each job a process with cores / jobs threads (a finished
    member returns at once: its stage resumes to the end); the distillation then continues in this process.

    Raises:
        TrainingError: a member job failed (its finished members are kept; resume the run).
    """
    n = run.config().ensemble.members
    if not n:
        return
    jobs = max(1, min(jobs, n))
    threads = max(1, available_cpus() // jobs)
    groups = [list(range(n))[j::jobs] for j in range(jobs)]
    ctx = multiprocessing.get_context("spawn")  # a fresh interpreter: no PyTorch thread pool inherited by fork
    procs = [ctx.Process(target=_member_job, args=(str(run.root), g, threads)) for g in groups if g]
    for p in procs:
        p.start()
    for p in procs:
        p.join()
    codes = [p.exitcode for p in procs]
    if any(codes):
        raise TrainingError(f"member job(s) failed with exit codes {codes}; resume with --resume {run.root}")


def _worker(argv: list[str]) -> int:
    """One torchrun rank: continue the run folder ``argv[0]`` (rank 0 deploys and reports), or train only the
    members after ``--members``; ``--quiet`` / ``--verbose`` set the log level as the CLI's do."""
    import logging

    from defectlite.pipeline.training import resume_run, train_members

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


if __name__ == "__main__":  # each torchrun rank of run_under_torchrun
    from defectlite.train.distributed import exit_worker

    status = _worker(sys.argv[1:])
    exit_worker(status)
    sys.exit(status)
