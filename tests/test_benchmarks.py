"""The benchmark scripts' own safety: a run never replaces committed results of another experiment."""

from __future__ import annotations

import importlib.util
import shlex
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


def test_ensembles_readme_commands_may_rewrite_their_committed_files():
    ens = load_script("ensembles")
    lines = [ln.split("#")[0] for ln in (ROOT / "README.md").read_text().splitlines()]
    commands = [shlex.split(ln)[2:] for ln in lines if ln.startswith("python benchmarks/ensembles.py --seeds")]
    assert len(commands) >= 4
    for argv in commands:
        args = ens.parser().parse_args(argv)
        args.out = ROOT / args.out  # the README's commands run from the repository root
        ens.refuse_overwrite(*ens.result_plan(args))  # same experiment: allowed (old schema included)
        args.models = "eg_repvgg" if args.models == "weldnet" else "weldnet"
        path, planned = ens.result_plan(args)
        if path.is_file():
            with pytest.raises(SystemExit, match=path.name):
                ens.refuse_overwrite(path, planned)
