"""A run on several processes of one machine: data-parallel under ``torchrun`` (``nproc``), and ensemble members
trained several at a time (``jobs``). Library code: ``train_run(..., nproc=, jobs=)`` does what ``defectlite train
--nproc / --jobs`` does.

Each process runs :mod:`defectlite.pipeline.worker` (``python -m defectlite.pipeline.worker RUN [--members I,J]``).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from typing import Any

from defectlite.cpus import available_cpus
from defectlite.errors import TrainingError
from defectlite.runs import Run

WORKER = "defectlite.pipeline.worker"  # the module each process runs


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
           "-m", WORKER, str(run.root)]  # fmt: skip
    cmd += ([] if progress else ["--quiet"]) + (["--verbose"] if verbose else [])
    cmd += ["--members", ",".join(map(str, members))] if members is not None else []
    print("$", " ".join(cmd[1:]), flush=True)
    code = subprocess.run(cmd, env=env).returncode
    if code:
        raise TrainingError(f"torchrun exited with code {code}; resume with --resume {run.root}")
    return None if members is not None else json.loads(run.report_json.read_text())


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
    env = {**os.environ, "OMP_NUM_THREADS": str(threads)}
    procs = [
        subprocess.Popen(
            [sys.executable, "-m", WORKER, str(run.root), "--members", ",".join(map(str, g)), "--quiet"], env=env
        )  # fmt: skip
        for g in groups
        if g
    ]
    for p in procs:
        p.wait()
    codes = [p.returncode for p in procs]
    if any(codes):
        raise TrainingError(f"member job(s) failed with exit codes {codes}; resume with --resume {run.root}")
