"""An O(3)-steerable point-convolution network with implicit kernels (Zhdanov, Hoffmann, Cesa, NeurIPS 2023), as
the ``steerable`` architecture (:mod:`lieprop.model.architectures`).

Each atom carries features that are a direct sum of O(3) irreps: ``scalars`` x 0e plus ``channels`` copies of each
l = 1..``lmax`` irrep in both parities (the default, 32x0e + 8x1o + 8x1e). A block is a residual steerable
convolution over the radius graph (:mod:`lieprop.model.molecular_graph`)::

    h_i <- h_i + Gate( sum_{j: |r_ij| < cutoff} K(r_ij, z_ij) h_j / sqrt(neighbours) + Linear(h_i) )

with K the standard or the implicit steerable kernel of :mod:`lieprop.model.steerable_kernels` (the module doc
there explains both and how the implicit MLP's output reaches the kernel's blocks through Clebsch-Gordan
coefficients), z_ij the invariant edge attributes (``edge_attributes``: none, geometric bond attributes, and the two
atoms' elements), and Gate e3nn's gated nonlinearity. Atom types enter as scalars; after the last block an MLP of
each atom's scalars gives per-target values, pooled over atoms per target (sum for extensive properties, mean
otherwise: :mod:`lieprop.model.pooling`, as LieConv).

Every layer is O(3)-equivariant and the readout uses invariants only, so predictions are invariant to rotations,
reflections, translations (only relative positions enter) and atom order by construction: the family's invariance
is ``intrinsic`` and lieprop evaluates it once per molecule, without frames, so there is no frame discontinuity at
symmetric geometries. It is continuous in the coordinates (smooth cutoff; tests/test_steerable.py).
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch
from e3nn import o3
from torch import nn

from lieprop.data.batch import N_FEATURES
from lieprop.model.architectures import Architecture, DictConfig
from lieprop.model.molecular_graph import (
    EDGE_ATTRIBUTES,
    Edges,
    attribute_size,
    cosine_cutoff,
    edge_attributes,
    gaussian_basis,
    radius_edges,
)
from lieprop.model.pooling import TargetPooling, default_pooling
from lieprop.model.steerable_kernels import (
    EdgeInputs,
    ImplicitKernel,
    Kernel,
    StandardKernel,
    gated_irreps,
    spherical_harmonics,
)

KERNELS = ("implicit", "standard")


@dataclass
class SteerableConfig(DictConfig):
    """Sizes and choices of a :class:`SteerableNet` (defaults: the configuration the docs describe)."""

    scalars: int = 32  # 0e channels of the atom features
    channels: int = 8  # channels of each l = 1..lmax irrep of the atom features, in each parity
    lmax: int = 1  # highest degree of the atom features
    depth: int = 3  # residual blocks
    kernel: str = "implicit"  # "implicit" (an equivariant MLP) or "standard" (radial MLP x spherical harmonics)
    kernel_lmax: int = 2  # spherical harmonics of the direction up to this degree
    kernel_hidden: int = 32  # scalar width of the kernel MLP (implicit) or of the radial MLP (standard)
    kernel_channels: int = 8  # implicit: copies of each irrep in the kernel MLP's hidden layers and output
    kernel_layers: int = 2  # gated layers of the implicit kernel MLP / hidden layers of the radial MLP
    edge_attributes: str = "bonds+types"  # "none", "bonds" or "bonds+types" (lieprop.model.molecular_graph)
    radial_basis: int = 16  # Gaussians of |r| on [0, cutoff]
    cutoff: float = 5.0  # Å
    neighbours: float = 12.0  # messages are summed and divided by its square root (about QM9's mean neighbour count)
    targets: list[str] = field(default_factory=lambda: ["homo"])
    pooling: list[str] | None = None  # default: sum for extensive properties (energies, alpha, ...), else mean

    def __post_init__(self) -> None:
        if self.kernel not in KERNELS:
            raise ValueError(f"unknown kernel {self.kernel!r}; known: {', '.join(KERNELS)}")
        if self.edge_attributes not in EDGE_ATTRIBUTES:
            raise ValueError(f"unknown edge_attributes {self.edge_attributes!r}; known: "
                             f"{', '.join(EDGE_ATTRIBUTES)}")
        for key, low, high in (("lmax", 0, 3), ("kernel_lmax", 1, 3), ("scalars", 1, 4096), ("channels", 1, 4096),
                               ("radial_basis", 1, 1024), ("depth", 1, 64), ("kernel_hidden", 1, 4096),
                               ("kernel_channels", 1, 4096), ("kernel_layers", 0, 16)):
            if not low <= getattr(self, key) <= high:
                raise ValueError(f"{key} must be between {low} and {high}, got {getattr(self, key)}")
        if not (self.cutoff > 0 and self.neighbours > 0):
            raise ValueError("cutoff and neighbours must be positive")
        if self.pooling is None:
            self.pooling = default_pooling(self.targets)

    @property
    def irreps(self) -> o3.Irreps:
        """The atom features: scalars x 0e + channels x (1o + 1e + 2e + 2o ...) up to lmax."""
        parts = [(self.scalars, (0, 1))]
        for ell in range(1, self.lmax + 1):
            parts += [(self.channels, (ell, (-1) ** ell)), (self.channels, (ell, -((-1) ** ell)))]
        return o3.Irreps(parts)

    @property
    def n_edge_scalars(self) -> int:
        return self.radial_basis + attribute_size(self.edge_attributes)



def make_kernel(cfg: SteerableConfig, irreps_in: o3.Irreps, irreps_out: o3.Irreps) -> Kernel:
    """The kernel ``cfg.kernel`` from ``irreps_in`` to ``irreps_out``."""
    if cfg.kernel == "standard":
        return StandardKernel(irreps_in, irreps_out, cfg.kernel_lmax, cfg.n_edge_scalars, cfg.kernel_hidden,
                              cfg.kernel_layers)
    return ImplicitKernel(irreps_in, irreps_out, cfg.kernel_lmax, cfg.n_edge_scalars, cfg.kernel_hidden,
                          cfg.kernel_channels, cfg.kernel_layers)


class SteerableBlock(nn.Module):
    """h <- h + Gate(conv(h) / sqrt(neighbours) + Linear(h)): a residual steerable convolution (see the module
    doc)."""

    def __init__(self, cfg: SteerableConfig) -> None:
        super().__init__()
        irreps = cfg.irreps
        self.gate = gated_irreps(irreps)
        self.kernel = make_kernel(cfg, irreps, self.gate.irreps_in)
        self.self_interaction = o3.Linear(irreps, self.gate.irreps_in)
        self.norm = cfg.neighbours ** -0.5

    def convolve(self, h: torch.Tensor, edges: Edges, e: EdgeInputs) -> torch.Tensor:
        """(nodes, dim) -> (nodes, dim of the gate's input): sum_j K(r_ij) h_j / sqrt(neighbours)."""
        messages = self.kernel(h[edges.src], e)
        total = messages.new_zeros(h.shape[0], messages.shape[1]).index_add_(0, edges.dst, messages)
        return self.kernel.finish(total * self.norm)

    def forward(self, h: torch.Tensor, edges: Edges, e: EdgeInputs) -> torch.Tensor:
        return h + self.gate(self.convolve(h, edges, e) + self.self_interaction(h))


class SteerableNet(nn.Module):
    """Atoms (features, positions, mask) -> per-target pooled outputs (B, T), in standardised units, invariant to
    O(3), translations and atom order by construction (see the module doc)."""

    def __init__(self, cfg: SteerableConfig) -> None:
        super().__init__()
        self.pool = TargetPooling(cfg.pooling, len(cfg.targets))
        self.cfg = cfg
        self.embed = nn.Linear(N_FEATURES, cfg.scalars)
        nn.init.normal_(self.embed.weight)  # scalars of order 1, as e3nn's normalised layers expect
        self.blocks = nn.ModuleList(SteerableBlock(cfg) for _ in range(cfg.depth))
        self.head = nn.Sequential(nn.Linear(cfg.scalars, cfg.scalars), nn.SiLU(), nn.Linear(cfg.scalars,
                                                                                            len(cfg.targets)))

    def edge_inputs(self, features: torch.Tensor, edges: Edges) -> EdgeInputs:
        """The kernels' view of every edge: spherical harmonics, radial basis + attributes, cutoff envelope."""
        cfg = self.cfg
        scalars = [gaussian_basis(edges.length, cfg.radial_basis, cfg.cutoff),
                   edge_attributes(cfg.edge_attributes, features, edges)]
        return EdgeInputs(sh=spherical_harmonics(cfg.kernel_lmax, edges.vec), scalars=torch.cat(scalars, dim=-1),
                          envelope=cosine_cutoff(edges.length, cfg.cutoff))

    def atom_features(self, features: torch.Tensor, positions: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        """(B * N, dim of ``cfg.irreps``): every atom slot's features after the last block (padding slots too;
        they receive no messages and are masked at pooling)."""
        b, n, _ = features.shape
        edges = radius_edges(positions, mask, self.cfg.cutoff)
        e = self.edge_inputs(features.to(positions.dtype), edges)
        scalars = self.embed(features.to(positions.dtype)).reshape(b * n, -1)
        h = torch.cat([scalars, scalars.new_zeros(b * n, self.cfg.irreps.dim - self.cfg.scalars)], dim=-1)
        for block in self.blocks:
            h = block(h, edges, e)
        return h

    def forward(self, features: torch.Tensor, positions: torch.Tensor, mask: torch.Tensor, *,
                generator: torch.Generator | None = None, deterministic: bool = False) -> torch.Tensor:
        """Nothing is sampled, so ``generator`` and ``deterministic`` change nothing."""
        b, n, _ = features.shape
        h = self.atom_features(features, positions, mask)
        y = self.head(h[:, : self.cfg.scalars]).reshape(b, n, -1)
        return self.pool(y, mask)


def _summary(cfg: SteerableConfig) -> str:
    return (f"Steerable O(3) {cfg.kernel} kernel, {cfg.irreps.simplify()}, depth {cfg.depth}, "
            f"edge attributes {cfg.edge_attributes}")


ARCHITECTURE = Architecture(
    name="steerable", config=SteerableConfig, build=SteerableNet, invariance="intrinsic", summary=_summary,
    paper="Zhdanov, Hoffmann, Cesa: Implicit Convolutional Kernels for Steerable CNNs (NeurIPS 2023, "
          "arXiv 2212.06096)",
)
