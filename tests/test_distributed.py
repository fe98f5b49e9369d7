"""Data-parallel training: the sharded batches reproduce one process's batch order, DDP over 2 processes equals
one process on the whole batch, and `defectlite train --nproc 2` makes a run that loads, agrees across ranks and
resumes."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from torch.utils.data import TensorDataset

from defectlite.compress.restore import load_checkpoint
from defectlite.train.distributed import loader

HERE = Path(__file__).parent
ENV = {**os.environ, "PYTHONPATH": os.pathsep.join(sys.path), "OMP_NUM_THREADS": "1"}


def test_rank_chunks_reproduce_the_single_process_batches():
    ds = TensorDataset(torch.arange(100))
    for epochs in range(3):
        g1, g2 = torch.Generator().manual_seed(7), torch.Generator().manual_seed(7)
        for _ in range(epochs + 1):  # the generator advances per epoch the same way in both
            whole = [b[0].tolist() for b in loader(ds, 16, g1)]
            g_state = g2.get_state()
            parts = []
            for rank in (0, 1):
                g2.set_state(g_state)
                parts.append([b[0].tolist() for b in loader(ds, 16, g2, (rank, 2))])
        assert len(whole) == 6 and [a + b for a, b in zip(*parts)] == whole


def test_ddp_on_two_processes_equals_one_process_on_the_whole_batch(tmp_path):
    one = subprocess.run([sys.executable, str(HERE / "ddp_toy.py"), str(tmp_path / "one"), "16"], env=ENV)
    assert one.returncode == 0
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2",
           str(HERE / "ddp_toy.py"), str(tmp_path / "two"), "16"]  # fmt: skip
    assert subprocess.run(cmd, env=ENV).returncode == 0
    a, b = (torch.load(tmp_path / d / "final.pt") for d in ("one", "two"))
    assert max(float((a[k] - b[k]).abs().max()) for k in a) <= 1e-6
    digests = json.loads((tmp_path / "two" / "ddp.json").read_text())
    assert digests["world_size"] == 2 and len(set(digests["param_digests"])) == 1


@pytest.mark.slow
def test_train_nproc_2_makes_a_run_that_loads_agrees_and_resumes(neu_small, tmp_path):
    run = tmp_path / "ddp"
    args = [sys.executable, "-m", "defectlite.cli.main", "-q", "train", "--data", str(neu_small), "--out", str(run),
            "--epochs", "2", "--set", "teacher=null", "--set", "data.input_size=[32, 32]", "--set", "profile.runs=2",
            "--set", "profile.throughput_runs=1", "--set", "student.optim.batch_size=16"]  # fmt: skip
    proc = subprocess.run([*args, "--nproc", "2"], env=ENV, capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr[-2000:]
    model, card = load_checkpoint(run / "model")
    assert card["num_classes"] == 6
    ddp = json.loads((run / "student" / "ddp.json").read_text())
    assert ddp["world_size"] == 2 and len(set(ddp["param_digests"])) == 1
    assert json.loads((run / "report.json").read_text())["test"]["n"] == 12
    again = subprocess.run([sys.executable, "-m", "defectlite.cli.main", "-q", "train", "--resume", str(run),
                            "--nproc", "2"], env=ENV, capture_output=True, text=True)  # fmt: skip
    assert again.returncode == 0, again.stderr[-2000:]
