"""Per-target pooling of per-atom outputs into per-molecule outputs, shared by every architecture.

Extensive properties (energies, alpha, ...: values that add up over atoms) are summed over atoms, intensive ones
(HOMO, dipole moment, ...) averaged, unless a config says otherwise per target.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn

from lieprop.data.properties import BY_NAME

POOLINGS = ("sum", "mean")


def default_pooling(targets: Sequence[str]) -> list[str]:
    """``"sum"`` for each extensive target, ``"mean"`` for the others."""
    return ["sum" if BY_NAME[t].extensive else "mean" for t in targets]


class TargetPooling(nn.Module):
    """(B, M, T) per-point outputs and a (B, M) mask -> (B, T): per target, the sum or the mean over points.

    ``copies`` points per atom (LieConv's lifts) are averaged: a sum is divided by ``copies``, a mean is over all
    points. No state is saved (the rule is in the config), so adding this module changes no state dict."""

    def __init__(self, pooling: Sequence[str], n_targets: int) -> None:
        super().__init__()
        if len(pooling) != n_targets:
            raise ValueError("pooling needs one entry per target")
        if any(p not in POOLINGS for p in pooling):
            raise ValueError(f"pooling must be 'sum' or 'mean', got {list(pooling)}")
        self.register_buffer("sum_pool", torch.tensor([p == "sum" for p in pooling]), persistent=False)

    def forward(self, y: torch.Tensor, mask: torch.Tensor, copies: int = 1) -> torch.Tensor:
        m = mask[..., None].to(y.dtype)
        total = (y * m).sum(1)  # (B, T)
        n_points = m.sum(1).clamp_min(1)
        return torch.where(self.sum_pool, total / copies, total / n_points)
