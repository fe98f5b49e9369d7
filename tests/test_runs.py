"""The run contract: run.json / config.yaml say everything a run was started with; every command reads a run
through defectlite.runs; --resume restores it exactly and refuses changes; a kill -9 at any point resumes to the
same weights as an uninterrupted run."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from defectlite.cli.main import main
from defectlite.errors import ConfigError, DataError
from defectlite.pipeline import train_run
from defectlite.pipeline.context import open_context
from defectlite.runs import create_run, open_run
from defectlite.train.config import apply_overrides, load_recipe
from defectlite.train.loop import read_history

TINY = [
    "--set", "data.input_size=[32, 32]",
    "--set", "profile.runs=3", "--set", "profile.warmup=1", "--set", "profile.throughput_runs=1",
    "--set", "profile.throughput_batch=4",
]  # fmt: skip


def tiny_train(data: Path, out: Path, *extra: str) -> int:
    return main(["-q", "train", "--data", str(data), "--out", str(out), *TINY, *extra])


@pytest.fixture(scope="module")
def teacher_run(neu_small, tmp_path_factory) -> Path:
    """A 1-epoch student-only run: the teacher of the runs below."""
    run = tmp_path_factory.mktemp("teacher") / "run"
    assert tiny_train(neu_small, run, "--set", "teacher=null", "--epochs", "1") == 0
    return run


def test_run_manifest_records_task_stage_and_teacher(teacher_run, neu_small, tmp_path):
    run = open_run(teacher_run)
    assert run.task == "classify" and run.deployed_stage == "student" and run.teacher is None
    student = tmp_path / "student"
    recipe = ["--recipe", "neu-kd-eg-repvgg-fast"]  # a recipe with a teacher stage of its own
    assert tiny_train(neu_small, student, *recipe, "--teacher", str(teacher_run), "--epochs", "1") == 0
    src = open_run(student).teacher
    assert src.kind == "checkpoint" and Path(src.path) == (teacher_run / "student" / "best").resolve()
    # resuming a finished run restores its teacher: no teacher stage of its own is trained (main trained one)
    assert main(["-q", "train", "--resume", str(student)]) == 0
    assert not (student / "teacher").exists()
    meta = json.loads((student / "run.json").read_text())
    assert meta["argv"][0] == "defectlite" and {"train", "--teacher"} <= set(meta["argv"])


@pytest.mark.parametrize(
    "flags, named",
    [
        (["--set", "student.optim.epochs=5"], "--set"),
        (["--model", "pdmsnet"], "--model"),
        (["--data", "/elsewhere"], "--data"),
        (["--epochs", "3"], "--epochs"),
        (["--teacher", "/some/run"], "--teacher"),
    ],
)
def test_resume_refuses_flags_that_would_change_the_run(teacher_run, capsys, flags, named):
    assert main(["-q", "train", "--resume", str(teacher_run), *flags]) == 2
    err = capsys.readouterr().err
    assert named in err and "exactly as it was started" in err


def test_export_and_prune_follow_the_deployed_stage(neu_small, tmp_path, capsys):
    """An ensemble that is not distilled deploys member0: export and prune must read it (main read student/best)."""
    run = tmp_path / "ens"
    sets = ["--set", "ensemble.distill=false", "--set", "teacher=null", "--epochs", "1"]
    assert (
        tiny_train(neu_small, run, "--recipe", "neu-ensemble-fast", "--model", "eg_repvgg", "--ensemble", "2", *sets)
        == 0
    )
    assert open_run(run).deployed_stage == "member0" and not (run / "student").exists()
    (run / "model.onnx").unlink()
    assert main(["-q", "export", str(run)]) == 0
    assert (run / "model.onnx").is_file()
    # the deployed eg_repvgg has no removable residual blocks: refused before any pruning work
    assert main(["-q", "prune", str(run), "--layers", "2", "--finetune-epochs", "1"]) == 2
    err = capsys.readouterr().err
    assert "removable" in err and "ResNet" in err
    assert not list(run.glob("prune-*"))


KILLER = textwrap.dedent(
    """
    import os, signal, sys
    from defectlite.cli.main import main
    from defectlite.train import loop

    kill_epoch, kill_step = int(os.environ["KILL_EPOCH"]), int(os.environ["KILL_STEP"])
    real = loop.set_lr
    state = {"step": 0, "epoch": -1}

    def set_lr(opt, lr):  # called once per training step: count steps, die mid-epoch like kill -9
        real(opt, lr)
        n = len([1 for _ in open(os.environ["METRICS"])]) - 1 if os.path.exists(os.environ["METRICS"]) else 0
        if n == kill_epoch:
            state["step"] += 1
            if state["step"] > kill_step:
                os.kill(os.getpid(), signal.SIGKILL)

    loop.set_lr = set_lr
    sys.exit(main(sys.argv[1:]))
    """
)


def _train_cmd(data: Path, out: Path, optimizer: str) -> list[str]:
    sets = ["teacher=null", "threads=1", f"student.optim.optimizer={optimizer}", "student.optim.mixup_alpha=0.4",
            "student.optim.ema_decay=0.9", "student.optim.batch_size=16", "student.optim.lr=0.01"]  # fmt: skip
    args = ["-q", "train", "--data", str(data), "--out", str(out), "--epochs", "4", *TINY]
    return args + [a for s in sets for a in ("--set", s)]


@pytest.mark.parametrize("optimizer", ["sgd", "adamw"])
def test_kill9_mid_epoch_then_resume_equals_an_uninterrupted_run(neu_small, tmp_path, optimizer):
    whole, killed = tmp_path / "whole", tmp_path / "killed"
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(sys.path)}
    subprocess.run([sys.executable, "-m", "defectlite.cli.main", *_train_cmd(neu_small, whole, optimizer)],
                   check=True, env=env)  # fmt: skip
    kill_env = {**env, "KILL_EPOCH": "2", "KILL_STEP": "2", "METRICS": str(killed / "student" / "metrics.csv")}
    proc = subprocess.run([sys.executable, "-c", KILLER, *_train_cmd(neu_small, killed, optimizer)], env=kill_env)
    assert proc.returncode == -signal.SIGKILL
    assert len(read_history(killed / "student" / "metrics.csv")) == 2  # epochs 0 and 1 committed, 2 was cut short
    subprocess.run([sys.executable, "-m", "defectlite.cli.main", "-q", "train", "--resume", str(killed)],
                   check=True, env=env)  # fmt: skip
    for name in ("student/best.safetensors", "model.safetensors"):
        a, b = load_file(whole / name), load_file(killed / name)
        assert a.keys() == b.keys()
        assert max(float((a[k].float() - b[k].float()).abs().max()) for k in a) <= 1e-6, name
    rows = read_history(killed / "student" / "metrics.csv")
    assert [r["epoch"] for r in rows] == [0, 1, 2, 3]
    same = read_history(whole / "student" / "metrics.csv")
    assert [r["train_loss"] for r in rows] == [r["train_loss"] for r in same]


@pytest.mark.parametrize("where", ["metrics", "state", "best"])
def test_no_kill_point_loses_or_repeats_a_metrics_row(neu_small, tmp_path, monkeypatch, where):
    """Interrupt at a write of an epoch's commit (metrics.csv, the state, best): resuming leaves exactly one row per
    epoch (main wrote ``last`` before metrics.csv, so a kill between the two lost that epoch's row)."""
    from defectlite.train import loop, state

    target, name = {"metrics": (loop, "write_history"), "state": (state, "save_tensors"),
                    "best": (loop, "write_best")}[where]  # fmt: skip
    real, calls = getattr(target, name), {"n": 0}

    def interrupted(*a, **k):
        calls["n"] += 1
        if calls["n"] == 2:  # the second epoch's write
            raise KeyboardInterrupt
        return real(*a, **k)

    monkeypatch.setattr(target, name, interrupted)
    run = tmp_path / "r"
    assert tiny_train(neu_small, run, "--epochs", "3", "--set", "teacher=null") in (0, 130)
    monkeypatch.setattr(target, name, real)
    assert main(["-q", "train", "--resume", str(run)]) == 0
    assert [r["epoch"] for r in read_history(run / "student" / "metrics.csv")] == [0, 1, 2]
    best = json.loads((run / "student" / "best.json").read_text())
    rows = read_history(run / "student" / "metrics.csv")
    assert best["val_score"] == pytest.approx(max(r["val_acc"] for r in rows), abs=1e-5)


def test_diverged_training_stops_with_a_clear_error_and_keeps_last(neu_small, tmp_path, capsys):
    run = tmp_path / "nan"
    assert tiny_train(neu_small, run, "--set", "teacher=null", "--epochs", "2", "--set", "student.optim.lr=1e30") == 2
    err = capsys.readouterr().err
    assert "diverged" in err and "student" in err and "learning rate" in err
    assert not (run / "model.onnx").exists()


def test_ties_in_validation_score_go_to_the_latest_epoch(neu_small, tmp_path):
    run = tmp_path / "ties"
    assert tiny_train(neu_small, run, "--set", "teacher=null", "--epochs", "4", "--set", "student.optim.lr=1e-9") == 0
    rows = read_history(run / "student" / "metrics.csv")
    top = max(r["val_acc"] for r in rows)
    latest = max(r["epoch"] for r in rows if r["val_acc"] == top)
    assert json.loads((run / "student" / "best.json").read_text())["epoch"] == latest


def test_time_limit_stops_before_an_epoch_that_would_overrun_and_still_deploys(neu_small, tmp_path):
    """A 0.006 s budget: the first epoch always runs (nothing to estimate from), then the next would overrun."""
    run = tmp_path / "timed"
    sets = ["--set", "teacher=null", "--set", "student.optim.time_limit_minutes=1e-4"]
    assert tiny_train(neu_small, run, *sets, "--epochs", "30") == 0
    assert [r["epoch"] for r in read_history(run / "student" / "metrics.csv")] == [0]
    stage = json.loads((run / "report.json").read_text())["stages"]["student"]
    assert (stage["epochs"], stage["epochs_run"], stage["best_epoch"]) == (30, 1, 0)
    assert "| 1 of 30 (time limit) |" in (run / "report.md").read_text()
    assert (run / "model.onnx").is_file()


def test_open_run_refuses_a_folder_that_is_not_a_run(tmp_path):
    with pytest.raises(Exception, match="not a defectlite run folder"):
        open_run(tmp_path)


def test_train_refuses_a_folder_of_other_files_before_writing_anything(neu_small, tmp_path, capsys):
    folder = tmp_path / "reports"
    folder.mkdir()
    for name in ("report.md", "notes.txt", "a.csv", "b.csv"):
        (folder / name).write_text(f"the user's {name}\n")
    assert tiny_train(neu_small, folder, "--set", "teacher=null", "--epochs", "1") == 2
    err = capsys.readouterr().err
    assert f"{folder} already holds files and is not a defectlite run folder" in err
    assert "a.csv, b.csv, notes.txt and 1 more" in err
    assert sorted(p.name for p in folder.iterdir()) == ["a.csv", "b.csv", "notes.txt", "report.md"]
    assert (folder / "report.md").read_text() == "the user's report.md\n"
    afile = tmp_path / "afile"
    afile.write_text("x")
    with pytest.raises(ConfigError, match="exists and is not a folder"):
        create_run(afile, load_recipe("neu-cpu-repnet-fast"))


def test_a_new_run_starts_in_an_empty_folder_or_its_own_run_folder(tmp_path):
    cfg = load_recipe("neu-cpu-repnet-fast")
    (tmp_path / "empty").mkdir()
    create_run(tmp_path / "empty", cfg)  # nothing trained: started again, as before
    assert create_run(tmp_path / "empty", cfg).config_path.is_file()


def test_a_start_that_failed_before_training_leaves_no_split_for_the_next(neu_small, tmp_path):
    run = tmp_path / "run"
    sets = [f"data.path={json.dumps(str(neu_small))}", "data.input_size=[32, 32]", "teacher=null"]
    with pytest.raises(DataError, match="the val and test splits are empty"):
        train_run(apply_overrides(load_recipe("neu-cpu-repnet-fast"), [*sets, "data.split=[1, 0, 0]"]), run,
                  progress=False)  # fmt: skip
    assert (run / "splits.csv").is_file()
    cfg = apply_overrides(load_recipe("neu-cpu-repnet-fast"), [*sets, "data.split=[0.6, 0.2, 0.2]"])
    counts = open_context(create_run(run, cfg), progress=False).data.counts()
    assert counts == {"train": 72, "val": 24, "test": 24}  # the first start's splits.csv had them all in train


def test_bad_config_fails_before_data_or_pytorch(tmp_path):
    code = (
        "import sys; from defectlite.cli.main import main; "
        f"rc = main(['train', '--data', '{tmp_path / 'nowhere'}', '--set', 'student.optim.schedule=cosin']); "
        "print('torch' in sys.modules); sys.exit(rc)"
    )
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert proc.returncode == 2
    assert "did you mean cosine" in proc.stderr and "data folder" not in proc.stderr
    assert proc.stdout.strip() == "False"  # refused before PyTorch (or any data) was loaded


def test_config_errors_name_key_value_and_choices():
    from defectlite.train.config import apply_overrides, load_recipe

    cfg = load_recipe("neu-kd-eg-repvgg-fast")
    for item, words in (
        ("student.optim.schedule=cosin", ["cosine", "multistep"]),
        ("ensemble.combine=foca", ["mean", "focal"]),
        ("ensemble.targets=hrad", ["soft", "hard"]),
        ("student.optim.amp=bf-16", ["auto", "bf16", "off"]),
        ("student.optim.epochs=0", [">= 1"]),
        ("student.optim.lr=0", ["> 0"]),
        ("kd.alpha=1.5", ["<= 1"]),
        ("kd.temperature=-1", ["> 0"]),
        ("student.optim.batch_size=0", [">= 1"]),
        ("student.optim.lr=.nan", ["finite"]),
        ("student.optim.lr=inf", ["finite"]),
    ):
        with pytest.raises(ConfigError) as e:
            apply_overrides(cfg, [item])
        assert item.split("=")[0] in str(e.value) and all(w in str(e.value) for w in words), item
    assert apply_overrides(cfg, ["student.optim.weight_decay=5e-4"]).student.optim.weight_decay == 5e-4
    assert apply_overrides(cfg, ["student.optim.lr=1e-1"]).student.optim.lr == 0.1
    # a member stage the recipe leaves out starts from the student's
    member = apply_overrides(cfg, ["ensemble.member.optim.epochs=3"]).ensemble.member
    assert member.optim.epochs == 3 and member.model == cfg.student.model


def test_epochs_option_scales_every_stage(capsys):
    from defectlite.cli.main import build_parser
    from defectlite.cli.train import build_config

    args = build_parser().parse_args(["train", "--recipe", "neu-kd-eg-repvgg-fast", "--epochs", "8"])
    cfg = build_config(args)
    assert (cfg.teacher.optim.epochs, cfg.student.optim.epochs) == (6, 8)


def test_state_file_holds_the_whole_optimizer_and_rng(neu_small, tmp_path):
    run = tmp_path / "adam"
    assert tiny_train(neu_small, run, "--set", "teacher=null", "--epochs", "1", "--set",
                      "student.optim.optimizer=adamw") == 0  # fmt: skip
    tensors = load_file(run / "student" / "last.safetensors")
    assert any(k.endswith(".exp_avg_sq") for k in tensors) and "rng.torch" in tensors and "rng.numpy" in tensors
    assert all(torch.isfinite(v.float()).all() for k, v in tensors.items() if k.startswith("model."))
