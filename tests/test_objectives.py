"""The distillation loss of Xie & Shen 2022 (Eq. 11-13) against a hand computation."""

from __future__ import annotations

import math

import pytest
import torch
from torch import nn

from defectlite.tasks.classify.objectives import LogitDistill, kd_loss


def _softmax(z, t):
    e = [math.exp(v / t) for v in z]
    s = sum(e)
    return [v / s for v in e]


def test_kd_loss_equals_hand_computation():
    student = [[2.0, 0.5, -1.0], [0.1, 0.2, 0.3]]
    teacher = [[3.0, -0.5, 0.0], [-1.0, 2.0, 0.5]]
    t = 7.0
    kl = 0.0
    for zs, zt in zip(student, teacher):
        ps, pt = _softmax(zs, t), _softmax(zt, t)
        kl += sum(q * (math.log(q) - math.log(p)) for q, p in zip(pt, ps))  # Eq. 12
    expected = t * t * kl / 2
    got = kd_loss(torch.tensor(student), torch.tensor(teacher), t).item()
    assert got == pytest.approx(expected, rel=1e-5)


class _Fixed(nn.Module):
    def __init__(self, logits):
        super().__init__()
        self.logits = torch.tensor(logits)

    def forward(self, x):
        return self.logits


def test_logit_distill_weights_ce_and_kd_by_alpha():
    student = torch.tensor([[2.0, 0.5, -1.0], [0.1, 0.2, 0.3]])
    teacher = [[3.0, -0.5, 0.0], [-1.0, 2.0, 0.5]]
    labels = torch.tensor([0, 2])
    ce = -(math.log(_softmax([2.0, 0.5, -1.0], 1)[0]) + math.log(_softmax([0.1, 0.2, 0.3], 1)[2])) / 2  # Eq. 13
    kd = kd_loss(student, torch.tensor(teacher), 7.0).item()
    out = LogitDistill(_Fixed(teacher), temperature=7.0, alpha=0.3)(student, torch.zeros(2), labels)
    assert out["ce"].item() == pytest.approx(ce, rel=1e-5)
    assert out["loss"].item() == pytest.approx(0.3 * kd + 0.7 * ce, rel=1e-5)  # Eq. 11


def test_logit_distill_rejects_bad_settings():
    with pytest.raises(ValueError, match="temperature"):
        LogitDistill(nn.Identity(), temperature=0)
    with pytest.raises(ValueError, match="alpha"):
        LogitDistill(nn.Identity(), alpha=1.5)
