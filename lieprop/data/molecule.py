"""The molecule record that flows from readers to the model."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np


@dataclass(frozen=True, eq=False)
class Molecule:
    """One molecule: atomic numbers and Cartesian positions in Å, plus where the geometry came from.

    Immutable: arrays are stored read-only copies. ``provenance`` records how the geometry was made
    (``{"source": "smiles", "conformer": {"method": "ETKDGv3", "seed": 42, "force_field": "MMFF94"}}``,
    ``{"source": "xyz"}``, ...). ``charge`` is the total formal charge (QM9 molecules are neutral).

    ``other_conformers``: more geometries of the same molecule (same atoms, same order) that lieprop generated next
    to ``positions`` (its lowest-energy conformer of a SMILES or 2D MOL block); a prediction averages over all of
    :attr:`geometries` (:func:`lieprop.model.prediction.average_conformers`). Empty for a geometry the user gave.
    """

    numbers: np.ndarray
    positions: np.ndarray
    id: str | None = None
    charge: int = 0
    provenance: dict[str, Any] = field(default_factory=dict)
    warnings: tuple[str, ...] = ()
    other_conformers: tuple[np.ndarray, ...] = ()

    def __post_init__(self) -> None:
        numbers = np.array(self.numbers, dtype=np.int64).reshape(-1)
        positions = np.array(self.positions, dtype=np.float64).reshape(-1, 3)
        if positions.shape[0] != numbers.shape[0]:
            raise ValueError(f"{numbers.shape[0]} atomic numbers but {positions.shape[0]} positions")
        numbers.setflags(write=False)
        positions.setflags(write=False)
        object.__setattr__(self, "numbers", numbers)
        object.__setattr__(self, "positions", positions)
        object.__setattr__(self, "warnings", tuple(self.warnings))
        others = []
        for conformer in self.other_conformers:
            conformer = np.array(conformer, dtype=np.float64).reshape(-1, 3)
            if conformer.shape != positions.shape:
                raise ValueError(f"a conformer has {conformer.shape[0]} positions, the molecule {numbers.shape[0]} "
                                 "atoms")
            conformer.setflags(write=False)
            others.append(conformer)
        object.__setattr__(self, "other_conformers", tuple(others))

    def __reduce__(self):
        # Rebuild through __init__ so that arrays stay read-only after pickling (process pools).
        fields = (self.numbers, self.positions, self.id, self.charge, self.provenance, self.warnings,
                  self.other_conformers)
        return (type(self), fields)

    @property
    def n_atoms(self) -> int:
        return int(self.numbers.shape[0])

    @property
    def geometries(self) -> tuple[np.ndarray, ...]:
        """Every geometry a prediction of this molecule averages over: ``positions``, then ``other_conformers``."""
        return (self.positions, *self.other_conformers)

    @property
    def n_heavy(self) -> int:
        return int((self.numbers > 1).sum())

    def with_warnings(self, *extra: str) -> Molecule:
        """A copy with more warnings attached."""
        return Molecule(self.numbers, self.positions, self.id, self.charge, dict(self.provenance),
                        self.warnings + tuple(extra), self.other_conformers)
