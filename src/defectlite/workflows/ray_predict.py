"""Batch inspection on Ray Data: ``defectlite predict MODEL SOURCE --engine ray --out DIR`` (extra ``[ray]``).

The files are read by Ray Data (local folders, or any URI its readers take: ``s3://``, ``gs://``, ...), decoded and
answered in a pool of actors that each hold one :class:`~defectlite.deploy.predictor.Predictor` (the one
preprocessing; ONNX Runtime), and written as Parquet: the same rows as ``defectlite predict --csv``
(path + the task's columns + error; an unreadable file is an error row, never a failed job).

CPU accounting on small machines: every Ray task and actor holds CPUs while it runs, and Ray Data's read tasks
need one too. Actors that take all the CPUs starve the reads and the job deadlocks, so the actors together
claim at most the CPUs less :data:`READ_CPUS` per concurrent read, and reads and writes claim :data:`READ_CPUS`
each.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from defectlite.data.readers import IMAGE_SUFFIXES
from defectlite.errors import ConfigError

log = logging.getLogger(__name__)
READ_CPUS = 0.1  # what a file-read or Parquet-write task claims: I/O, not compute
ROWS_PER_FILE = 50_000  # rows gathered into one Parquet file (Ray's default: one small file per block)


def ray_available() -> str | None:
    """None when Ray Data can be imported, else why not (with the install command)."""
    try:
        import ray.data  # noqa: F401
    except ModuleNotFoundError as e:
        return f"{e.name} is not installed (pip install 'defectlite[ray]')"
    return None


class _Answer:
    """The Ray actor: a Predictor answering batches of ``{"bytes", "path"}`` rows with ``predict --csv`` rows."""

    def __init__(self, model: str, threads: int, options: dict[str, Any]) -> None:
        from defectlite.deploy.predictor import Predictor

        self.predictor = Predictor(model, threads=threads, fp32=True, **options)  # the file predict_ray resolved

    def __call__(self, batch: dict[str, Any]) -> dict[str, list]:
        paths = [str(p) for p in batch["path"]]
        rows = [r for _, answer in self.predictor.rows(list(batch["bytes"]), paths) for r in answer]
        columns = list(dict.fromkeys([*self.predictor.columns, *(k for r in rows for k in r)]))  # one schema
        return {k: [r.get(k, "") for r in rows] for k in columns}


def predict_ray(
    model: str | Path,
    sources: Sequence[str | Path],
    out: str | Path,
    *,
    fp32: bool = False,
    address: str | None = None,
    actors: int | None = None,
    threads: int = 1,
    batch_size: int = 32,
    options: dict[str, Any] | None = None,
    num_cpus: int | None = None,
    object_store_mb: int | None = None,
    progress: bool = True,
) -> dict[str, Any]:
    """Answer every image under ``sources`` on Ray Data and write the rows to Parquet files in ``out``.

    Args:
        model: an exported ``model.onnx`` or its run folder (every actor loads it; on a cluster it must be readable
            from every node); its INT8 form beside it is run unless ``fp32`` (see ``resolve_model_path``).
        sources: files, folders or URIs Ray Data reads (``ray.data.read_binary_files``), image suffixes only.
        address: a running Ray cluster (``auto``: the one this machine belongs to); None starts a local Ray.
        actors: Predictor actors (default: one per CPU, sharing what the reads leave).
        threads: ONNX Runtime threads per actor.
        batch_size: images per actor call.
        options: the task's answer options (``min_confidence``, ``conf``, ``iou``).
        num_cpus, object_store_mb: resources of a local Ray (ignored with ``address``).
        progress: Ray Data's progress (bars, or INFO lines every few seconds without a terminal) and Ray's INFO
            and WARNING logging; off for ``-q`` (errors only).

    Returns:
        ``{"images", "rows", "errors", "seconds", "images_per_s", "actors", "out"}``.

    Raises:
        ConfigError: Ray is not installed, no actor fits beside the reads, or ``out`` is a folder that is not empty.
        CheckpointError: the model file is missing.
    """
    why = ray_available()
    if why:
        raise ConfigError(f"--engine ray needs {why}")
    from defectlite.deploy.predictor import resolve_model_path

    model = resolve_model_path(model, fp32=fp32)
    if "://" not in str(out) and Path(out).exists() and (not Path(out).is_dir() or any(Path(out).iterdir())):
        raise ConfigError(f"--out {out} exists and is not an empty folder: Parquet files of another job would mix "
                          "with these rows; give a new folder")  # fmt: skip
    import ray
    from ray.data import ActorPoolStrategy

    started = not ray.is_initialized()
    if started:
        kwargs: dict[str, Any] = {"address": address, "include_dashboard": False, "log_to_driver": False,
                                  "logging_level": logging.INFO if progress else logging.ERROR}  # fmt: skip
        if address is None:
            kwargs |= {"num_cpus": num_cpus, "object_store_memory": object_store_mb and object_store_mb * 2**20}
        ray.init(**{k: v for k, v in kwargs.items() if v is not None})
    try:
        cpus = float(ray.cluster_resources().get("CPU", 1))
        # one actor per CPU, each with what the reads leave (2 CPUs: 2 x 0.9): on 50,000 NEU images 1.4 x the
        # throughput of one actor with a whole CPU (benchmarks/results/scale_ray_50000.md)
        actors = actors or max(1, round(cpus - READ_CPUS * 2))
        actor_cpus = round(min(float(threads), (cpus - READ_CPUS * 2) / actors), 2)
        if actor_cpus <= 0:
            raise ConfigError(f"{actors} actor(s) do not fit beside the file reads on {cpus:g} CPUs; ask for fewer")
        ray.data.DataContext.get_current().enable_progress_bars = progress
        if not progress:  # nor the warning that they are off
            logging.getLogger("ray.data").setLevel(logging.ERROR)
        t0 = time.perf_counter()
        ds = ray.data.read_binary_files(
            [str(s) for s in sources],
            include_paths=True,
            file_extensions=sorted(s.lstrip(".") for s in IMAGE_SUFFIXES),
            num_cpus=READ_CPUS,
        )
        answers = ds.map_batches(
            _Answer,
            fn_constructor_kwargs={"model": str(Path(model).resolve()), "threads": threads, "options": options or {}},
            compute=ActorPoolStrategy(size=actors),
            batch_size=batch_size,
            num_cpus=actor_cpus,
            batch_format="numpy",
        )
        # writes claim what reads claim: at Ray's default of 1 CPU, no write fits beside the actors until they
        # finish, and every answered block waits in the object store for the end; few, large files
        answers.write_parquet(str(out), min_rows_per_file=ROWS_PER_FILE, ray_remote_args={"num_cpus": READ_CPUS})
        seconds = time.perf_counter() - t0
    finally:
        if started:
            ray.shutdown()
    return _summary(Path(out), seconds, actors)


def _summary(out: Path, seconds: float, actors: int) -> dict[str, Any]:
    import pyarrow.parquet as pq

    table = pq.read_table(out)
    paths, errors = table.column("path").to_pylist(), table.column("error").to_pylist()
    images = len(set(paths))
    return {
        "images": images,
        "rows": table.num_rows,
        "errors": sum(1 for p, e in dict(zip(paths, errors)).items() if e),
        "seconds": seconds,
        "images_per_s": images / seconds if seconds else 0.0,
        "actors": actors,
        "out": str(out),
    }
