"""PyG SchNet as a lieprop architecture, for benchmarks only: the same trainer, targets, loss, schedule, EMA and
size-bucketed batches as lieprop's own families, so that an equal-budget comparison differs in the network alone.

A benchmark registers it for its own process with :func:`register` (lieprop itself does not ship it: it needs
``torch_geometric``, the ``bench`` extra). The network is torch_geometric's ``SchNet`` unchanged (its embedding,
Gaussian distance expansion, interaction blocks and output MLP, with :func:`baselines.radius_graph` as the
interaction graph) up to the per-atom outputs, which are pooled per target by lieprop's
:class:`~lieprop.model.pooling.TargetPooling` (summed for extensive targets, averaged for the others) instead of
SchNet's one sum; SchNet is invariant by construction, so it is an ``intrinsic`` family.
"""

from __future__ import annotations

import os
import sys
from dataclasses import dataclass, field

import torch
from torch import nn

from lieprop.data.elements import QM9_ELEMENTS
from lieprop.model.architectures import MODULES, Architecture, DictConfig
from lieprop.model.pooling import TargetPooling, default_pooling

NAME = "schnet"


@dataclass
class SchNetConfig(DictConfig):
    """torch_geometric SchNet's sizes (its defaults: hidden 128, 128 filters, 6 interactions, 50 Gaussians,
    cutoff 10 Å)."""

    hidden: int = 128
    filters: int = 128
    interactions: int = 6
    gaussians: int = 50
    cutoff: float = 10.0
    targets: list[str] = field(default_factory=lambda: ["homo"])
    pooling: list[str] | None = None  # default: sum for extensive properties, else mean

    def __post_init__(self) -> None:
        if self.pooling is None:
            self.pooling = default_pooling(self.targets)


def atomic_numbers(features: torch.Tensor) -> torch.Tensor:
    """(..., 15) atom-type features of :func:`lieprop.data.batch.featurize` -> (...) atomic numbers (0: padding).

    Each element's block of three features is ``[1, Z/9, (Z/9)^2]`` times its one-hot entry."""
    blocks = features.reshape(*features.shape[:-1], len(QM9_ELEMENTS), 3)
    return torch.round(blocks[..., 1].sum(-1) * 9.0).long()


class SchNetNet(nn.Module):
    """Atoms (features, positions, mask) -> per-target pooled outputs (B, T), in standardised units."""

    def __init__(self, cfg: SchNetConfig):
        super().__init__()
        from baselines import schnet

        self.cfg = cfg
        self.schnet = schnet(hidden_channels=cfg.hidden, num_filters=cfg.filters, num_interactions=cfg.interactions,
                             num_gaussians=cfg.gaussians, cutoff=cfg.cutoff)
        self.schnet.lin2 = nn.Linear(self.schnet.lin2.in_features, len(cfg.targets))  # one output per target
        self.pool = TargetPooling(cfg.pooling, len(cfg.targets))

    def forward(self, features: torch.Tensor, positions: torch.Tensor, mask: torch.Tensor, *,
                generator: torch.Generator | None = None, deterministic: bool = False) -> torch.Tensor:
        """No sampling: ``generator`` and ``deterministic`` are accepted for the calling convention."""
        s = self.schnet
        z = atomic_numbers(features)[mask]
        pos = positions.to(features.dtype)[mask]
        batch = torch.arange(mask.shape[0], device=mask.device).repeat_interleave(mask.sum(1))
        h = s.embedding(z)
        edge_index, edge_weight = s.interaction_graph(pos, batch)
        edge_attr = s.distance_expansion(edge_weight)
        for interaction in s.interactions:
            h = h + interaction(h, edge_index, edge_weight, edge_attr)
        per_atom = s.lin2(s.act(s.lin1(h)))  # (atoms, T)
        out = per_atom.new_zeros(*mask.shape, per_atom.shape[-1])
        out[mask] = per_atom
        return self.pool(out, mask)


ARCHITECTURE = Architecture(
    name=NAME, config=SchNetConfig, build=SchNetNet, invariance="intrinsic",
    summary=lambda c: f"PyG SchNet, hidden {c.hidden}, {c.interactions} interactions, cutoff {c.cutoff} Å",
    paper="Schütt et al.: SchNet (NeurIPS 2017), torch_geometric's implementation",
)


def register() -> None:
    """Make ``architecture=schnet`` known to lieprop in this process (idempotent)."""
    here = os.path.dirname(os.path.abspath(__file__))
    if here not in sys.path:
        sys.path.insert(0, here)
    MODULES[NAME] = "schnet_architecture"
