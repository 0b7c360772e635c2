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

from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np


@dataclass(frozen=True)
class _Estimates:
    """The fields of a prediction, for one molecule or a batch (see the module doc)."""

    value: np.ndarray
    std: np.ndarray | None = None
    lower: np.ndarray | None = None
    upper: np.ndarray | None = None
    level: float | None = None
    members: np.ndarray | None = None


@dataclass(frozen=True)
class Prediction(_Estimates):
    """One molecule's prediction: arrays of shape (T,) (``members``: (M, T)); None where the model has no such
    estimate."""

    def __post_init__(self) -> None:
        _check_interval(self.lower, self.upper, self.level)

    @property
    def has_interval(self) -> bool:
        return self.lower is not None


@dataclass(frozen=True)
class Predictions(_Estimates):
    """A batch of molecules' predictions (see the module doc); ``len`` is the number of molecules."""

    def __post_init__(self) -> None:
        for name in ("std", "lower", "upper"):
            part = getattr(self, name)
            if part is not None and part.shape != self.value.shape:
                raise ValueError(f"{name} has shape {part.shape}, value {self.value.shape}")
        if self.members is not None and self.members.shape[1:] != self.value.shape:
            raise ValueError(f"members have shape {self.members.shape}, value {self.value.shape}")
        _check_interval(self.lower, self.upper, self.level)

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


def _check_interval(lower: np.ndarray | None, upper: np.ndarray | None, level: float | None) -> None:
    if (lower is None) != (upper is None) or (lower is not None and level is None):
        raise ValueError("an interval needs lower, upper and its coverage level")


#: (numbers per molecule, positions per molecule) -> one prediction (or row of values) per molecule.
PredictFn = Callable[[list[np.ndarray], list[np.ndarray]], Sequence[Any]]


def predict_each(predict: PredictFn, numbers: list[np.ndarray], positions: list[np.ndarray],
                 on_retry: Callable[[BaseException], None] | None = None) -> list[Prediction | BaseException]:
    """One :class:`Prediction` (or the exception it met) per molecule, from one call of ``predict``; when that call
    fails, each molecule is predicted alone, so a molecule that breaks the model fails only itself. Used by the
    dynamic batcher and file scoring alike. Only ``Exception`` is caught (an interrupt passes through);
    ``on_retry(exc)`` is told before the molecules are retried one by one."""
    try:
        return _rows(predict, numbers, positions)
    except Exception as exc:
        if len(numbers) == 1:
            return [exc]
        if on_retry is not None:
            on_retry(exc)
    out: list[Prediction | BaseException] = []
    for z, x in zip(numbers, positions, strict=True):
        try:
            out.extend(_rows(predict, [z], [x]))
        except Exception as exc:
            out.append(exc)
    return out


def _rows(predict: PredictFn, numbers: list[np.ndarray], positions: list[np.ndarray]) -> list[Prediction]:
    rows = [as_prediction(r) for r in predict(numbers, positions)]
    if len(rows) != len(numbers):
        raise RuntimeError(f"predict returned {len(rows)} rows for {len(numbers)} molecules")
    return rows


def as_prediction(row: Prediction | np.ndarray | Sequence[float]) -> Prediction:
    """A :class:`Prediction` from a prediction or a bare row of values (what predict functions returned before
    the contract existed; still accepted from user-supplied predict functions)."""
    return row if isinstance(row, Prediction) else Prediction(np.asarray(row, dtype=np.float64))
