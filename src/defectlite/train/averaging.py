"""Weight averaging for the training loop: EMA (per step, timm) or SWA (per epoch, torch.optim.swa_utils).

The averaged weights are the ones validated and saved as ``best``; the raw weights keep training.
SWA follows Izmailov et al. 2018 (the casting paper's SWA): a constant learning rate over the last
``swa_epochs`` epochs, an equal-weight average of the weights at each of their ends, then batch-norm
statistics recomputed on the (un-augmented) training images.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable

import torch
from torch import Tensor, nn

from defectlite.errors import ConfigError
from defectlite.train.config import OptimCfg


class WeightAverage:
    """EMA or SWA of a model's weights (or nothing, when both are off).

    Args:
        model: the trained model.
        cfg: ``ema_decay > 0`` for EMA, ``swa_epochs > 0`` for SWA (not both).

    Raises:
        ConfigError: both EMA and SWA are on.
    """

    def __init__(self, model: nn.Module, cfg: OptimCfg) -> None:
        if cfg.ema_decay > 0 and cfg.swa_epochs > 0:
            raise ConfigError("choose one weight average: ema_decay or swa_epochs, not both")
        self.cfg, self.ema, self.swa = cfg, None, None
        if cfg.ema_decay > 0:
            from timm.utils import ModelEmaV3

            self.ema = ModelEmaV3(model, decay=cfg.ema_decay, use_warmup=True)
        elif cfg.swa_epochs > 0:
            self.swa = torch.optim.swa_utils.AveragedModel(model)

    def eval_model(self, model: nn.Module, epoch: int) -> nn.Module:
        """The model to validate after ``epoch``: the EMA, the SWA average once it has begun, else ``model``."""
        if self.ema is not None:
            return self.ema.module
        if self.swa is not None and epoch >= self.cfg.epochs - self.cfg.swa_epochs:
            return self.swa.module
        return model

    def after_step(self, model: nn.Module, step: int) -> None:
        """EMA update after optimiser step ``step`` (global)."""
        if self.ema is not None:
            self.ema.update(model, step=step)

    def after_epoch(self, model: nn.Module, epoch: int, clean_batches: Callable[[], Iterable[Tensor]]) -> None:
        """SWA: average in this epoch's weights and recompute BN statistics on ``clean_batches()``."""
        if self.swa is not None and epoch >= self.cfg.epochs - self.cfg.swa_epochs:
            self.swa.update_parameters(model)
            torch.optim.swa_utils.update_bn(clean_batches(), self.swa.module)

    def state(self) -> dict[str, Tensor]:
        """Tensors to save with ``last`` (for resumption)."""
        if self.ema is not None:
            return dict(self.ema.module.state_dict())
        if self.swa is not None:
            return {f"swa.{k}": v for k, v in self.swa.state_dict().items()}
        return {}

    def load_state(self, tensors: dict[str, Tensor]) -> None:
        """Restore :meth:`state` (an empty dict: start fresh, as after the first epoch of a resumed stage)."""
        if not tensors:
            return
        if self.ema is not None:
            self.ema.module.load_state_dict(tensors)
        elif self.swa is not None:
            self.swa.load_state_dict({k.removeprefix("swa."): v for k, v in tensors.items()})
