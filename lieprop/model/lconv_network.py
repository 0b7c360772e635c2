"""The ``lconv`` architecture: a residual stack of invariant L-conv layers (:mod:`lieprop.model.lconv`) for the QM9
targets.

Atoms are embedded from their type features; each block adds ``Linear(SiLU(InvariantLConv(LayerNorm(h))))`` to the
residual stream, where the layer mixes each atom's features with the Gram-contracted Lie derivatives of its
neighbourhood's features along the network's generators (one set shared by every block); a per-atom head is summed
or averaged per target, like LieConv's.

Generators (``generators``): ``"se3"`` (default) the three infinitesimal rotations about the centroid and the three
translations, fixed; ``"so3"`` the rotations only, fixed; ``"random"`` ``n_generators`` Gaussian affine generators.
With fixed so(3) or se(3) generators the span is closed under conjugation by rotations, so the network is exactly
invariant to rotations, reflections and translations (and to atom order), and is registered as ``intrinsic``: it
sees each molecule once, without frames. ``learn_generators=True`` makes them trainable (an experiment: what does
supervised training turn them into? see docs/SYMMETRY.md); the network is then invariant only as far as the learned
span stays closed under conjugation, and nothing in training enforces that. The default trains no generators.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch
from torch import nn

from lieprop.data.batch import N_FEATURES
from lieprop.model.architectures import Architecture, DictConfig
from lieprop.model.lconv import Generators, InvariantLConv, gradient_operator, named_generators
from lieprop.model.norm import make_norm
from lieprop.model.pooling import TargetPooling, default_pooling


@dataclass
class LConvConfig(DictConfig):
    """Sizes and choices of an :class:`LConvNet` (module doc)."""

    width: int = 64  # channels of the residual stream
    depth: int = 4  # invariant L-conv blocks
    hidden: int = 32  # channels of the two projections whose Lie derivatives are contracted
    generators: str = "se3"  # "se3" | "so3" (fixed, exactly invariant) | "random"
    n_generators: int = 6  # for "random"
    learn_generators: bool = False
    cutoff: float = 3.0  # Å: neighbours of the least-squares gradient (smooth cosine cutoff)
    ridge: float = 0.1  # Å^2: regularisation of the least-squares gradient
    seed: int = 0  # of "random" generators (0-65535: a bundle refuses larger integers, lieprop.model.bundle)
    targets: list[str] = field(default_factory=lambda: ["homo"])
    pooling: list[str] | None = None  # default: sum for extensive properties, else mean

    def __post_init__(self) -> None:
        if self.generators not in ("se3", "so3", "random"):
            raise ValueError(f"unknown generators {self.generators!r}; known: se3, so3, random")
        if not 0 <= self.seed <= 65535:
            raise ValueError(f"seed must be between 0 and 65535, got {self.seed}")
        if self.cutoff <= 0 or self.ridge <= 0:
            raise ValueError(f"cutoff and ridge must be positive, got {self.cutoff} and {self.ridge}")
        if self.pooling is None:
            self.pooling = default_pooling(self.targets)



class LConvNet(nn.Module):
    """Atoms (features, positions, mask) -> per-target pooled outputs (B, T), in standardised units."""

    def __init__(self, cfg: LConvConfig):
        super().__init__()
        self.cfg = cfg
        self.pool = TargetPooling(cfg.pooling, len(cfg.targets))
        a, b = named_generators(cfg.generators, cfg.n_generators, cfg.seed)
        self.generators = Generators(a, b, learn=cfg.learn_generators)
        self.embed = nn.Linear(N_FEATURES, cfg.width)
        self.norms = nn.ModuleList(make_norm("layer", cfg.width) for _ in range(cfg.depth))
        self.convs = nn.ModuleList(InvariantLConv(cfg.width, cfg.width, self.generators, cfg.hidden)
                                   for _ in range(cfg.depth))
        self.outs = nn.ModuleList(nn.Linear(cfg.width, cfg.width) for _ in range(cfg.depth))
        self.norm_out = make_norm("layer", cfg.width)
        self.head = nn.Linear(cfg.width, len(cfg.targets))
        self.act = nn.SiLU()

    def forward(self, features: torch.Tensor, positions: torch.Tensor, mask: torch.Tensor, *,
                generator: torch.Generator | None = None, deterministic: bool = False) -> torch.Tensor:
        """No sampling: ``generator`` and ``deterministic`` are accepted for the calling convention."""
        positions = positions.to(features.dtype)
        operator = gradient_operator(positions, mask, self.cfg.cutoff, self.cfg.ridge)
        m = mask[..., None].to(features.dtype)
        h = self.embed(features) * m
        for norm, conv, out in zip(self.norms, self.convs, self.outs, strict=True):
            h = h + out(self.act(conv(norm(h, mask), positions, mask, operator))) * m
        return self.pool(self.head(self.act(self.norm_out(h, mask))), mask)  # (B, N, T) -> (B, T)


def _summary(cfg: LConvConfig) -> str:
    learned = "learned" if cfg.learn_generators else "fixed"
    count = cfg.n_generators if cfg.generators == "random" else {"so3": 3, "se3": 6}[cfg.generators]
    return (f"L-conv, width {cfg.width}, depth {cfg.depth}, {count} {learned} {cfg.generators} generators, "
            f"cutoff {cfg.cutoff} Å")


ARCHITECTURE = Architecture(
    name="lconv", config=LConvConfig, build=LConvNet, invariance="intrinsic", summary=_summary,
    paper="Dehmamy, Walters, Liu, Wang, Yu: Automatic Symmetry Discovery with Lie Algebra Convolutional Network "
          "(NeurIPS 2021)",
)
