"""The prediction contract: what a model hands to everything downstream (docs/DESIGN.md, "Prediction").

A :class:`Predictions` holds a batch of molecules' outputs in the model's target units (the bundle's ``units``):

* ``value`` (n, T): the prediction, the mean over members for an ensemble;
* ``std`` (n, T) or None: the spread of the members (sample standard deviation) or another uncertainty estimate;
* ``lower`` / ``upper`` (n, T) or None: a prediction interval at coverage ``level`` (e.g. 0.9), when the model
  has calibrated one;
* ``members`` (M, n, T) or None: each ensemble member's own values.

Indexing it gives one molecule's :class:`Prediction`. The dynamic batcher, file scoring, REST jobs, the Ray engine
and the library pass these along unchanged, and one result builder (:mod:`lieprop.inference`) turns them into the
REST result shape, so a new kind of uncertainty needs no change anywhere in between.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from dataclasses import dataclass

import numpy as np


@dataclass(frozen=True)
class Prediction:
    """One molecule's prediction: arrays of shape (T,) (``members``: (M, T)); None where the model has no such
    estimate."""

    value: np.ndarray
    std: np.ndarray | None = None
    lower: np.ndarray | None = None
    upper: np.ndarray | None = None
    level: float | None = None
    members: np.ndarray | None = None

    def __post_init__(self) -> None:
        if (self.lower is None) != (self.upper is None) or (self.lower is not None and self.level is None):
            raise ValueError("an interval needs lower, upper and its coverage level")

    @property
    def has_interval(self) -> bool:
        return self.lower is not None


@dataclass(frozen=True)
class Predictions:
    """A batch of molecules' predictions (see the module doc); ``len`` is the number of molecules."""

    value: np.ndarray
    std: np.ndarray | None = None
    lower: np.ndarray | None = None
    upper: np.ndarray | None = None
    level: float | None = None
    members: np.ndarray | None = None

    def __post_init__(self) -> None:
        for name in ("std", "lower", "upper"):
            part = getattr(self, name)
            if part is not None and part.shape != self.value.shape:
                raise ValueError(f"{name} has shape {part.shape}, value {self.value.shape}")
        if self.members is not None and self.members.shape[1:] != self.value.shape:
            raise ValueError(f"members have shape {self.members.shape}, value {self.value.shape}")
        if (self.lower is None) != (self.upper is None) or (self.lower is not None and self.level is None):
            raise ValueError("an interval needs lower, upper and its coverage level")

    def __len__(self) -> int:
        return int(self.value.shape[0])

    def __getitem__(self, i: int) -> Prediction:
        def row(a: np.ndarray | None) -> np.ndarray | None:
            return None if a is None else a[i]

        return Prediction(self.value[i], row(self.std), row(self.lower), row(self.upper), self.level,
                          None if self.members is None else self.members[:, i])

    def __iter__(self) -> Iterator[Prediction]:
        return (self[i] for i in range(len(self)))

    @classmethod
    def from_members(cls, members: np.ndarray) -> Predictions:
        """(M, n, T) member values -> their mean, and their sample standard deviation when M > 1."""
        members = np.asarray(members, dtype=np.float64)
        std = members.std(0, ddof=1) if members.shape[0] > 1 else None
        return cls(members.mean(0), std, members=members if members.shape[0] > 1 else None)


def as_prediction(row: Prediction | np.ndarray | Sequence[float]) -> Prediction:
    """A :class:`Prediction` from a prediction or a bare row of values (what predict functions returned before
    the contract existed; still accepted from user-supplied predict functions)."""
    return row if isinstance(row, Prediction) else Prediction(np.asarray(row, dtype=np.float64))
