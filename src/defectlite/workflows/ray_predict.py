"""Batch inspection on Ray Data: ``defectlite predict MODEL SOURCE --engine ray --out DIR`` (extra ``[ray]``).

The driver lists the image files (local folders, or any URI ``pyarrow.fs`` resolves: ``s3://``, ``gs://``,
``hdfs://``, ...); a pool of actors, each holding one :class:`~defectlite.deploy.predictor.Predictor` (the one
preprocessing; ONNX Runtime), reads and answers them in batches, and Ray Data writes the rows as Parquet: the same
rows as ``defectlite predict --csv`` (path + the task's columns + error; an unreadable file is an error row, never
a failed job).

Why the actors read the files: with ``ray.data.read_binary_files`` every image's bytes went through read tasks
and the object store to an actor; on 2 cores those extra processes took the CPU the actors needed (Ray / local
0.73 on 50,000 NEU images; ``benchmarks/results/scale_ray_50000.md``). Only paths travel now.

CPU accounting on small machines: every Ray task and actor holds CPUs while it runs, and the Parquet writes need
one too. Actors that take all the CPUs starve the writes and every answered block waits in the object store until
the end, so the actors together claim at most the CPUs less :data:`WRITE_CPUS`, and a write claims
:data:`WRITE_CPUS`.
"""

from __future__ import annotations

import logging
import os
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from defectlite.data.readers import image_files, is_image
from defectlite.errors import ConfigError

log = logging.getLogger(__name__)
WRITE_CPUS = 0.1  # what a Parquet-write task claims: I/O, not compute
ROWS_PER_FILE = 50_000  # rows gathered into one Parquet file (Ray's default: one small file per block)
PATHS_PER_BLOCK = 1024  # paths handed to the actor pool at a time (and at least 2 blocks per actor)


def ray_available() -> str | None:
    """None when Ray Data can be imported, else why not (with the install command)."""
    try:
        import ray.data  # noqa: F401
    except ModuleNotFoundError as e:
        return f"{e.name} is not installed (pip install 'defectlite[ray]')"
    return None


def list_images(sources: Sequence[str | Path]) -> list[str]:
    """Every image file under ``sources``, as local absolute paths or URIs (``s3://bucket/key``) that every actor
    can open: local files and folders as ``defectlite predict`` lists them (``image_files``: broken links and
    other unreadable files included, so that each gets its error row); a URI's folder through ``pyarrow.fs``,
    recursively, sorted, the same suffixes and no hidden files.

    Raises:
        ConfigError: a source does not exist, or cannot be listed (an unknown scheme, missing credentials).
    """
    import pyarrow.fs as pafs

    out: list[str] = []
    for source in map(str, sources):
        if "://" not in source:
            if not os.path.lexists(source):
                raise ConfigError(f"{source}: no such file or folder")
            out += [str(p.absolute()) for p in image_files([Path(source)])]
            continue
        scheme = source.split("://", 1)[0] + "://"
        try:
            fs, root = pafs.FileSystem.from_uri(source)
            info = fs.get_file_info(root)
            if info.type == pafs.FileType.NotFound:
                raise ConfigError(f"{source}: no such file or folder")
            if info.type != pafs.FileType.Directory:
                out.append(source)
                continue
            found = fs.get_file_info(pafs.FileSelector(root, recursive=True))
        except (OSError, ValueError) as e:  # pyarrow: unknown scheme, no credentials, permission denied
            raise ConfigError(f"{source}: cannot list it ({e})") from e
        names = sorted(f.path for f in found if f.type != pafs.FileType.Directory)
        out += [scheme + n for n in names if is_image(Path(n))]
    return out


class _Answer:
    """The Ray actor: a Predictor that reads a batch of ``{"path"}`` rows and answers them with ``predict --csv``
    rows (local paths are read as ``predict`` reads them; URIs through ``pyarrow.fs``)."""

    def __init__(self, model: str, threads: int, options: dict[str, Any]) -> None:
        from defectlite.deploy.predictor import Predictor

        self.predictor = Predictor(model, threads=threads, fp32=True, **options)  # the file predict_ray resolved
        self.fs: dict[str, tuple[Any, int]] = {}  # per scheme and bucket: its file system, where its paths start

    def _read(self, path: str) -> str | bytes | OSError:
        """A local path as it is (the Predictor reads it, and names it in its error, as local predict does), a
        URI's bytes, or the OSError of a URI that cannot be read."""
        if "://" not in path:
            return path
        import pyarrow.fs as pafs

        key = "/".join(path.split("/", 3)[:3])
        try:
            if key not in self.fs:
                fs, inner = pafs.FileSystem.from_uri(path)
                self.fs[key] = fs, len(path) - len(inner)
            fs, start = self.fs[key]
            with fs.open_input_stream(path[start:]) as f:
                return f.read()
        except OSError as e:
            return e

    def __call__(self, batch: dict[str, Any]) -> dict[str, list]:
        paths = [str(p) for p in batch["path"]]
        images = [self._read(p) for p in paths]
        ok = [i for i, im in enumerate(images) if not isinstance(im, OSError)]
        answered = dict(zip(ok, self.predictor.rows([images[i] for i in ok], [paths[i] for i in ok])))
        unread = {
            i: [{"path": paths[i], "error": f"cannot read it ({images[i]})"}] for i in set(range(len(paths))) - set(ok)
        }
        rows = [r for i in range(len(paths)) for r in (answered[i][1] if i in answered else unread[i])]
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
        sources: files, folders or URIs (see :func:`list_images`), image suffixes only; every actor must be able
            to read them (on a cluster: a shared file system or an object store).
        address: a running Ray cluster (``auto``: the one this machine belongs to); None starts a local Ray.
        actors: Predictor actors (default: one per CPU, sharing what the writes leave).
        threads: ONNX Runtime threads per actor.
        batch_size: images per actor call.
        options: the task's answer options (``min_confidence``, ``conf``, ``iou``).
        num_cpus, object_store_mb: resources of a local Ray (ignored with ``address``).
        progress: Ray Data's progress (bars, or INFO lines every few seconds without a terminal) and Ray's INFO
            and WARNING logging; off for ``-q`` (errors only).

    Returns:
        ``{"images", "rows", "errors", "seconds", "images_per_s", "actors", "out"}``.

    Raises:
        ConfigError: Ray is not installed, a source cannot be listed, no actor fits beside the writes, or ``out``
            is a folder that is not empty.
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
        # one actor per CPU, each with what the writes leave (2 CPUs: 2 x 0.95)
        actors = actors or max(1, round(cpus - WRITE_CPUS))
        actor_cpus = round(min(float(threads), (cpus - WRITE_CPUS) / actors), 2)
        if actor_cpus <= 0:
            raise ConfigError(f"{actors} actor(s) do not fit beside the Parquet writes on {cpus:g} CPUs; ask for fewer")
        ray.data.DataContext.get_current().enable_progress_bars = progress
        if not progress:  # nor the warning that they are off
            logging.getLogger("ray.data").setLevel(logging.ERROR)
        t0 = time.perf_counter()
        import pyarrow as pa

        paths = list_images(sources)
        blocks = max(1, min(len(paths), max(2 * actors, -(-len(paths) // PATHS_PER_BLOCK))))
        answers = ray.data.from_arrow(pa.table({"path": paths}), override_num_blocks=blocks).map_batches(
            _Answer,
            fn_constructor_kwargs={"model": str(Path(model).resolve()), "threads": threads, "options": options or {}},
            compute=ActorPoolStrategy(size=actors),
            batch_size=batch_size,
            num_cpus=actor_cpus,
            batch_format="numpy",
        )
        # at Ray's default of 1 CPU no write fits beside the actors until they finish, and every answered block
        # waits in the object store for the end; few, large files
        answers.write_parquet(str(out), min_rows_per_file=ROWS_PER_FILE, ray_remote_args={"num_cpus": WRITE_CPUS})
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
