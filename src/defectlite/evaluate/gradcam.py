"""Where a model looks: Grad-CAM overlays and grids of intermediate feature maps.

- Grad-CAM (Selvaraju et al., ICCV 2017) through the ``grad-cam`` package (``pytorch_grad_cam``), on
  the last spatial layer of the model, as Xie & Shen 2022 (Electronics 11, 4218) do in Section 3.4
  ("the final layer ... is a generalized representation of the feature extraction", Fig. 11).
- A grid of feature maps (Xie & Shen 2022, Section 3.4, Fig. 10): a few channels of each block's
  output, from shallow (contours) to deep (location of the defect).

The model is rebuilt from its checkpoint card (:func:`defectlite.checkpoint.load_checkpoint`) and an
image is prepared exactly as for training and prediction: :func:`~defectlite.data.transforms.to_uint8`
then :func:`~defectlite.data.transforms.normalize` with the card's input size, channels, mean and std.
"""

from __future__ import annotations

import io
import logging
import threading
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import Image
from torch import nn

from defectlite.data.transforms import ImageSource, decode, normalize, to_uint8
from defectlite.errors import CheckpointError, ConfigError
from defectlite.utils import atomic_write

log = logging.getLogger(__name__)

FEATURE_CONTAINERS = ("blocks", "stages", "features", "layers")  # attribute names holding a model's blocks, in order


@dataclass(frozen=True)
class Explanation:
    """Grad-CAM of one image for one class.

    Attributes:
        label: the class explained (the target of Grad-CAM).
        index: its index in the card's classes.
        probability: softmax probability of ``label``, in [0, 1].
        predicted: the class the model predicts for the image.
        cam: float32 (H, W) in [0, 1] at the model's input size; 1 = most important for ``label``.
        image: the decoded image (grey or RGB as the model sees it), at its own size.
        layer: name of the module Grad-CAM used.
    """

    label: str
    index: int
    probability: float
    predicted: str
    cam: np.ndarray
    image: Image.Image
    layer: str


def _spatial_producers(model: nn.Module, input_shape: Sequence[int]) -> list[tuple[str, nn.Module]]:
    """Modules in the order their forward finished, keeping those returning a (N, C, H, W) map with H * W > 1."""
    seen: list[tuple[str, nn.Module]] = []
    hooks = []
    for name, m in model.named_modules():
        if m is model:
            continue

        def hook(mod, _inp, out, name=name):
            if isinstance(out, torch.Tensor) and out.ndim == 4 and out.shape[2] * out.shape[3] > 1:
                seen.append((name, mod))

        hooks.append(m.register_forward_hook(hook))
    try:
        with torch.no_grad():
            model.eval()(torch.zeros(1, *input_shape))
    finally:
        for h in hooks:
            h.remove()
    return seen


def _blocks_of(model: nn.Module) -> list[tuple[str, nn.Module]]:
    """The blocks of a model in order: timm's ``feature_info`` stages, else the children of ``blocks``/``stages``/..."""
    info = getattr(model, "feature_info", None)
    if isinstance(info, list) and info and all(isinstance(i, dict) and "module" in i for i in info):
        return [(i["module"], model.get_submodule(i["module"])) for i in info]
    for attr in FEATURE_CONTAINERS:
        container = getattr(model, attr, None)
        if isinstance(container, (nn.Sequential, nn.ModuleList)) and len(container) > 1:
            return [(f"{attr}.{i}", m) for i, m in enumerate(container)]
    return []


def find_target_layer(model: nn.Module, input_shape: Sequence[int] | None = None) -> tuple[str, nn.Module]:
    """The layer Grad-CAM should use: the last block before global pooling.

    EG-RepVGG and other models with a ``blocks``/``stages`` sequence: its last element; timm models:
    the last entry of ``feature_info`` (e.g. ``layer4`` of a ResNet); any other model: the last
    module, in execution order, whose output is a spatial map (N, C, H, W) with H * W > 1 (found by
    one forward pass on zeros of ``input_shape`` (C, H, W)).

    Raises:
        ConfigError: no such layer (e.g. a model without spatial feature maps), or no
            ``input_shape`` for a model that needs the forward pass.
    """
    blocks = _blocks_of(model)
    if blocks:
        return blocks[-1]
    if input_shape is None:
        raise ConfigError(f"{type(model).__name__}: give input_shape to find its Grad-CAM layer")
    producers = _spatial_producers(model, input_shape)
    if not producers:
        raise ConfigError(f"{type(model).__name__} has no layer with a spatial output for Grad-CAM")
    return producers[-1]


def feature_layers(model: nn.Module, input_shape: Sequence[int] | None = None) -> list[tuple[str, nn.Module]]:
    """The blocks whose outputs the feature grid shows (see :func:`find_target_layer`); at least the target layer."""
    return _blocks_of(model) or [find_target_layer(model, input_shape)]


class Explainer:
    """Grad-CAM and feature maps of one defectlite model; safe to call from several threads (calls are serialised).

    Args:
        model: the PyTorch model (any form; it is put in eval mode).
        card: its checkpoint card (classes, input_size, in_chans, mean, std).
        layer: module name for Grad-CAM (default: :func:`find_target_layer`).

    Raises:
        CheckpointError: the card lacks a needed key, or the model does not output one score per class (a
            detector).
        ConfigError: ``layer`` is not a module of the model.
    """

    def __init__(self, model: nn.Module, card: dict[str, Any], layer: str | None = None) -> None:
        missing = {"classes", "input_size", "in_chans", "mean", "std"} - set(card)
        if missing:
            raise CheckpointError(f"cannot explain: the model card lacks {sorted(missing)}")
        self.model, self.card = model.eval(), card
        self.classes: list[str] = list(card["classes"])
        self.input_size: tuple[int, int] = (int(card["input_size"][0]), int(card["input_size"][1]))
        self.channels = int(card["in_chans"])
        shape = (self.channels, *self.input_size)
        with torch.no_grad():
            probe = model(torch.zeros(1, *shape))
        if not isinstance(probe, torch.Tensor) or tuple(probe.shape) != (1, len(self.classes)):
            got = tuple(probe.shape) if isinstance(probe, torch.Tensor) else type(probe).__name__
            raise CheckpointError(
                f"Grad-CAM explains models with one score per class (N, {len(self.classes)}); "
                f"{card.get('model', 'this model')} ({card.get('task')}) outputs {got}"
            )
        if layer is None:
            self.layer_name, self.layer = find_target_layer(model, shape)
        else:
            try:
                self.layer_name, self.layer = layer, model.get_submodule(layer)
            except AttributeError:
                raise ConfigError(f"{card.get('model', 'model')} has no module {layer!r}") from None
        self.blocks = feature_layers(model, shape)
        self._lock = threading.Lock()

    @classmethod
    def from_checkpoint(cls, path: str | Path, layer: str | None = None) -> Explainer:
        """Load the model of a run folder, an ONNX file's sibling checkpoint, or a checkpoint stem.

        Raises:
            CheckpointError: see :func:`defectlite.runs.resolve_checkpoint` and :mod:`defectlite.compress.restore`.
        """
        from defectlite.compress.restore import load_checkpoint
        from defectlite.runs import is_run, open_run, resolve_checkpoint

        p = Path(path)
        stem = open_run(p).deployed if is_run(p) else p
        model, card = load_checkpoint(resolve_checkpoint(stem))
        return cls(model, card, layer)

    def class_index(self, name: str) -> int:
        """Index of class ``name``.

        Raises:
            ConfigError: unknown class (the message lists the model's classes).
        """
        if name not in self.classes:
            raise ConfigError(f"unknown class {name!r}; the model knows {', '.join(self.classes)}")
        return self.classes.index(name)

    def prepare(self, source: ImageSource, name: str | None = None) -> tuple[Image.Image, np.ndarray, torch.Tensor]:
        """Decode once; return (image as the model sees it, uint8 (C, H, W) input, float32 (1, C, H, W) input).

        Raises:
            DataError: the image cannot be decoded.
        """
        mode = "L" if self.channels == 1 else "RGB"
        img = decode(source, name, mode).convert(mode)
        x8 = to_uint8(img, self.input_size, self.channels, name)
        return img, x8, torch.from_numpy(normalize(x8[None], self.card["mean"], self.card["std"]))

    def explain(self, source: ImageSource, target: str | None = None, name: str | None = None) -> Explanation:
        """Grad-CAM of ``source`` for class ``target`` (default: the predicted class).

        Raises:
            DataError: the image cannot be decoded.
            ConfigError: unknown ``target``.
        """
        from pytorch_grad_cam import GradCAM
        from pytorch_grad_cam.utils.model_targets import ClassifierOutputTarget

        want = None if target is None else self.class_index(target)
        img, _, x = self.prepare(source, name)
        with self._lock, torch.enable_grad():
            cam = GradCAM(model=self.model, target_layers=[self.layer])
            try:  # targets=None: Grad-CAM of the predicted class
                heat = cam(input_tensor=x, targets=None if want is None else [ClassifierOutputTarget(want)])[0]
                logits = cam.outputs.detach()
            finally:
                cam.activations_and_grads.release()
        probs = torch.softmax(logits, 1)[0]
        index = int(probs.argmax()) if want is None else want
        return Explanation(
            label=self.classes[index],
            index=index,
            probability=float(probs[index]),
            predicted=self.classes[int(probs.argmax())],
            cam=np.asarray(heat, dtype=np.float32),
            image=img,
            layer=self.layer_name,
        )

    def feature_maps(self, source: ImageSource, name: str | None = None) -> tuple[np.ndarray, list[tuple[str, Any]]]:
        """The input uint8 (C, H, W) and each block's output (name, float32 (C_b, H_b, W_b)), shallow to deep.

        Raises:
            DataError: the image cannot be decoded.
        """
        _, x8, x = self.prepare(source, name)
        maps: list[tuple[str, np.ndarray]] = []
        with self._lock:
            hooks = [
                m.register_forward_hook(lambda _m, _i, out, n=n: maps.append((n, out[0].detach().float().numpy())))
                for n, m in self.blocks
            ]
            try:
                with torch.no_grad():
                    self.model(x)
            finally:
                for h in hooks:
                    h.remove()
        return x8, maps


def overlay(expl: Explanation, *, max_side: int = 512, image_weight: float = 0.5) -> np.ndarray:
    """The Grad-CAM heat map (JET colours) blended over the image, uint8 (H, W, 3) RGB.

    The image keeps its aspect ratio and is shrunk to ``max_side`` pixels at most (never below the
    model's input size); the CAM is resized to it (bilinear). ``image_weight`` in [0, 1] is the
    image's share of the blend.
    """
    from pytorch_grad_cam.utils.image import show_cam_on_image

    img = expl.image.convert("RGB")
    h_in, w_in = expl.cam.shape
    side = max(max_side, h_in, w_in)
    if max(img.size) > side:
        img.thumbnail((side, side), Image.Resampling.BILINEAR)
    if img.size[0] < w_in or img.size[1] < h_in:
        img = img.resize((max(img.size[0], w_in), max(img.size[1], h_in)), Image.Resampling.BILINEAR)
    mask = np.asarray(Image.fromarray(expl.cam, mode="F").resize(img.size, Image.Resampling.BILINEAR))
    rgb = np.asarray(img, dtype=np.float32) / 255.0
    return show_cam_on_image(rgb, np.clip(mask, 0.0, 1.0), use_rgb=True, image_weight=image_weight)


def side_by_side(expl: Explanation, *, max_side: int = 512, gap: int = 4) -> np.ndarray:
    """The image as the model sees it and its Grad-CAM overlay next to each other, uint8 (H, 2 W + gap, 3): the
    defect stays visible beside the heat map that covers it."""
    blend = overlay(expl, max_side=max_side)
    h, w = blend.shape[:2]
    plain = np.asarray(expl.image.convert("RGB").resize((w, h), Image.Resampling.BILINEAR))
    out = np.full((h, 2 * w + gap, 3), 255, np.uint8)
    out[:, :w], out[:, w + gap :] = plain, blend
    return out


def png_bytes(rgb: np.ndarray) -> bytes:
    """Encode uint8 (H, W, 3) or (H, W) as PNG."""
    buf = io.BytesIO()
    Image.fromarray(rgb).save(buf, format="PNG")
    return buf.getvalue()


def feature_grid_png(image: np.ndarray, maps: Sequence[tuple[str, np.ndarray]], *, per_block: int = 6) -> bytes:
    """A PNG grid: one row per block, the input then the ``per_block`` channels of highest mean activation.

    Args:
        image: the model input, uint8 (C, H, W).
        maps: (block name, float32 (C_b, H_b, W_b)) per block, as from :meth:`Explainer.feature_maps`.
        per_block: channels shown per block (each map scaled to its own min..max).
    """
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    cols = per_block + 1
    fig = Figure(figsize=(1.4 * cols, 1.5 * max(len(maps), 1)))
    FigureCanvasAgg(fig)
    axes = fig.subplots(max(len(maps), 1), cols, squeeze=False)
    shown = image[0] if image.shape[0] == 1 else image.transpose(1, 2, 0)
    for r, (name, fmap) in enumerate(maps):
        axes[r][0].imshow(shown, cmap="gray")
        axes[r][0].set_ylabel(f"{name}\n{fmap.shape[0]}x{fmap.shape[1]}x{fmap.shape[2]}", fontsize=7)
        top = np.argsort(-fmap.mean(axis=(1, 2)))[:per_block]
        for c in range(1, cols):
            if c - 1 < len(top):
                axes[r][c].imshow(fmap[top[c - 1]], cmap="viridis")
                axes[r][c].set_title(f"ch {top[c - 1]}", fontsize=7)
    for ax in axes.flat:
        ax.set_xticks([])
        ax.set_yticks([])
    fig.suptitle("feature maps per block (channels of highest mean activation)", fontsize=9)
    fig.tight_layout()
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=100)
    return buf.getvalue()


def write_png(path: str | Path, data: bytes) -> Path:
    """Write PNG bytes atomically; returns the path."""
    return atomic_write(path, lambda p: p.write_bytes(data))
