"""The README's path through the CLI: train (one epoch each) -> export -> predict, on a real NEU subset."""

from __future__ import annotations

import argparse
import csv
import json
import subprocess
import sys

import pytest

from defectlite.cli.main import COMMANDS, build_parser, main
from defectlite.compress.reparam import reparameterize
from defectlite.evaluate.profile import count_params
from defectlite.models import create_model


def test_help_lists_every_command(capsys):
    with pytest.raises(SystemExit) as e:
        main(["--help"])
    assert e.value.code == 0
    out = capsys.readouterr().out
    listed = {line.split()[0] for line in out.split("{")[1].split("}")[0].split(",")} if "{" in out else set()
    for cmd in COMMANDS:
        assert f"    {cmd} " in out or cmd in listed, cmd
    assert len(COMMANDS) == 11


def _subparsers():
    parser = build_parser()
    action = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction))
    return action.choices


def test_every_option_has_help_and_shows_its_default_once():
    for name, sub in _subparsers().items():
        for action in sub._actions:
            if action.dest in ("help",):
                continue
            assert action.help, f"{name} {action.option_strings or action.dest} has no help"
        text = sub.format_help()
        assert "(default: None)" not in text, name
        for block in text.split("\n  -")[1:]:
            assert block.count("default") <= 1 or "(default:" not in block, f"{name}: {block[:80]}"


def test_verbosity_flags_work_after_the_verb(capsys):
    assert main(["models", "-q", "eg_repvgg"]) == 0
    assert main(["-v", "recipes"]) == 0
    assert "eg_repvgg" in capsys.readouterr().out


def test_compare_folders_never_collide():
    from defectlite.cli.compare import default_out

    a = default_out("neu-compare-fast", ["eg_repvgg", "pdmsnet"], [])
    assert a != default_out("neu-pdmsnet-fast", ["eg_repvgg", "pdmsnet"], [])
    assert a != default_out("neu-compare-fast", ["eg_repvgg"], [])
    assert a != default_out("neu-compare-fast", ["eg_repvgg", "pdmsnet"], ["seed=1"])
    assert a == default_out("neu-compare-fast", ["eg_repvgg", "pdmsnet"], [])  # the same comparison resumes


@pytest.mark.slow
def test_train_export_predict(neu_small, tmp_path):
    run = tmp_path / "run"
    args = [
        "train",
        "--data",
        str(neu_small),
        "--out",
        str(run),
        "--epochs",
        "1",
        "--set",
        "data.input_size=[96, 96]",
        "--set",
        "profile.runs=20",
        "--set",
        "profile.warmup=5",
        "--set",
        "profile.throughput_runs=2",
    ]
    assert main(["-q", *args]) == 0
    for name in (
        "config.yaml",
        "splits.csv",
        "report.md",
        "report.json",
        "model.onnx",
        "model.safetensors",
        "confusion_test.png",
        "confusion_test.csv",
        "student/best.safetensors",
        "student/metrics.csv",
    ):
        assert (run / name).is_file(), name
    report = json.loads((run / "report.json").read_text())
    assert report["test"]["n"] == 12 and report["data"]["counts"] == {"train": 96, "val": 12, "test": 12}
    assert report["export"]["max_abs_diff"] <= 1e-4
    deployed = reparameterize(create_model(report["model"], num_classes=6, in_chans=1))  # the default recipe's
    assert report["profile"]["params_deployed"] == count_params(deployed) == 112_822  # cpu_repnet_m, fused
    assert "Paper vs this run" in (run / "report.md").read_text()
    # a finished run resumes to the same split and the same deployed model
    split_before = (run / "splits.csv").read_text()
    assert main(["-q", "train", "--resume", str(run)]) == 0
    assert (run / "splits.csv").read_text() == split_before

    assert main(["-q", "export", str(run)]) == 0
    bad = tmp_path / "imgs" / "broken.jpg"
    bad.parent.mkdir()
    bad.write_bytes(b"\xff\xd8\xff broken")
    out_csv = tmp_path / "pred.csv"
    proc = subprocess.run(
        [
            sys.executable,
            "-m",
            "defectlite.cli.main",
            "predict",
            str(run / "model.onnx"),
            str(neu_small),
            str(bad.parent),
            "--csv",
            str(out_csv),
        ],
        capture_output=True,
        text=True,
    )
    assert proc.returncode == 1  # one unreadable file
    lines = proc.stdout.strip().splitlines()
    assert len(lines) == 120
    classes = report["data"]["classes"]
    for line in lines:
        path, label, prob = line.split("\t")
        assert label in classes and 0 < float(prob) <= 1
    assert "broken.jpg\tERROR" in proc.stderr
    rows = list(csv.DictReader(out_csv.open()))
    assert len(rows) == 121 and rows[-1]["error"]


def test_train_reports_missing_data_clearly(tmp_path, capsys):
    assert main(["-q", "train", "--data", str(tmp_path / "nowhere"), "--out", str(tmp_path / "r")]) == 2
    assert "data folder not found" in capsys.readouterr().err
