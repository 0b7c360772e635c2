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

from lieprop.data.duplicates import copy_of


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

    def select(self, which: np.ndarray) -> Predictions:
        """The molecules ``which`` picks (a boolean mask or indices), as a batch of their own."""
        def part(a: np.ndarray | None) -> np.ndarray | None:
            return None if a is None else a[which]

        return Predictions(self.value[which], part(self.std), part(self.lower), part(self.upper), self.level,
                           None if self.members is None else self.members[:, which])

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


@dataclass(frozen=True)
class ConformerInputs:
    """The model's inputs for a batch of molecules with their conformers (:func:`conformer_inputs`): each distinct
    geometry once, ``numbers[i]`` and ``positions[i]``, molecule after molecule.

    ``counts`` says how many geometries each molecule has (copies included), ``kept`` which of all the geometries
    (numbered molecule after molecule, as :attr:`Molecule.geometries` lists them) each input is, and ``source``,
    for every geometry, the input whose prediction stands for it. :meth:`average` turns one prediction per input
    into one per molecule."""

    numbers: list[np.ndarray]
    positions: list[np.ndarray]
    counts: list[int]
    kept: list[int]
    source: list[int]

    def average(self, rows: Sequence[Prediction | BaseException]) -> list[Prediction | BaseException]:
        """One prediction per molecule from one per input (:func:`average_conformers`, each copy of a geometry
        counted with the prediction of the geometry it copies)."""
        if len(rows) != len(self.numbers):
            raise ValueError(f"{len(rows)} rows for {len(self.numbers)} model inputs")
        return average_conformers([rows[i] for i in self.source], self.counts)


def conformer_inputs(molecules: Sequence[Any], distinct: bool = True,
                     copies: Sequence[Sequence[int] | None] | None = None) -> ConformerInputs:
    """The model's inputs for ``molecules`` (objects with ``numbers`` and ``geometries``, e.g.
    :class:`lieprop.data.molecule.Molecule`): one (numbers, positions) per geometry, molecule after molecule; with
    ``distinct`` (the default) a geometry that copies an earlier one of its molecule (the same conformer turned,
    mirrored or with like atoms swapped: :func:`lieprop.data.duplicates.copy_of`) is left out, and the earlier
    one's prediction counts for it. ``copies``: each molecule's :func:`~lieprop.data.duplicates.copy_of`, when
    already known (None, or a None entry: found here)."""
    numbers: list[np.ndarray] = []
    positions: list[np.ndarray] = []
    counts: list[int] = []
    kept: list[int] = []
    source: list[int] = []
    start = 0
    for i, m in enumerate(molecules):
        geometries = m.geometries
        known = None if copies is None else copies[i]
        kinds = range(len(geometries)) if not distinct else copy_of(m.numbers, geometries) if known is None else known
        first: dict[int, int] = {}
        for k, (g, c) in enumerate(zip(geometries, kinds, strict=True)):
            if c == k:
                first[k] = len(numbers)
                numbers.append(m.numbers)
                positions.append(g)
                kept.append(start + k)
            source.append(first[c])
        counts.append(len(geometries))
        start += len(geometries)
    return ConformerInputs(numbers, positions, counts, kept, source)


def average_conformers(rows: Sequence[Prediction | BaseException], counts: Sequence[int]
                       ) -> list[Prediction | BaseException]:
    """One prediction per molecule from one per geometry (``rows`` in the order of :func:`conformer_inputs`,
    ``counts`` its counts): the mean over a molecule's conformers of the value and of each member's values.

    The spread covers both the members and the conformers, ``sqrt(mean_k std_k^2 + var_k value_k)`` (the law of
    total variance, conformers weighted equally): a molecule whose conformers disagree (a flexible chain, a
    rotamer that moves the dipole) is less certain than its members alone say. A molecule with one geometry keeps
    its prediction as it is; one whose geometry failed in the model fails with that exception. Intervals are made
    after averaging (calibration), so a row that already has one is a ``ValueError``.
    """
    if sum(counts) != len(rows):
        raise ValueError(f"{len(rows)} rows for {sum(counts)} geometries")
    out: list[Prediction | BaseException] = []
    start = 0
    for k in counts:
        group, start = rows[start:start + k], start + k
        failed = next((r for r in group if isinstance(r, BaseException)), None)
        if failed is not None or k == 1:
            out.append(failed if failed is not None else group[0])
            continue
        if any(r.lower is not None for r in group):
            raise ValueError("conformers are averaged before intervals are made; these predictions have intervals")
        values = np.stack([r.value for r in group])
        value = values.mean(0)
        std = None
        if all(r.std is not None for r in group):
            std = np.sqrt(np.mean([r.std**2 for r in group], axis=0) + values.var(0))
        members = np.stack([r.members for r in group]).mean(0) if all(r.members is not None for r in group) else None
        out.append(Prediction(value, std, members=members))
    return out


def stack_predictions(rows: Sequence[Prediction]) -> Predictions:
    """One molecule's predictions after another as a batch (a field is kept only when every row has it)."""
    def stacked(name: str, axis: int = 0) -> np.ndarray | None:
        parts = [getattr(r, name) for r in rows]
        return None if any(p is None for p in parts) else np.stack(parts, axis=axis)

    level = rows[0].level if rows else None
    lower, upper = stacked("lower"), stacked("upper")
    return Predictions(np.stack([r.value for r in rows]) if rows else np.zeros((0, 0)), stacked("std"),
                       lower, upper, level if lower is not None else None, stacked("members", axis=1))


def predict_molecules(model: Any, molecules: Sequence[Any], batch_size: int = 128) -> Predictions:
    """``model.predictions`` of ``molecules`` (objects with ``numbers`` and ``geometries``), each averaged over its
    geometries (:func:`average_conformers`): what a result reports before calibration."""
    inputs = conformer_inputs(molecules)
    raw = model.predictions(inputs.numbers, inputs.positions, batch_size=batch_size)
    if not molecules:
        return raw
    return stack_predictions(inputs.average(list(raw)))  # type: ignore[arg-type]: no exceptions here
