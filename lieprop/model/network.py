"""The LieResNet of the LieConv QM9 recipe (Finzi et al. 2020), with a multi-target head and per-target pooling.

Registered as the ``lieconv`` architecture (:mod:`lieprop.model.architectures`): a T(3), SO(3) or SE(3) convolution
that is equivariant only to translations (T(3)) or in distribution (lifts), so its predictions are made invariant
by weighted frames."""

from __future__ import annotations

from dataclasses import dataclass, field

import torch
from torch import nn

from lieprop.data.batch import N_FEATURES
from lieprop.model.architectures import Architecture, DictConfig
from lieprop.model.device import full_precision
from lieprop.model.groups import get_group
from lieprop.model.lieconv import LieConv, Neighbourhood, neighbourhood
from lieprop.model.norm import NORMS, make_norm
from lieprop.model.pooling import TargetPooling, default_pooling


@dataclass
class NetworkConfig(DictConfig):
    """Sizes and choices of a :class:`LieResNet`. ``pooling[t]`` is ``"sum"`` or ``"mean"`` per target (by default
    sum for extensive properties, whose values add up over atoms, and mean for intensive ones like HOMO)."""

    group: str = "T3"
    width: int = 256  # k: channels of the residual stream (the bottleneck has k/4)
    depth: int = 6  # bottleneck blocks
    fill: float = 1.0
    nbhd: int = 100
    lift_samples: int = 1
    kernel_hidden: int = 32
    kernel_out: int = 16
    kernel_norm: bool = True
    norm: str = "layer"  # normalisation layers (lieprop.model.norm.NORMS); bundles saved without the key used "batch"
    aggregation: str = "mean"  # "mean" over each neighbourhood (the paper) or "sum" (scaled by a constant)
    distance_feature: bool = True  # append the group distance of each pair to its embedding
    radial_basis: int = 16  # also append this many Gaussians of that distance (0-8 Å), a smoother kernel input
    targets: list[str] = field(default_factory=lambda: ["homo"])
    pooling: list[str] | None = None  # default: sum for extensive properties (energies, alpha, ...), else mean

    def __post_init__(self) -> None:
        if self.norm not in NORMS:
            raise ValueError(f"unknown norm {self.norm!r}; known: {sorted(NORMS)}")
        if self.pooling is None:
            self.pooling = default_pooling(self.targets)

    @classmethod
    def from_dict(cls, d: dict) -> NetworkConfig:
        return super().from_dict({"norm": "batch", **d})  # the first bundles predate the key and used batch norm


class Bottleneck(nn.Module):
    """Pre-activation residual block: norm, Swish, Linear k->k/4, norm, Swish, LieConv, norm, Swish, Linear k/4->k."""

    def __init__(self, k: int, d_embed: int, cfg: NetworkConfig):
        super().__init__()
        c = k // 4
        self.bn1, self.bn2, self.bn3 = make_norm(cfg.norm, k), make_norm(cfg.norm, c), make_norm(cfg.norm, c)
        self.down, self.up = nn.Linear(k, c), nn.Linear(c, k)
        self.conv = LieConv(c, c, d_embed, cfg.kernel_hidden, cfg.kernel_out, cfg.norm if cfg.kernel_norm else None,
                            cfg.aggregation)
        self.act = nn.SiLU()

    def forward(self, h: torch.Tensor, mask: torch.Tensor, nb: Neighbourhood) -> torch.Tensor:
        y = self.down(self.act(self.bn1(h, mask)))
        y = self.conv(self.act(self.bn2(y, mask)), nb)
        y = self.up(self.act(self.bn3(y, mask)))
        return h + y


class LieResNet(nn.Module):
    """Atoms (features, positions, mask) -> per-target pooled outputs (B, T), in standardised units.

    Positions are lifted to the group (``lift_samples`` elements per atom), pair embeddings and
    neighbourhoods are computed once and shared by every block, and per-point outputs are pooled over
    atoms (mean or sum per target; lifted copies of an atom are averaged).
    """

    def __init__(self, cfg: NetworkConfig):
        super().__init__()
        self.pool = TargetPooling(cfg.pooling, len(cfg.targets))  # validates the pooling rule first
        self.cfg = cfg
        self.group = get_group(cfg.group)
        d_embed = self.group.lie_dim + 2 * self.group.orbit_dim + int(cfg.distance_feature) + cfg.radial_basis
        self.register_buffer("rbf_centers", torch.linspace(0.0, 8.0, cfg.radial_basis), persistent=False)
        self.embed = nn.Linear(N_FEATURES, cfg.width)
        self.blocks = nn.ModuleList(Bottleneck(cfg.width, d_embed, cfg) for _ in range(cfg.depth))
        self.bn_out = make_norm(cfg.norm, cfg.width)
        self.head = nn.Linear(cfg.width, len(cfg.targets))
        self.act = nn.SiLU()

    def pair_geometry(self, positions: torch.Tensor, generator: torch.Generator | None = None,
                      deterministic: bool = False) -> torch.Tensor:
        """The lifted pairs' embeddings (B, M, M, d), M = atoms x lift samples, computed in the
        positions' precision even under autocast: exp, log and the products of group elements in bfloat16 would
        lose the geometry (8 bits of mantissa), and they cost little next to the kernel network that autocast
        speeds up."""
        if deterministic:
            generator = torch.Generator().manual_seed(0)
        with full_precision(positions.device):
            g, orbits = self.group.lift(positions, self.cfg.lift_samples, generator, per_position=deterministic)
            return self.group.pair_embedding(g, orbits)

    def forward(self, features: torch.Tensor, positions: torch.Tensor, mask: torch.Tensor,
                generator: torch.Generator | None = None, deterministic: bool = False) -> torch.Tensor:
        """``deterministic``: stabiliser samples fixed per atom position (seed 0), for inference on canonically
        ordered atoms; otherwise fresh Haar samples from ``generator``."""
        lifts = self.cfg.lift_samples
        emb = self.pair_geometry(positions, generator, deterministic).to(features.dtype)
        dist = self.group.distance(emb)
        if lifts > 1:
            features = features.repeat_interleave(lifts, dim=1)
            mask = mask.repeat_interleave(lifts, dim=1)
        extra = [dist[..., None]] if self.cfg.distance_feature else []
        if self.cfg.radial_basis:
            width = 8.0 / max(1, self.cfg.radial_basis - 1)
            extra.append(gaussians(dist, self.rbf_centers, width))
        if extra:
            emb = torch.cat([emb, *extra], dim=-1)
        nb = neighbourhood(emb, dist, mask, self.cfg.nbhd, self.cfg.fill)
        h = self.embed(features)
        for block in self.blocks:
            h = block(h, mask, nb)
        y = self.head(self.act(self.bn_out(h, mask)))  # (B, M, T)
        return self.pool(y, mask, copies=lifts)


#: Exponents beyond this are cut to it: exp(-60) = 9e-27 instead of ever smaller numbers. Without the cut, far pairs
#: give exponents of -200 and more, whose results are subnormal floats or underflow; a CPU handles those on a slow
#: path (measured: exp 19x slower, and the kernel network's first Linear 4x slower on such inputs).
GAUSSIAN_CUT = 60.0


def gaussians(dist: torch.Tensor, centers: torch.Tensor, width: float) -> torch.Tensor:
    """(..., ) distances -> (..., n) Gaussians exp(-((d - c) / width)^2), each at least exp(-GAUSSIAN_CUT)."""
    return torch.exp(-(((dist[..., None] - centers) / width) ** 2).clamp_max(GAUSSIAN_CUT))


def _summary(cfg: NetworkConfig) -> str:
    return f"LieResNet {cfg.group}, width {cfg.width}, depth {cfg.depth}"


ARCHITECTURE = Architecture(
    name="lieconv", config=NetworkConfig, build=LieResNet, invariance="frames", summary=_summary,
    paper="Finzi, Stanton, Izmailov, Wilson: Generalizing Convolutional Neural Networks for Equivariance to Lie "
          "Groups on Arbitrary Continuous Data (ICML 2020)",
)
