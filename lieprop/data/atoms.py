"""Molecules from atoms already in memory: ASE ``Atoms`` and arrays of atomic numbers and positions.

No text to parse, so no record format: these are the library's and the REST ``numbers`` + ``positions`` inputs,
and the last step of the XYZ reader (ASE parses a frame into ``Atoms``).
"""

from __future__ import annotations

from typing import Any

import numpy as np

from lieprop.data.molecule import Molecule
from lieprop.data.records import ID_KEYS
from lieprop.data.validation import DEFAULT_LIMITS, MoleculeError, ValidationLimits, validate


def from_atoms(atoms: Any, *, id: str | None = None, limits: ValidationLimits = DEFAULT_LIMITS) -> Molecule:
    """An ASE ``Atoms`` object as a validated molecule.

    The id is ``id`` or ``atoms.info["id"]`` / ``["name"]``; the charge is ``atoms.info["charge"]`` when
    present, else the rounded sum of the initial charges. Raises :class:`MoleculeError`.
    """
    return molecule_from_atoms(atoms, id, {"source": "atoms", "conformer": None}, limits)


def from_arrays(
    numbers: Any,
    positions: Any,
    *,
    id: str | None = None,
    charge: int = 0,
    limits: ValidationLimits = DEFAULT_LIMITS,
) -> Molecule:
    """Atomic numbers and positions (Å) as a validated molecule (REST ``{"numbers", "positions"}``).

    Arrays of the wrong shape or type -> ``invalid_geometry``; other errors as :func:`validate`.
    """
    try:
        z = np.asarray(numbers)
        if z.size and not np.issubdtype(z.dtype, np.integer):
            raise ValueError("atomic numbers must be integers")
        molecule = Molecule(z, np.asarray(positions, dtype=np.float64), id, int(charge),
                            {"source": "atoms", "conformer": None})
    except (TypeError, ValueError) as exc:
        message = f"cannot build a molecule from the arrays given: {exc}"
        raise MoleculeError("invalid_geometry", message) from None
    return validate(molecule, limits)


def id_from_info(info: dict[str, Any]) -> str | None:
    """The first of :data:`~lieprop.data.records.ID_KEYS` in an ASE ``info`` dict (any case), as a string."""
    lowered = {str(k).lower(): v for k, v in info.items()}
    for key in ID_KEYS:
        value = lowered.get(key)
        if value is not None and not isinstance(value, (bool, np.bool_)):
            return str(value)
    return None


def molecule_from_atoms(atoms: Any, id: str | None, provenance: dict[str, Any],
                        limits: ValidationLimits) -> Molecule:
    """ASE ``Atoms`` as a validated molecule with the given provenance (charge: ``info["charge"]``, else the
    rounded sum of the initial charges; id: ``id``, else the ``info`` one)."""
    info = getattr(atoms, "info", {}) or {}
    charge = info.get("charge")
    if charge is None:
        charge = float(np.sum(atoms.get_initial_charges())) if len(atoms) else 0.0
    molecule = Molecule(
        np.asarray(atoms.numbers), np.asarray(atoms.positions), id or id_from_info(info),
        int(round(float(charge))), provenance,
    )
    return validate(molecule, limits)
