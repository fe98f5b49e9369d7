"""Training objectives. Each returns a dict of losses; the loop only reads ``out["loss"]``."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn


class CrossEntropy(nn.Module):
    """Cross-entropy on the labels, optionally label-smoothed.

    Shapes: logits (N, K), labels (N,) int64.
    """

    def __init__(self, label_smoothing: float = 0.0) -> None:
        super().__init__()
        self.label_smoothing = label_smoothing

    def forward(self, logits: Tensor, images: Tensor, labels: Tensor) -> dict[str, Tensor]:
        ce = F.cross_entropy(logits.float(), labels, label_smoothing=self.label_smoothing)
        return {"loss": ce, "ce": ce}


def kd_loss(student_logits: Tensor, teacher_logits: Tensor, temperature: float) -> Tensor:
    """T^2 * KL(softmax(teacher / T) || softmax(student / T)), averaged over the batch.

    Source: Xie & Shen 2022, Eq. 10 and 12; the T^2 factor keeps gradient magnitudes comparable
    across temperatures (Hinton et al. 2015).

    Shapes: both (N, K) logits; returns a scalar.
    """
    t = temperature
    log_p_s = F.log_softmax(student_logits.float() / t, dim=1)
    log_p_t = F.log_softmax(teacher_logits.float() / t, dim=1)
    return F.kl_div(log_p_s, log_p_t, reduction="batchmean", log_target=True) * t * t


class LogitDistill(nn.Module):
    """(1 - alpha) * CE(student, y) + alpha * T^2 * KL(softmax(teacher / T) || softmax(student / T)).

    Source: Xie & Shen 2022, Eq. 11-13 (T = 7, alpha = 0.3); Hinton et al. 2015.

    Args:
        teacher: frozen module returning logits (N, K) for the same images; kept in eval mode and
            run without gradients (under the same autocast as the student).
        temperature: T > 0.
        alpha: weight of the distillation term, in [0, 1].
        label_smoothing: applied to the CE term.

    Raises:
        ValueError: temperature <= 0 or alpha outside [0, 1].
    """

    def __init__(self, teacher: nn.Module, temperature: float = 7.0, alpha: float = 0.3, label_smoothing: float = 0.0):
        super().__init__()
        if temperature <= 0:
            raise ValueError(f"temperature must be > 0, got {temperature}")
        if not 0.0 <= alpha <= 1.0:
            raise ValueError(f"alpha must be in [0, 1], got {alpha}")
        self.teacher = teacher.eval().requires_grad_(False)
        self.temperature, self.alpha, self.label_smoothing = temperature, alpha, label_smoothing

    def train(self, mode: bool = True) -> LogitDistill:
        super().train(mode)
        self.teacher.eval()  # the teacher's BN statistics never move
        return self

    def forward(self, logits: Tensor, images: Tensor, labels: Tensor) -> dict[str, Tensor]:
        with torch.no_grad():
            teacher_logits = self.teacher(images)
        ce = F.cross_entropy(logits.float(), labels, label_smoothing=self.label_smoothing)
        kd = kd_loss(logits, teacher_logits, self.temperature)
        return {"loss": (1 - self.alpha) * ce + self.alpha * kd, "ce": ce, "kd": kd}
