"""Atom features and collation of molecules into padded batch tensors.

Features follow the LieConv QM9 recipe: one-hot over (H, C, N, O, F) times [1, Z/9, (Z/9)^2], 15 numbers
per atom. Molecules are collated *padded* to the largest molecule in the batch with a boolean mask.
Padding beats packing here because the all-pairs LieConv kernel is a dense (N x N) batched matmul; the
waste is kept small by batching molecules of similar size together (see :func:`size_bucketed_batches`).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import torch

from lieprop.data.elements import ELEMENT_INDEX, QM9_ELEMENTS

N_FEATURES = 3 * len(QM9_ELEMENTS)


def featurize(numbers: np.ndarray | torch.Tensor) -> torch.Tensor:
    """(..., n_atoms) atomic numbers -> (..., n_atoms, 15) float32 features; zeros for Z = 0 (padding).

    Raises ``ValueError`` for elements outside H, C, N, O, F (validation should have refused them).
    """
    z = torch.as_tensor(np.asarray(numbers), dtype=torch.long)
    idx = torch.as_tensor(ELEMENT_INDEX)[z]
    if bool(((idx < 0) & (z > 0)).any()):
        raise ValueError(f"elements outside {QM9_ELEMENTS}: {sorted(set(z[(idx < 0) & (z > 0)].tolist()))}")
    onehot = torch.nn.functional.one_hot(idx.clamp(min=0), len(QM9_ELEMENTS)).float() * (z > 0)[..., None]
    zs = z.float()[..., None] / 9.0
    powers = torch.cat([torch.ones_like(zs), zs, zs * zs], dim=-1)  # (..., 3)
    return (onehot[..., :, None] * powers[..., None, :]).flatten(-2)


@dataclass
class Batch:
    """Padded molecules. ``mask[b, i]`` is True where atom ``i`` of molecule ``b`` exists."""

    numbers: torch.Tensor  # (B, N) long, 0 for padding
    positions: torch.Tensor  # (B, N, 3) float32 (float64 if asked)
    mask: torch.Tensor  # (B, N) bool

    @property
    def features(self) -> torch.Tensor:
        return featurize(self.numbers)

    @property
    def n_atoms(self) -> torch.Tensor:
        return self.mask.sum(1)

    def to(self, device: torch.device | str) -> Batch:
        return Batch(self.numbers.to(device), self.positions.to(device), self.mask.to(device))


def collate(numbers: Sequence[np.ndarray], positions: Sequence[np.ndarray],
            dtype: torch.dtype = torch.float32) -> Batch:
    """Pad a list of molecules into one :class:`Batch` (order preserved, values untouched)."""
    if len(numbers) != len(positions):
        raise ValueError("numbers and positions differ in length")
    sizes = np.fromiter((len(z) for z in numbers), dtype=np.int64, count=len(numbers))
    n_max = int(sizes.max(initial=0))
    flat_z = np.concatenate([np.asarray(z, dtype=np.int64) for z in numbers]) if len(numbers) else np.zeros(0, int)
    flat_x = (np.concatenate([np.asarray(x, dtype=np.float64).reshape(-1, 3) for x in positions])
              if len(numbers) else np.zeros((0, 3)))
    mask = np.arange(n_max)[None, :] < sizes[:, None]
    z = np.zeros((len(numbers), n_max), dtype=np.int64)
    x = np.zeros((len(numbers), n_max, 3), dtype=np.float64)
    z[mask] = flat_z
    x[mask] = flat_x
    return Batch(torch.from_numpy(z), torch.from_numpy(x).to(dtype), torch.from_numpy(mask))


def collate_ragged(numbers: np.ndarray, positions: np.ndarray, offsets: np.ndarray, idx: np.ndarray,
                   dtype: torch.dtype = torch.float32) -> Batch:
    """Collate molecules ``idx`` of ragged arrays (``offsets`` as in QM9Arrays) without Python per-atom work."""
    starts, ends = offsets[idx], offsets[idx + 1]
    sizes = ends - starts
    n_max = int(sizes.max(initial=0))
    mask = np.arange(n_max)[None, :] < sizes[:, None]
    src = (starts[:, None] + np.arange(n_max)[None, :])[mask]
    z = np.zeros((len(idx), n_max), dtype=np.int64)
    x = np.zeros((len(idx), n_max, 3), dtype=np.float64)
    z[mask] = numbers[src]
    x[mask] = positions[src]
    return Batch(torch.from_numpy(z), torch.from_numpy(x).to(dtype), torch.from_numpy(mask))


def size_bucketed_batches(sizes: np.ndarray, batch_size: int, rng: np.random.Generator | None = None,
                          bucket_factor: int = 50) -> list[np.ndarray]:
    """Split ``range(len(sizes))`` into batches of similar molecule size (less padding, faster steps).

    With ``rng``, molecules are shuffled, cut into windows of ``bucket_factor`` batches, sorted by size
    inside each window, batched, and the batches shuffled: random batches with little padding. Without
    ``rng`` the order is fully sorted by size (deterministic, for evaluation).
    """
    n = len(sizes)
    if rng is None:
        order = np.argsort(sizes, kind="stable")
        return [order[i:i + batch_size] for i in range(0, n, batch_size)]
    perm = rng.permutation(n)
    window = batch_size * bucket_factor
    batches = []
    for w in range(0, n, window):
        chunk = perm[w:w + window]
        chunk = chunk[np.argsort(sizes[chunk], kind="stable")]
        batches.extend(chunk[i:i + batch_size] for i in range(0, len(chunk), batch_size))
    rng.shuffle(batches)  # type: ignore[arg-type]
    return batches
