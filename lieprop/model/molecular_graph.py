"""The radius graph of padded molecules and the invariant and equivariant features of its edges.

An edge i <- j joins two atoms of one molecule closer than the cutoff; its relative position is r = x_j - x_i.
Everything here is a smooth function of the coordinates that vanishes, with its first derivative, at the cutoff
(:func:`cosine_cutoff`), so a network built on it is continuous when atoms cross the cutoff sphere.

Invariant edge attributes (the "bond attributes" and "atom-type attributes" of Zhdanov, Hoffmann, Cesa, NeurIPS
2023, computed here from the geometry instead of read from a bond table):

- ``bonds``: two scalars from the distance d and the sum R of the two atoms' covalent radii
  (:data:`lieprop.data.elements.COVALENT_RADII`): a smooth bonded switch s = sigmoid((1.2 - d/R) / 0.05) (1 for a
  covalent bond, 0 beyond about 1.3 R) and s times Pauling's bond order exp((R - d) / 0.3 Å) (about 1, 1.5, 1.8
  and 2.9 for C-C single, aromatic, double and triple bonds).
- ``types``: the one-hot element of atom i and of atom j (10 scalars).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch

from lieprop.data.elements import COVALENT_RADII, QM9_ELEMENTS

#: Which invariant attributes an edge carries, by option name.
EDGE_ATTRIBUTES: dict[str, tuple[str, ...]] = {"none": (), "bonds": ("bonds",), "bonds+types": ("bonds", "types")}
#: Scalars each attribute adds.
ATTRIBUTE_SIZES = {"bonds": 2, "types": 2 * len(QM9_ELEMENTS)}

BOND_SWITCH_AT = 1.2  # d / R where the bonded switch is 1/2
BOND_SWITCH_WIDTH = 0.05
PAULING_LENGTH = 0.3  # Å


@dataclass
class Edges:
    """Edges of a padded batch of B molecules of N atom slots; nodes are numbered b * N + i."""

    dst: torch.Tensor  # (E,) long: node i (receives)
    src: torch.Tensor  # (E,) long: node j (sends)
    vec: torch.Tensor  # (E, 3) r = x_j - x_i
    length: torch.Tensor  # (E,) |r|


def radius_edges(positions: torch.Tensor, mask: torch.Tensor, cutoff: float) -> Edges:
    """Every ordered pair (i, j), i != j, of real atoms of one molecule with |x_j - x_i| < ``cutoff``."""
    b, n, _ = positions.shape
    d = torch.cdist(positions, positions)
    eye = torch.eye(n, dtype=torch.bool, device=positions.device)
    keep = mask[:, :, None] & mask[:, None, :] & ~eye & (d < cutoff)
    mol, i, j = keep.nonzero(as_tuple=True)
    vec = positions[mol, j] - positions[mol, i]
    return Edges(dst=mol * n + i, src=mol * n + j, vec=vec, length=vec.norm(dim=-1))


def cosine_cutoff(d: torch.Tensor, cutoff: float) -> torch.Tensor:
    """(cos(pi d / cutoff) + 1) / 2 inside the cutoff, 0 outside: smooth, with zero slope at the cutoff."""
    return torch.where(d < cutoff, 0.5 * (torch.cos(math.pi * d / cutoff) + 1.0), torch.zeros_like(d))


def gaussian_basis(d: torch.Tensor, n: int, cutoff: float) -> torch.Tensor:
    """(E,) -> (E, n): Gaussians of the distance centred evenly on [0, cutoff], as wide as their spacing."""
    centers = torch.linspace(0.0, cutoff, n, dtype=d.dtype, device=d.device)
    width = cutoff / max(1, n - 1)
    return torch.exp(-(((d[:, None] - centers) / width) ** 2))


def element_onehot(features: torch.Tensor) -> torch.Tensor:
    """(..., 15) atom features of :func:`lieprop.data.batch.featurize` -> (..., 5) one-hot element (H, C, N, O, F)."""
    return features[..., 0::3]


def edge_attributes(which: str, features: torch.Tensor, edges: Edges) -> torch.Tensor:
    """(E, k) invariant attributes ``which`` (a key of :data:`EDGE_ATTRIBUTES`) of every edge."""
    if which not in EDGE_ATTRIBUTES:
        raise ValueError(f"unknown edge_attributes {which!r}; known: {sorted(EDGE_ATTRIBUTES)}")
    onehot = element_onehot(features).reshape(-1, len(QM9_ELEMENTS))
    onehot_i, onehot_j = onehot[edges.dst], onehot[edges.src]
    parts = []
    if "bonds" in EDGE_ATTRIBUTES[which]:
        radii = torch.tensor(COVALENT_RADII, dtype=features.dtype, device=features.device)
        bond_length = onehot_i @ radii + onehot_j @ radii
        switch = torch.sigmoid((BOND_SWITCH_AT - edges.length / bond_length) / BOND_SWITCH_WIDTH)
        order = torch.exp((bond_length - edges.length) / PAULING_LENGTH)
        parts.append(torch.stack([switch, switch * order], dim=-1))
    if "types" in EDGE_ATTRIBUTES[which]:
        parts.append(torch.cat([onehot_i, onehot_j], dim=-1))
    return torch.cat(parts, dim=-1) if parts else features.new_zeros(len(edges.length), 0)


def attribute_size(which: str) -> int:
    """How many scalars :func:`edge_attributes` gives per edge for ``which``."""
    if which not in EDGE_ATTRIBUTES:
        raise ValueError(f"unknown edge_attributes {which!r}; known: {sorted(EDGE_ATTRIBUTES)}")
    return sum(ATTRIBUTE_SIZES[a] for a in EDGE_ATTRIBUTES[which])
