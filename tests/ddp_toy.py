"""A BN-free toy trained by defectlite's loop, alone or under torchrun (tests/test_distributed.py runs both).

python tests/ddp_toy.py OUT BATCH                     # one process
torchrun --standalone --nproc_per_node 2 tests/ddp_toy.py OUT BATCH
"""

from __future__ import annotations

import sys
from pathlib import Path

import torch
from torch import nn
from torch.utils.data import TensorDataset

from defectlite.runs import StageFiles
from defectlite.train import distributed as dist
from defectlite.train.config import OptimCfg
from defectlite.train.loop import fit


class Data:
    score_name, train_size = "val_score", 64

    def __init__(self):
        g = torch.Generator().manual_seed(0)
        self.x, self.y = torch.randn(64, 1, 8, 8, generator=g), torch.randn(64, 2, generator=g)
        self.ds = TensorDataset(self.x, self.y)

    def start_epoch(self, epoch, epochs):
        pass

    def batches(self, batch_size, generator, shard=(0, 1)):
        return dist.loader(self.ds, batch_size, generator, shard)

    def inputs(self, batch, device):
        return batch[0].to(device), batch[1].to(device), None

    def batch_stats(self, outputs, truth):
        return {}

    @torch.no_grad()
    def validate(self, model, amp):
        err = float(((model(self.x) - self.y) ** 2).mean())
        return {"val_loss": err, "val_score": -err}

    def clean_batches(self, device):
        yield self.x


class MSE(nn.Module):
    def forward(self, outputs, inputs, target):
        return {"loss": ((outputs - target) ** 2).mean()}


def main(out: str, batch: int) -> None:
    dist.init_from_env("cpu")
    torch.manual_seed(0)
    model = nn.Sequential(nn.Conv2d(1, 4, 3), nn.ReLU(), nn.Flatten(), nn.Linear(4 * 6 * 6, 2))
    cfg = OptimCfg(epochs=3, batch_size=batch, lr=0.05, warmup_epochs=0, ema_decay=0.0, amp="off")
    card = {"model": "toy", "num_classes": 2, "in_chans": 1}
    fit(model, Data(), MSE(), cfg, StageFiles(Path(out)), seed=0, card=card, progress=False, device="cpu")
    if dist.world().main:
        torch.save({k: v for k, v in model.state_dict().items()}, Path(out) / "final.pt")


if __name__ == "__main__":
    main(sys.argv[1], int(sys.argv[2]))
    dist.exit_worker(0)
