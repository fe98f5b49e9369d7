"""Predictor: an exported ONNX model run by ONNX Runtime, with the training code's own preprocessing.

Used by ``defectlite predict``, ``defectlite val`` and the HTTP service; the Python API is::

    from defectlite import Predictor
    p = Predictor("runs/neu/model.onnx")      # or the run folder
    p.predict("crazing_1.jpg")                # classifier: Prediction(label='crazing', probability=0.99, ...)
                                              # detector: Detections(boxes, scores, labels)

What an answer is depends on the model's task (its ONNX metadata); the task's runtime
(:class:`defectlite.tasks.base.Runtime`) turns the raw outputs into it, so this class never branches on the task.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from defectlite.data.transforms import ImageSource, decode, normalize, to_uint8
from defectlite.errors import CheckpointError, ConfigError, DataError
from defectlite.onnx_file import ort_session, read_metadata
from defectlite.runs import deployed_onnx, int8_path, is_int8
from defectlite.tasks import get_runtime, task_name


def resolve_model_path(path: str | Path, *, fp32: bool = False) -> Path:
    """The ONNX file to run: ``<run>/model.onnx`` for a run folder; the INT8 form ``X.int8.onnx`` beside an
    ``X.onnx`` when it exists (``defectlite train`` writes it only when it keeps the validation score) unless
    ``fp32``; else the file as given.

    Raises:
        CheckpointError: neither exists.
    """
    p = Path(path)
    folder = p.is_dir()
    if folder:
        p = deployed_onnx(p)
    if not fp32 and p.suffix == ".onnx" and not is_int8(p) and int8_path(p).is_file():
        p = int8_path(p)
    if not p.is_file():
        hint = " (run `defectlite export RUN` first)" if folder else ""
        raise CheckpointError(f"ONNX model not found: {p}{hint}")
    return p


class Predictor:
    """Run an exported defectlite ONNX model on images.

    Args:
        path: ``model.onnx`` written by ``defectlite export`` / ``train``, or its run folder; its INT8 form
            ``model.int8.onnx`` is used when the run deployed one (see :func:`resolve_model_path`).
        fp32: run ``model.onnx`` even when an INT8 form is beside it.
        threads: ONNX Runtime intra-op threads (default 1: lowest batch-1 latency on small models).
        spinning: let idle ONNX Runtime threads busy-wait (off in the HTTP service, where they would
            take the CPU from the event loop).
        **options: the task's postprocessing options (its runtime's ``options``, e.g. detection ``conf``, ``iou``), as
            values or as text (``"0.5"``, parsed by the runtime); others are refused.

    Attributes:
        task: the model's task; ``classes``, ``input_size`` (H, W), ``channels``: from its metadata.

    Raises:
        CheckpointError: missing model, missing or invalid defectlite metadata, or outputs that are not finite
            on a probe input (a diverged model).
        ConfigError: an option the task does not know, or of a value it refuses (e.g. ``min_confidence=2``).
    """

    def __init__(
        self, path: str | Path, threads: int = 1, *, spinning: bool = True, fp32: bool = False, **options: Any
    ) -> None:
        self.path = resolve_model_path(path, fp32=fp32)
        self.meta = read_metadata(self.path)
        self.task: str = task_name(self.meta)
        self.runtime = get_runtime(self.task)
        unknown = set(options) - set(self.runtime.options)
        if unknown:
            allowed = ", ".join(self.runtime.options) or "none"
            raise ConfigError(f"option(s) {sorted(unknown)} do not apply to a {self.task} model (allowed: {allowed})")
        self.options = {k: self.runtime.option(k, v) for k, v in options.items() if v is not None}
        self.classes: list[str] = list(self.meta["classes"])
        self.input_size: tuple[int, int] = tuple(self.meta["input_size"])
        self.channels: int = int(self.meta["channels"])
        self.session = ort_session(self.path, threads, spinning=spinning)
        self._input = self.session.get_inputs()[0].name
        try:
            self.runtime.check(self.meta, self.session.get_outputs())
        except CheckpointError as e:
            raise CheckpointError(f"{self.path}: {e}") from None
        self._probe()

    def _probe(self) -> None:
        """Refuse a model whose outputs are not finite on a mid-grey image (e.g. trained to NaN), and option values
        that would fail every answer (answering the probe with them), before the first image is read."""
        x = normalize(np.full((1, self.channels, *self.input_size), 128, np.uint8), self.meta["mean"], self.meta["std"])
        outputs = self.run(x)
        bad = [o.name for o, y in zip(self.session.get_outputs(), outputs) if not np.isfinite(y).all()]
        if bad:
            raise CheckpointError(
                f"{self.path}: the model's output {', '.join(bad)} is not finite on a probe image; it was probably "
                "trained to NaN / inf (retrain it with a lower learning rate)"
            )
        self.answers(outputs, [self.input_size])

    @property
    def columns(self) -> list[str]:
        """The columns of :meth:`rows` (``predict --csv``, Ray's Parquet): path, the task's own, error."""
        return ["path", *getattr(self.runtime, "columns", ()), "error"]

    def preprocess(
        self, images: Sequence[ImageSource], names: Sequence[str] | None = None
    ) -> tuple[np.ndarray, list[tuple[int, int]]]:
        """Images -> (float32 (N, C, H, W) model input, original (H, W) of each image).

        Raises:
            DataError: an image cannot be decoded (the message names it).
        """
        names = names or [None] * len(images)
        arrays, sizes = [], []
        mode = "L" if self.channels == 1 else "RGB"
        for im, n in zip(images, names):
            img = decode(im, n, mode)
            sizes.append((img.height, img.width))
            arrays.append(to_uint8(img, self.input_size, self.channels, name=n))
        return normalize(np.stack(arrays), self.meta["mean"], self.meta["std"]), sizes

    def run(self, x: np.ndarray) -> list[np.ndarray]:
        """Raw model outputs for a preprocessed batch (N, C, H, W)."""
        return self.session.run(None, {self._input: np.ascontiguousarray(x, dtype=np.float32)})

    def logits(self, x: np.ndarray) -> np.ndarray:
        """The first raw output of a preprocessed batch (a classifier's logits (N, K))."""
        return self.run(x)[0]

    def answers(self, outputs: Sequence[np.ndarray], sizes: Sequence[tuple[int, int]], **options: Any) -> list[Any]:
        """The task's results for raw outputs of a batch whose images had ``sizes`` (H, W); ``options`` override
        the Predictor's own for this call (e.g. one request's ``min_confidence``).

        Raises:
            ConfigError: an option of a bad value.
        """
        return self.runtime.postprocess(outputs, self.meta, sizes, **{**self.options, **options})

    def predict_batch(self, images: Sequence[ImageSource], names: Sequence[str] | None = None) -> list[Any]:
        """Results for several images, in one ONNX Runtime call."""
        if not images:
            return []
        x, sizes = self.preprocess(images, names)
        return self.answers(self.run(x), sizes)

    def predict_each(self, images: Sequence[ImageSource], names: Sequence[str] | None = None) -> list[Any]:
        """Like :meth:`predict_batch`, but an undecodable image yields its :class:`DataError` in place of a
        result instead of failing the whole batch."""
        names = list(names) if names is not None else [None] * len(images)
        inputs, sizes, slots, out = [], [], [], []
        for i, (im, n) in enumerate(zip(images, names)):
            try:
                x, size = self.preprocess([im], [n])
            except DataError as e:
                out.append(e)
                continue
            inputs.append(x[0])
            sizes += size
            slots.append(i)
            out.append(None)
        if inputs:
            for i, res in zip(slots, self.answers(self.run(np.stack(inputs)), sizes)):
                out[i] = res
        return out

    def predict(self, image: ImageSource) -> Any:
        """The result for one image (a path, encoded bytes, a PIL image or a uint8 array)."""
        return self.predict_batch([image])[0]

    def as_dict(self, result: Any) -> dict[str, Any]:
        """JSON form of a result (the task's own)."""
        return self.runtime.as_dict(result, self.meta)

    def as_rows(self, result: Any) -> list[dict[str, str]]:
        """Table rows of a result (one per class / box)."""
        return self.runtime.as_rows(result, self.meta)

    def score(
        self, images: np.ndarray, truths: Any, sizes: Sequence[tuple[int, int]], batch_size: int = 64
    ) -> dict[str, Any]:
        """The task's metrics on already-decoded uint8 images (N, C, H, W) of a run's split and their ground truth
        (classification: class indices (N,); detection: boxes per image in the original ``sizes`` (H, W))."""
        results = []
        for i in range(0, len(images), batch_size):
            x = normalize(images[i : i + batch_size], self.meta["mean"], self.meta["std"])
            results += self.answers(self.run(x), sizes[i : i + batch_size])
        return self.runtime.score(results, truths, self.meta)

    @classmethod
    def for_scoring(cls, path: str | Path, threads: int = 1, *, fp32: bool = True) -> Predictor:
        """A Predictor with the options scoring uses (detection: every box above 0.001, as mAP needs), on the file
        named (``fp32=False``: the deployed INT8 form when there is one)."""
        task = task_name(read_metadata(resolve_model_path(path, fp32=fp32)))
        return cls(path, threads=threads, fp32=fp32, **get_runtime(task).eval_options)

    def rows(self, images: Sequence[ImageSource], names: Sequence[str]) -> list[tuple[Any, list[dict[str, str]]]]:
        """For each image, (its result or :class:`DataError`, its table rows: ``path`` + the result's columns +
        ``error``, one row per class / box, one row with the error for an unreadable image). What
        ``defectlite predict --csv`` writes and the Ray Data engine returns, row for row."""
        out = []
        for name, res in zip(names, self.predict_each(images, names)):
            if isinstance(res, DataError):
                out.append((res, [{"path": name, "error": str(res).removeprefix(f"{name}: ")}]))
            else:
                rows = [{"path": name, **r, "error": ""} for r in self.as_rows(res)] or [{"path": name, "error": ""}]
                out.append((res, rows))
        return out


__all__ = ["Predictor", "resolve_model_path"]
