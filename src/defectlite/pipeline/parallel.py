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


def run_under_torchrun(run: Run, nproc: int, *, progress: bool = True) -> dict[str, Any] | None:
    """Continue ``run`` data-parallel in ``nproc`` processes of this machine (``torchrun --standalone``), the cores
    split between them; every rank trains, rank 0 deploys and writes the report.

    Returns:
        The report rank 0 wrote.

    Raises:
        TrainingError: torchrun exited with an error (the run folder keeps what finished; resume it).
    """
    env = {**os.environ, "OMP_NUM_THREADS": str(max(1, available_cpus() // nproc))}
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc_per_node={nproc}",
           "-m", "defectlite.pipeline.parallel", str(run.root)] + ([] if progress else ["--quiet"])  # fmt: skip
    print("$", " ".join(cmd[1:]), flush=True)
    code = subprocess.run(cmd, env=env).returncode
    if code:
        raise TrainingError(f"torchrun exited with code {code}; resume with --resume {run.root}")
    return json.loads(run.report_json.read_text())


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
    """One torchrun rank: continue the run folder ``argv[0]`` (rank 0 deploys and reports)."""
    import logging

    from defectlite.pipeline.training import resume_run

    logging.basicConfig(level=logging.WARNING, format="%(message)s", stream=sys.stderr, force=True)
    resume_run(open_run(argv[0]), progress="--quiet" not in argv)
    return 0


if __name__ == "__main__":  # each torchrun rank of run_under_torchrun
    from defectlite.train.distributed import exit_worker

    status = _worker(sys.argv[1:])
    exit_worker(status)
    sys.exit(status)
