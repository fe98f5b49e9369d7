"""Focal / mean ensembles (WeldNet paper Eq. 2) and the ensemble-distillation objectives."""

from __future__ import annotations

import json
import shutil

import pytest
import torch
from safetensors.torch import load_file
from torch import nn

from defectlite.data.splits import subsample_train
from defectlite.tasks.classify.ensemble import Ensemble, PseudoLabel, combine_probs
from defectlite.tasks.classify.objectives import LogitDistill


def test_focal_ensemble_matches_equation_2():
    p = torch.tensor([[[0.9, 0.1]], [[0.4, 0.6]], [[0.45, 0.55]]])  # 3 members, 1 image, 2 classes
    mean = combine_probs(p, "mean")
    assert torch.allclose(mean, torch.tensor([[1.75 / 3, 1.25 / 3]]))
    assert mean.argmax(1).item() == 0
    y = [((0.9**2 + 0.4**2 + 0.45**2) ** 0.5) / 3, ((0.1**2 + 0.6**2 + 0.55**2) ** 0.5) / 3]  # Eq. 2, k = 2
    focal = combine_probs(p, "focal", k=2)
    assert torch.allclose(focal, torch.tensor([[y[0] / sum(y), y[1] / sum(y)]]))
    assert torch.allclose(combine_probs(p, "focal", k=1), mean)  # k = 1 is the mean ensemble
    with pytest.raises(ValueError):
        combine_probs(p, "median")


class _Fixed(nn.Module):
    def __init__(self, logits):
        super().__init__()
        self.logits = torch.tensor(logits)

    def forward(self, x):
        return self.logits.expand(len(x), -1)


def test_ensemble_module_is_a_teacher_like_any_other():
    members = [_Fixed([2.0, 0.0, -1.0]), _Fixed([0.0, 1.0, 0.0])]
    ens = Ensemble(members, "focal", 2.0)
    x = torch.zeros(4, 1, 8, 8)
    probs = torch.stack([torch.softmax(m(x), 1) for m in members])
    assert torch.allclose(torch.softmax(ens(x), 1), combine_probs(probs, "focal", 2.0), atol=1e-6)
    labels = torch.tensor([0, 1, 2, 0])
    student = torch.randn(4, 3)
    kd = LogitDistill(ens, temperature=4.0, alpha=0.5)(student, x, labels)
    assert torch.isfinite(kd["loss"])
    hard = PseudoLabel(ens, alpha=0.0)(student, x, labels)
    pseudo = ens(x).argmax(1)
    assert hard["loss"].item() == pytest.approx(nn.functional.cross_entropy(student, pseudo).item(), rel=1e-6)


def test_reduced_training_set_is_stratified_and_keeps_val_test():
    labels = [c for c in range(3) for _ in range(100)]
    splits = (["train"] * 80 + ["val"] * 10 + ["test"] * 10) * 3
    keep = subsample_train(labels, splits, 0.1, seed=0)
    kept_train = [y for y, s, k in zip(labels, splits, keep) if k and s == "train"]
    assert sorted(kept_train) == [0] * 8 + [1] * 8 + [2] * 8
    assert all(k for s, k in zip(splits, keep) if s != "train")
    assert keep == subsample_train(labels, splits, 0.1, seed=0)


@pytest.mark.slow
def test_ensemble_run_trains_members_then_distils_and_resumes(neu_small, tmp_path):
    from defectlite.cli.main import main

    run = tmp_path / "ens"
    args = ["-q", "train", "--recipe", "neu-ensemble-fast", "--data", str(neu_small), "--out", str(run)]
    sets = {
        "ensemble.members": 2,
        "ensemble.member.model": "eg_repvgg",
        "ensemble.member.optim.epochs": 1,
        "student.model": "repvgg_tiny",
        "student.optim.epochs": 1,
        "data.input_size": "[64, 64]",
        "profile.runs": 5,
        "profile.warmup": 1,
        "profile.throughput_runs": 1,
    }
    assert main([*args, *[a for k, v in sets.items() for a in ("--set", f"{k}={v}")]]) == 0
    report = json.loads((run / "report.json").read_text())
    assert set(report["test_all"]) == {"member0", "member1", "mean_ensemble", "focal_ensemble", "student"}
    members = [json.loads((run / f"member{i}" / "best.json").read_text()) for i in (0, 1)]
    assert [m["model"] for m in members] == ["eg_repvgg", "eg_repvgg"]  # the member stage, not the student's
    assert json.loads((run / "student" / "best.json").read_text())["model"] == "repvgg_tiny"
    # members differ (own seed, data order, augmentation)
    w0, w1 = (load_file(run / f"member{i}" / "best.safetensors") for i in (0, 1))
    assert any(not torch.equal(w0[k], w1[k]) for k in w0)
    # an interrupted run resumes: finished members are reused, the student is trained again
    before = (run / "member0" / "metrics.csv").read_text()
    shutil.rmtree(run / "student")
    (run / "report.json").unlink()
    assert main(["-q", "train", "--resume", str(run)]) == 0
    assert (run / "member0" / "metrics.csv").read_text() == before
    assert (run / "student" / "best.json").is_file() and (run / "report.json").is_file()
    # the library schedules members in parallel processes (``--jobs``): a missing member is trained again, a
    # finished one is left as it is
    from defectlite.pipeline.parallel import train_members_in_parallel
    from defectlite.runs import open_run

    shutil.rmtree(run / "member1")
    train_members_in_parallel(open_run(run), 2)
    assert (run / "member0" / "metrics.csv").read_text() == before
    assert json.loads((run / "member1" / "best.json").read_text())["model"] == "eg_repvgg"
