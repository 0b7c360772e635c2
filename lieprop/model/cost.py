"""What a molecule will cost the model, estimated before any model work: for admission and scheduling.

A model's time on one molecule is the network's time on each of its frames (:mod:`lieprop.model.frames`), times the
evaluations per frame (an ensemble's members, and the poses of a pose spread). One frame of ``n`` atoms costs about
``MS_PER_PAIR * n * min(n, nbhd) + MS_PER_ATOM * n``: the convolution looks at every pair of atoms within the
neighbourhood, the rest of the network at every atom.

The unit is the **reference millisecond**: the constants are fitted to the bundled network (LieConv T3, width 256,
depth 6) on one core of the 2-core CPU of docs/BENCHMARKS.md ("Under hostile load"), frames batched, so a cost reads
as model time there. On another device or with another network the time per unit differs by a constant factor;
the estimate stays deterministic (the same molecule always costs the same, whatever the load). With the bundled
ensemble of 3: water 1, ethanol 1, a QM9 molecule 5 on average (99.9% under 50), cubane (96 frames) 350, QM9's
costliest 424; a near-symmetric 24-carbon cage of 288 frames 2070. These are per geometry: a SMILES is predicted in
each of its conformers (lieprop.service.admission counts them all).

The frame count is :func:`~lieprop.model.frames.frame_count_bound`: an upper bound of the frames before identical
ones are merged, computed without building them (well under a millisecond for a cage whose frames take tens); on
QM9 it is exact for 99.5% of molecules and at most twice the count.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np

from lieprop.model.frames import frame_count_bound

#: Reference milliseconds per pair of atoms in one frame, per network evaluation.
MS_PER_PAIR = 0.0030
#: Reference milliseconds per atom in one frame, per network evaluation.
MS_PER_ATOM = 0.028


@dataclass(frozen=True)
class Cost:
    """A molecule's estimated model time ``ms`` (reference milliseconds) and the ``frames`` it was counted for."""

    frames: int
    ms: float


@dataclass(frozen=True)
class CostModel:
    """What the estimate needs to know of a model (small and picklable: worker processes estimate too).

    ``frames``: the family is made invariant by frames (else it sees each molecule once); ``evaluations``: network
    evaluations per frame; ``nbhd``: the convolution's neighbourhood size, if bounded."""

    frames: bool = True
    fix_signs: bool = True
    evaluations: int = 1
    nbhd: int | None = None

    @classmethod
    def of(cls, model: Any) -> CostModel:
        """The cost model of a :class:`~lieprop.model.predictor.PropertyModel` or an ensemble of them."""
        members = len(getattr(model, "members", ())) or 1
        poses = int(getattr(model, "spread_poses", 0) or 0)
        nbhd = getattr(getattr(model, "cfg", None), "nbhd", None)
        return cls(frames=getattr(getattr(model, "arch", None), "invariance", "frames") == "frames",
                   fix_signs=bool(getattr(model, "fix_signs", True)),
                   evaluations=members * (1 + poses if poses >= 2 else 1),
                   nbhd=nbhd if isinstance(nbhd, int) else None)

    def frame_cost(self, n_atoms: int) -> float:
        """Reference milliseconds of one network evaluation of one frame of ``n_atoms`` atoms."""
        pairs = n_atoms * (n_atoms if self.nbhd is None else min(n_atoms, self.nbhd))
        return MS_PER_PAIR * pairs + MS_PER_ATOM * n_atoms

    def estimate(self, numbers: np.ndarray, positions: np.ndarray) -> Cost:
        """The estimated model time of one molecule (see the module doc)."""
        frames = frame_count_bound(numbers, positions, self.fix_signs) if self.frames else 1
        return Cost(frames, frames * self.evaluations * self.frame_cost(len(numbers)))


def molecule_cost(model: Any, numbers: np.ndarray, positions: np.ndarray) -> Cost:
    """The estimated model time of one molecule for ``model``: ``CostModel.of(model).estimate(...)``."""
    return CostModel.of(model).estimate(numbers, positions)
