"""Ensembles and the ensemble-distillation of the WeldNet paper (weldnet-ensemble-distillation.md).

- Mean ensemble: the average of the members' softmax outputs.
- Focal ensemble (Eq. 2): y = (1/N) (sum_i y_i^k)^(1/k), k = 2 in the paper; confident members
  weigh more. We renormalise y to sum to 1 so it is a distribution (argmax is unchanged).
- Ensemble-distillation (Algorithm 1): the frozen ensemble labels the training images and a single
  student learns from those labels, as soft targets at a temperature (:class:`LogitDistill` with an
  :class:`Ensemble` teacher, which returns log-probabilities as its "logits") or as hard
  pseudo-labels (:class:`PseudoLabel`), optionally mixed with the true labels.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import Tensor, nn

COMBINE = ("mean", "focal")


def combine_probs(probs: Tensor, method: str = "focal", k: float = 2.0) -> Tensor:
    """Combine member probabilities.

    Args:
        probs: (M, N, K) softmax outputs of M members.
        method: ``mean`` or ``focal`` (WeldNet paper Eq. 2).
        k: focal exponent (> 0; k = 1 is the mean ensemble).

    Returns:
        (N, K) probabilities summing to 1 per row.

    Raises:
        ValueError: unknown method or k <= 0.
    """
    if method not in COMBINE:
        raise ValueError(f"unknown ensemble combination {method!r}; choose one of {', '.join(COMBINE)}")
    if method == "mean":
        y = probs.mean(0)
    else:
        if k <= 0:
            raise ValueError(f"focal ensemble exponent k must be > 0, got {k}")
        y = probs.pow(k).sum(0).pow(1.0 / k) / probs.shape[0]
    return y / y.sum(dim=1, keepdim=True)


class Ensemble(nn.Module):
    """Frozen members combined into one classifier; returns log-probabilities (N, K).

    ``softmax(forward(x)) == combine_probs(...)``, so it can stand wherever logits are expected
    (evaluation, :class:`defectlite.tasks.classify.objectives.LogitDistill`, ONNX export).

    Args:
        members: models mapping (N, C, H, W) to logits (N, K).
        method: ``mean`` or ``focal``.
        k: focal exponent.
    """

    def __init__(self, members: Sequence[nn.Module], method: str = "focal", k: float = 2.0) -> None:
        super().__init__()
        if not members:
            raise ValueError("an ensemble needs at least one member")
        self.members = nn.ModuleList(members).eval().requires_grad_(False)
        self.method, self.k = method, k
        combine_probs(torch.full((1, 1, 2), 0.5), method, k)  # validate settings early

    def train(self, mode: bool = True) -> Ensemble:
        return super().train(False)  # members stay in eval mode

    def forward(self, x: Tensor) -> Tensor:
        probs = torch.stack([F.softmax(m(x).float(), dim=1) for m in self.members])
        return combine_probs(probs, self.method, self.k).clamp_min(1e-12).log()


class PseudoLabel(nn.Module):
    """Cross-entropy on the teacher's hard labels, optionally mixed with the true labels.

    loss = (1 - alpha) * CE(student, argmax teacher) + alpha * CE(student, y)   (Algorithm 1, L(y_s, y_e))

    Args:
        teacher: frozen module returning logits or log-probabilities (N, K).
        alpha: weight of the true labels in [0, 1] (0 = pseudo-labels only, as in the paper).
    """

    def __init__(self, teacher: nn.Module, alpha: float = 0.0, label_smoothing: float = 0.0) -> None:
        super().__init__()
        if not 0.0 <= alpha <= 1.0:
            raise ValueError(f"alpha must be in [0, 1], got {alpha}")
        self.teacher = teacher.eval().requires_grad_(False)
        self.alpha, self.label_smoothing = alpha, label_smoothing

    def train(self, mode: bool = True) -> PseudoLabel:
        super().train(mode)
        self.teacher.eval()
        return self

    def forward(self, logits: Tensor, images: Tensor, labels: Tensor) -> dict[str, Tensor]:
        with torch.no_grad():
            pseudo = self.teacher(images).argmax(1)
        logits = logits.float()
        ce_pseudo = F.cross_entropy(logits, pseudo, label_smoothing=self.label_smoothing)
        ce = F.cross_entropy(logits, labels, label_smoothing=self.label_smoothing)
        loss = (1 - self.alpha) * ce_pseudo + self.alpha * ce
        return {"loss": loss, "ce": ce, "ce_pseudo": ce_pseudo}
