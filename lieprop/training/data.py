"""QM9 prepared for training: one split's molecules packed contiguously, targets and frames precomputed."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

from lieprop.data.batch import Batch, collate_ragged
from lieprop.data.properties import PROPERTY_NAMES
from lieprop.data.qm9 import QM9Arrays
from lieprop.model.frames import molecule_frames
from lieprop.model.groups import random_rotations


@dataclass
class SplitData:
    """Molecules of one split: ragged arrays, targets (n, T) in lieprop units, and each molecule's frames."""

    numbers: np.ndarray
    positions: np.ndarray  # float64
    offsets: np.ndarray
    targets: np.ndarray  # (n, T) float64
    qm9_rows: np.ndarray  # row of each molecule in QM9Arrays
    frame_offsets: np.ndarray | None = None  # (n + 1,)
    frame_axes: np.ndarray | None = None  # (total_frames, 3, 3)
    frame_cumweights: np.ndarray | None = None  # (total_frames,) cumulative frame weights within each molecule
    frame_centers: np.ndarray | None = None  # (n, 3)

    def __len__(self) -> int:
        return len(self.offsets) - 1

    @property
    def sizes(self) -> np.ndarray:
        return np.diff(self.offsets)

    def molecule(self, i: int) -> tuple[np.ndarray, np.ndarray]:
        a, b = self.offsets[i], self.offsets[i + 1]
        return self.numbers[a:b], self.positions[a:b]

    def compute_frames(self, fix_signs: bool = True) -> None:
        """Each molecule's weighted frames (:func:`lieprop.model.frames.molecule_frames`), for :meth:`batch`."""
        axes, counts, centers, cum = [], [], [], []
        for i in range(len(self)):
            fr = molecule_frames(*self.molecule(i), fix_signs=fix_signs)
            axes.append(fr.axes)
            counts.append(len(fr))
            centers.append(fr.center)
            cum.append(np.cumsum(fr.weights))
        self.frame_axes = np.concatenate(axes)
        self.frame_offsets = np.concatenate([[0], np.cumsum(counts)])
        self.frame_centers = np.stack(centers)
        self.frame_cumweights = np.concatenate(cum)

    def sample_frames(self, idx: np.ndarray, rng: np.random.Generator | None) -> np.ndarray:
        """One frame per molecule ``idx``, drawn with the frames' weights (the first frame without ``rng``):
        training sees each frame as often as inference weighs it."""
        first, n_frames = self.frame_offsets[idx], self.frame_offsets[idx + 1] - self.frame_offsets[idx]
        if rng is None:
            return first
        u = rng.random(len(idx))
        pick = np.array([np.searchsorted(self.frame_cumweights[a:a + k], v * self.frame_cumweights[a + k - 1])
                         for a, k, v in zip(first, n_frames, u, strict=True)])
        return first + np.minimum(pick, n_frames - 1)

    def batch(self, idx: np.ndarray, orientation: str, rng: np.random.Generator | None) -> Batch:
        """Collate molecules ``idx``; orient them by a sampled frame, a random rotation, or not at all."""
        b = collate_ragged(self.numbers, self.positions, self.offsets, idx, dtype=torch.float64)
        x = b.positions
        if orientation == "frames":
            axes = torch.from_numpy(self.frame_axes[self.sample_frames(idx, rng)])
            centers = torch.from_numpy(self.frame_centers[idx])
            x = (x - centers[:, None]) @ axes.transpose(1, 2)
        elif orientation == "rotate":
            gen = torch.Generator().manual_seed(int(rng.integers(2**62))) if rng is not None else None
            rot = random_rotations(len(idx), gen, dtype=torch.float64)
            centre = (x * b.mask[..., None]).sum(1) / b.mask.sum(1, keepdim=True)
            x = (x - centre[:, None]) @ rot.transpose(1, 2)
        x = x * b.mask[..., None]
        return Batch(b.numbers, x.to(torch.float32), b.mask)


def split_data(data: QM9Arrays, rows: np.ndarray, targets: list[str] | tuple[str, ...],
               geometries: Any = None, conformer: int = 0) -> SplitData:
    """Pack QM9 molecules ``rows`` contiguously with their targets (lieprop units, total energies).

    ``geometries``: another source of atoms for the same rows (ragged ``numbers``, ``positions``, ``offsets``
    row-aligned with QM9, e.g. :class:`lieprop.data.qm9_conformers.ConformerArrays`, whose ``position_offsets``
    say where each molecule's conformers start); default the DFT geometries. ``conformer``: which of a molecule's
    conformers (0: the first, the lowest in energy; every row must have that many)."""
    rows = np.asarray(rows)
    geo = data if geometries is None else geometries
    sizes = np.diff(geo.offsets)[rows]
    offsets = np.concatenate([[0], np.cumsum(sizes)])
    starts = getattr(geo, "position_offsets", geo.offsets)  # several conformers per molecule: where they start
    if conformer:
        if not hasattr(geo, "n_geometries") or not (geo.n_geometries[rows] > conformer).all():
            raise ValueError(f"conformer {conformer} asked of rows that do not all have {conformer + 1} conformers")
        starts = starts[:-1] + conformer * np.diff(geo.offsets)  # the k-th conformer of each: k molecules further
    src = np.concatenate([np.arange(geo.offsets[r], geo.offsets[r + 1]) for r in rows]) if len(rows) else []
    src_x = np.concatenate([np.arange(starts[r], starts[r] + n) for r, n in zip(rows, sizes, strict=True)]) \
        if len(rows) else []
    cols = [PROPERTY_NAMES.index(t) for t in targets]
    return SplitData(
        numbers=geo.numbers[src].astype(np.int64),
        positions=geo.positions[src_x].astype(np.float64),
        offsets=offsets,
        targets=data.targets_in_units()[rows][:, cols],
        qm9_rows=rows,
    )


def concat_splits(a: SplitData, b: SplitData) -> SplitData:
    """The molecules of ``a`` then those of ``b`` (frames are computed afterwards, on the whole)."""
    return SplitData(
        numbers=np.concatenate([a.numbers, b.numbers]),
        positions=np.concatenate([a.positions, b.positions]),
        offsets=np.concatenate([a.offsets, a.offsets[-1] + b.offsets[1:]]),
        targets=np.concatenate([a.targets, b.targets]),
        qm9_rows=np.concatenate([a.qm9_rows, b.qm9_rows]),
    )
