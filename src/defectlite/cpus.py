"""How many CPUs this process may really use, for sizing thread pools (ONNX Runtime, torch, decoding).

``os.cpu_count()`` counts the host's cores: in a container limited to 2 CPUs (``docker run --cpus 2``,
Kubernetes ``limits.cpu: 2``) on a 64-core host it says 64, and 63 ONNX Runtime threads then share two
CPUs' worth of time, each stalled by the CFS quota in turn. The quota lives in the process's cgroup:
cgroup v2 ``cpu.max`` (``"<quota_us> <period_us>"`` or ``"max <period_us>"``) or cgroup v1
``cpu.cfs_quota_us`` / ``cpu.cfs_period_us`` (quota -1 = none); the CPU set (``taskset``, ``--cpuset-cpus``)
is the affinity mask.
"""

from __future__ import annotations

import math
import os
from pathlib import Path

from defectlite.errors import ConfigError

CGROUP_ROOT = Path("/sys/fs/cgroup")
SELF_CGROUP = Path("/proc/self/cgroup")
ENV_THREADS = "DEFECTLITE_THREADS"  # ONNX Runtime threads per worker, overriding the CPU count
V1_CPU_MOUNTS = ("cpu", "cpu,cpuacct", "cpuacct,cpu")  # where cgroup v1 mounts the cpu controller under the root


def available_cpus(root: Path = CGROUP_ROOT, self_cgroup: Path = SELF_CGROUP) -> int:
    """CPUs this process may use: its affinity mask, capped by the cgroup CPU quota (rounded up); at least 1.

    The quota is read in the process's own cgroup (from ``self_cgroup``, e.g. a systemd unit with
    ``CPUQuota=``) and every ancestor up to ``root`` (the tightest applies). Inside a container the
    cgroup folder is usually ``root`` itself; paths that do not exist under ``root`` are skipped.

    Args:
        root: where the cgroup file systems are mounted (a fake tree in tests).
        self_cgroup: the ``/proc/self/cgroup`` listing (``id:controllers:path`` lines).
    """
    try:
        cpus = len(os.sched_getaffinity(0))
    except (AttributeError, OSError):  # not Linux
        cpus = os.cpu_count() or 1
    quotas = [q for d in _cgroup_dirs(root, self_cgroup) if (q := _quota_cpus(d)) is not None]
    if quotas:
        cpus = min(cpus, math.ceil(min(quotas)))
    return max(1, cpus)


def default_threads(workers: int = 1, root: Path = CGROUP_ROOT, self_cgroup: Path = SELF_CGROUP) -> int:
    """ONNX Runtime threads per worker process: ``$DEFECTLITE_THREADS`` when set, else the usable CPUs
    (:func:`available_cpus`) minus one (left to HTTP and preprocessing), shared among workers; at least 1.

    Raises:
        ConfigError: ``$DEFECTLITE_THREADS`` is not a positive integer.
    """
    env = os.environ.get(ENV_THREADS, "").strip()
    if env:
        if not env.isdigit() or int(env) < 1:
            raise ConfigError(f"{ENV_THREADS} must be a positive integer, got {env!r}")
        return int(env)
    return max(1, (available_cpus(root, self_cgroup) - 1) // workers)


def _cgroup_dirs(root: Path, self_cgroup: Path) -> list[Path]:
    """The folders of the process's cgroup and their ancestors, cgroup v2 and v1's cpu controller."""
    paths = {"v2": "/", "v1": "/"}
    try:
        lines = self_cgroup.read_text().splitlines()
    except OSError:
        lines = []
    for line in lines:
        parts = line.split(":", 2)
        if len(parts) != 3:
            continue
        if parts[1] == "":
            paths["v2"] = parts[2]
        elif "cpu" in parts[1].split(","):
            paths["v1"] = parts[2]
    bases = [(root, paths["v2"])] + [(root / m, paths["v1"]) for m in V1_CPU_MOUNTS]
    dirs = []
    for base, path in bases:
        d = base / path.strip("/")
        dirs.append(d)
        while d != base:
            d = d.parent
            dirs.append(d)
    return [d for d in dirs if d.is_dir()]


def _quota_cpus(folder: Path) -> float | None:
    """CPUs' worth of time the quota in ``folder`` grants (quota / period), or None without one."""
    try:
        quota, period = (folder / "cpu.max").read_text().split()[:2]
        return int(quota) / int(period) if quota != "max" and int(period) > 0 else None
    except (OSError, ValueError):
        pass
    try:
        quota = int((folder / "cpu.cfs_quota_us").read_text())
        period = int((folder / "cpu.cfs_period_us").read_text())
    except (OSError, ValueError):
        return None
    return quota / period if quota > 0 and period > 0 else None
