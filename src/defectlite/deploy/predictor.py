"""Predictor: an exported ONNX model run by ONNX Runtime, with the training code's own preprocessing.

Used by ``defectlite predict`` and the HTTP service; the Python API is::

    from defectlite import Predictor
    p = Predictor("runs/neu/model.onnx")      # or the run folder
    p.predict("crazing_1.jpg")                # Prediction(label='crazing', probability=0.99, ...)
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from defectlite.data.transforms import ImageSource, normalize, to_uint8
from defectlite.errors import CheckpointError, DataError
from defectlite.onnx_file import ort_session, read_metadata


@dataclass(frozen=True)
class Prediction:
    """The class of one image.

    Attributes:
        label: predicted class name.
        index: its index in ``Predictor.classes``.
        probability: softmax probability of that class, in [0, 1].
        probabilities: class name -> probability (sums to 1).
    """

    label: str
    index: int
    probability: float
    probabilities: dict[str, float]


def softmax(logits: np.ndarray) -> np.ndarray:
    """Row-wise softmax of (N, K) logits."""
    z = logits - logits.max(axis=1, keepdims=True)
    e = np.exp(z)
    return e / e.sum(axis=1, keepdims=True)


def resolve_model_path(path: str | Path) -> Path:
    """An .onnx file as given, or ``<run>/model.onnx`` for a run folder.

    Raises:
        CheckpointError: neither exists.
    """
    p = Path(path)
    if p.is_dir():
        p = p / "model.onnx"
    if not p.is_file():
        hint = " (run `defectlite export RUN` first)" if p.name == "model.onnx" else ""
        raise CheckpointError(f"ONNX model not found: {p}{hint}")
    return p


class Predictor:
    """Classify images with an exported defectlite ONNX model.

    Args:
        path: ``model.onnx`` written by ``defectlite export``, or its run folder.
        threads: ONNX Runtime intra-op threads (default 1: lowest batch-1 latency on small models).
        spinning: let idle ONNX Runtime threads busy-wait (off in the HTTP service, where they would
            take the CPU from the event loop).

    Raises:
        CheckpointError: missing model or missing defectlite metadata.
    """

    def __init__(self, path: str | Path, threads: int = 1, *, spinning: bool = True) -> None:
        self.path = resolve_model_path(path)
        self.meta = read_metadata(self.path)
        self.classes: list[str] = list(self.meta["classes"])
        self.input_size: tuple[int, int] = tuple(self.meta["input_size"])
        self.channels: int = int(self.meta["channels"])
        self.session = ort_session(self.path, threads, spinning=spinning)
        self._input = self.session.get_inputs()[0].name

    def preprocess(self, images: Sequence[ImageSource], names: Sequence[str] | None = None) -> np.ndarray:
        """Images -> float32 (N, C, H, W) model input (decode, grey/RGB, resize, normalise).

        Raises:
            DataError: an image cannot be decoded (the message names it).
        """
        names = names or [None] * len(images)
        arr = np.stack([to_uint8(im, self.input_size, self.channels, name=n) for im, n in zip(images, names)])
        return normalize(arr, self.meta["mean"], self.meta["std"])

    def logits(self, x: np.ndarray) -> np.ndarray:
        """Run the model on a preprocessed batch (N, C, H, W) -> logits (N, K)."""
        return self.session.run(None, {self._input: np.ascontiguousarray(x, dtype=np.float32)})[0]

    def predict_batch(self, images: Sequence[ImageSource], names: Sequence[str] | None = None) -> list[Prediction]:
        """Classify several images in one ONNX Runtime call."""
        if not images:
            return []
        probs = softmax(self.logits(self.preprocess(images, names)))
        return [self.prediction(p) for p in probs]

    def predict_each(
        self, images: Sequence[ImageSource], names: Sequence[str] | None = None
    ) -> list[Prediction | DataError]:
        """Like :meth:`predict_batch`, but an undecodable image yields its :class:`DataError` in place
        of a prediction instead of failing the whole batch."""
        names = list(names) if names is not None else [None] * len(images)
        inputs, slots, out = [], [], []
        for i, (im, n) in enumerate(zip(images, names)):
            try:
                inputs.append(self.preprocess([im], [n])[0])
                slots.append(i)
                out.append(None)
            except DataError as e:
                out.append(e)
        if inputs:
            probs = softmax(self.logits(np.stack(inputs)))
            for i, p in zip(slots, probs):
                out[i] = self.prediction(p)
        return out

    def predict(self, image: ImageSource) -> Prediction:
        """Classify one image (a path, encoded bytes, a PIL image or a uint8 array)."""
        return self.predict_batch([image])[0]

    def prediction(self, p: np.ndarray) -> Prediction:
        """A :class:`Prediction` from one row of class probabilities (K,)."""
        i = int(p.argmax())
        return Prediction(self.classes[i], i, float(p[i]), {c: float(v) for c, v in zip(self.classes, p)})
