"""Structural re-parameterisation of a whole model (RepVGG, Ding et al. 2021; Xie & Shen 2022 Section 2.1)."""

from __future__ import annotations

from torch import nn


def reparameterize(model: nn.Module, inplace: bool = False) -> nn.Module:
    """Fuse every block that has ``reparameterize()`` (ours and timm's) into its deployed form.

    The model is put in eval mode first (fusion uses BN running statistics). Outputs of the fused
    model equal the training form's within float rounding (about 1e-5 for EG-RepVGG).

    Args:
        model: any model; blocks without a ``reparameterize``/``fuse`` method are left as they are.
        inplace: fuse ``model`` itself instead of a deep copy.

    Returns:
        The fused model, in eval mode.
    """
    from timm.models._manipulate import reparameterize_model

    model.eval()
    return reparameterize_model(model, inplace=inplace).eval()


def is_reparameterizable(model: nn.Module) -> bool:
    """True when some block of ``model`` can still be fused."""
    return any(hasattr(m, "reparameterize") and m is not model for m in model.modules())
