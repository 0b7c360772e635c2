"""A second architecture, small enough to read in a minute: what a new model family needs to be to plug in.

It is intrinsically invariant (it sees only atom types and interatomic distances), so lieprop evaluates it on the
molecule as given, without frames. tests/test_architectures.py registers it under the name ``toy`` (one line in
``lieprop.model.architectures.MODULES``) and trains, saves, loads and serves it like LieConv.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch
from torch import nn

from lieprop.data.batch import N_FEATURES
from lieprop.data.properties import BY_NAME
from lieprop.model.architectures import Architecture, DictConfig


@dataclass
class ToyConfig(DictConfig):
    width: int = 16
    cutoff: float = 5.0  # Å
    targets: list[str] = field(default_factory=lambda: ["homo"])
    pooling: list[str] | None = None

    def __post_init__(self) -> None:
        if self.pooling is None:
            self.pooling = ["sum" if BY_NAME[t].extensive else "mean" for t in self.targets]



class ToyNet(nn.Module):
    """Atom embeddings plus one round of distance-weighted messages, pooled per target."""

    def __init__(self, cfg: ToyConfig) -> None:
        super().__init__()
        self.cfg = cfg
        self.embed = nn.Linear(N_FEATURES, cfg.width)
        self.register_buffer("centers", torch.linspace(0.5, cfg.cutoff, 8), persistent=False)
        self.filter = nn.Linear(8, cfg.width)
        self.head = nn.Sequential(nn.SiLU(), nn.Linear(cfg.width, len(cfg.targets)))
        self.register_buffer("sum_pool", torch.tensor([p == "sum" for p in cfg.pooling]), persistent=False)

    def forward(self, features: torch.Tensor, positions: torch.Tensor, mask: torch.Tensor, *,
                generator: torch.Generator | None = None, deterministic: bool = False) -> torch.Tensor:
        h = self.embed(features)
        d = torch.cdist(positions, positions)
        pair = (mask[:, :, None] & mask[:, None, :] & (d > 1e-6)).to(h.dtype)
        rbf = torch.exp(-((d[..., None] - self.centers) ** 2))
        h = h + (self.filter(rbf) * pair[..., None] * h[:, None]).sum(2)  # messages from every other atom j
        y = self.head(h) * mask[..., None]
        total = y.sum(1)
        return torch.where(self.sum_pool, total, total / mask.sum(1, keepdim=True).clamp_min(1))


ARCHITECTURE = Architecture(name="toy", config=ToyConfig, build=ToyNet, invariance="intrinsic",
                            summary=lambda cfg: f"ToyNet width {cfg.width}, cutoff {cfg.cutoff} Å")
