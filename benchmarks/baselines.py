"""torch_geometric's SchNet with a radius graph built in plain torch (pyg-lib is not on PyPI)."""

from __future__ import annotations

import torch


def radius_graph(pos: torch.Tensor, batch: torch.Tensor, cutoff: float = 10.0) -> tuple[torch.Tensor, torch.Tensor]:
    """All ordered pairs (i != j) of atoms of the same molecule closer than ``cutoff``: (edge_index, lengths)."""
    counts = torch.bincount(batch)
    starts = torch.cumsum(counts, 0) - counts
    # Pairs molecule by molecule without a Python loop: each atom pairs with every atom of its molecule.
    per_atom = counts[batch]
    src = torch.repeat_interleave(torch.arange(pos.shape[0]), per_atom)
    offs = torch.arange(int(per_atom.sum())) - torch.repeat_interleave(torch.cumsum(per_atom, 0) - per_atom, per_atom)
    dst = starts[batch[src]] + offs
    keep = src != dst
    src, dst = src[keep], dst[keep]
    d = (pos[src] - pos[dst]).norm(dim=-1)
    ok = d < cutoff
    return torch.stack([dst[ok], src[ok]]), d[ok]


def schnet(**kw):
    """PyG SchNet with its default size (hidden 128, 6 interactions, cutoff 10) and our radius graph."""
    from torch_geometric.nn.models import SchNet

    cutoff = kw.pop("cutoff", 10.0)
    return SchNet(cutoff=cutoff, interaction_graph=lambda pos, batch: radius_graph(pos, batch, cutoff), **kw)
