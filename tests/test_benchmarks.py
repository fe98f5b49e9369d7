"""The benchmark scripts' own safety: a run never replaces committed results of another experiment."""

from __future__ import annotations

import importlib.util
import shutil
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


def load_script(name: str):
    spec = importlib.util.spec_from_file_location(name, ROOT / "benchmarks" / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_ensembles_refuses_to_overwrite_another_models_results(tmp_path):
    ens = load_script("ensembles")
    committed = ROOT / "benchmarks" / "results" / "ensembles_casting_f1.json"
    target = tmp_path / committed.name
    shutil.copyfile(committed, target)
    before = target.read_bytes()
    argv = ["--seeds", "1", "--fractions", "1.0", "--datasets", "casting", "--models", "weldnet", "--epochs", "10"]
    argv += ["--set", f"data.path={tmp_path / 'no-data'}"]  # were the guard missing, training would fail fast
    with pytest.raises(SystemExit, match="ensembles_casting_f1.json holds other results.*--out DIR"):
        ens.main([*argv, "--out", str(tmp_path), "--runs", str(tmp_path / "runs")])
    assert target.read_bytes() == before  # nothing written
    assert not (tmp_path / "runs").exists()  # and nothing trained


def test_ensembles_lets_the_same_experiment_update_its_file():
    ens = load_script("ensembles")
    results = ROOT / "benchmarks" / "results"
    # the README's commands: more seeds of the same experiment may rewrite the committed files, old schema included
    ens.refuse_overwrite(results / "ensembles_casting_f1.json", {ens.group_key("casting", "eg_repvgg", 1.0, 10, [])})
    ens.refuse_overwrite(results / "ensembles_neu_f0.1.json", {ens.group_key("neu", "eg_repvgg", 0.1, None, [])})
    other_size = {ens.group_key("neu", "eg_repvgg", 0.1, None, ["data.input_size=[96,96]"])}
    with pytest.raises(SystemExit, match="ensembles_neu_f0.1.json"):
        ens.refuse_overwrite(results / "ensembles_neu_f0.1.json", other_size)
