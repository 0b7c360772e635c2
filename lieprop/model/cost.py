"""What a molecule will cost the model, estimated before any model work: for admission and scheduling.

A model's time on one molecule is the network's time on each of its frames (:mod:`lieprop.model.frames`), times the
evaluations per frame (an ensemble's members, and the poses of a pose spread), plus merging identical frames
(:meth:`~lieprop.model.frames.Frames.distinct`, which compares every pair of frames). One frame of ``n`` atoms costs
about ``MS_PER_PAIR * n * min(n, nbhd) + MS_PER_ATOM * n``: the convolution looks at every pair of atoms within the
neighbourhood, the rest of the network at every atom.

The unit is the **reference millisecond**: the constants are fitted to the bundled network (LieConv T3, width 256,
depth 6) on one core of the CPU in docs/BENCHMARKS.md ("Under hostile load"), so a cost reads as model time there.
On another device or with another network the time per unit differs by a constant factor, and the estimate stays
deterministic: the same molecule always gets the same cost, whatever the load. Typical costs with the bundled
ensemble of 3: water 1, ethanol 4, a QM9 molecule 10 on average, cubane 113, the largest QM9 costs about 400; a
near-symmetric 24-carbon cage with 288 frames about 2400.

The frame count used is that of :func:`~lieprop.model.frames.molecule_frames` before identical frames are merged: an
upper bound, cheap to compute (well under a millisecond for an ordinary molecule, tens of milliseconds for a cage).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np

from lieprop.model.frames import molecule_frames

#: Reference milliseconds per pair of atoms in one frame, per network evaluation.
MS_PER_PAIR = 0.0030
#: Reference milliseconds per atom in one frame, per network evaluation.
MS_PER_ATOM = 0.028
#: Reference milliseconds per pair of frames compared when identical frames are merged (once per molecule).
MS_PER_FRAME_PAIR = 0.0045


def evaluations(model: Any) -> int:
    """Network evaluations per frame: the members of an ensemble (1 for one network), times 1 + the poses of a pose
    spread (``spread_poses`` >= 2)."""
    members = len(getattr(model, "members", ())) or 1
    poses = int(getattr(model, "spread_poses", 0) or 0)
    return members * (1 + poses if poses >= 2 else 1)


def frame_count(model: Any, numbers: np.ndarray, positions: np.ndarray) -> int:
    """How many frames ``model`` evaluates for this molecule, at most (1 for an intrinsically invariant family)."""
    if getattr(getattr(model, "arch", None), "invariance", "frames") != "frames":
        return 1
    return len(molecule_frames(numbers, positions, fix_signs=getattr(model, "fix_signs", True)))


def frame_cost(n_atoms: int, nbhd: int | None = None) -> float:
    """Reference milliseconds of one network evaluation of one frame of ``n_atoms`` atoms."""
    pairs = n_atoms * (n_atoms if nbhd is None else min(n_atoms, nbhd))
    return MS_PER_PAIR * pairs + MS_PER_ATOM * n_atoms


@dataclass(frozen=True)
class Cost:
    """A molecule's estimated model time ``ms`` (reference milliseconds) and the ``frames`` it was counted for."""

    frames: int
    ms: float


def molecule_cost(model: Any, numbers: np.ndarray, positions: np.ndarray) -> Cost:
    """The estimated model time of one molecule for ``model`` (see the module doc)."""
    frames = frame_count(model, numbers, positions)
    nbhd = getattr(getattr(model, "cfg", None), "nbhd", None)
    per_frame = frame_cost(len(numbers), nbhd if isinstance(nbhd, int) else None)
    return Cost(frames, frames * evaluations(model) * per_frame + MS_PER_FRAME_PAIR * frames * (frames - 1) / 2)
