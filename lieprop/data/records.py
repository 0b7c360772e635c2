"""What readers pass around: raw records cut from a text, the options that parse them, and the :class:`Item` outcome.

Everything here is small, immutable and picklable, because records and options cross process boundaries (the
embedding pool of :mod:`lieprop.data.pool`, the job workers of :mod:`lieprop.scoring.records`, Ray actors) and items
come back the same way.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, NamedTuple

from lieprop.data.molecule import Molecule
from lieprop.data.validation import DEFAULT_LIMITS, MoleculeError, ValidationLimits

#: Seed for ETKDG embedding; fixed so that a SMILES always gets the same geometry.
DEFAULT_SEED = 0xF00D
#: ETKDG conformers generated per SMILES or 2D MOL block; a prediction averages over them (lieprop.data.conformers).
DEFAULT_CONFORMERS = 5
#: The most conformers a REST request or a scoring job may ask for per molecule (each costs an embedding and a pass).
MAX_CONFORMERS = 20
#: Keys that name a record (CSV columns, SDF data fields, extxyz comment keys, ASE ``info``), in order of preference.
ID_KEYS = ("id", "name", "mol_id", "molecule_id", "identifier", "title")


@dataclass(frozen=True)
class Item:
    """One input record's outcome: ``molecule`` when it was read and validated, else ``error``.

    ``index`` is the record's 0-based position in its input (frame, SDF record, data row, SMILES line);
    ``id`` the record's own name when it has one, else ``str(index)``.
    """

    index: int
    id: str | None
    molecule: Molecule | None = None
    error: MoleculeError | None = None

    @property
    def ok(self) -> bool:
        return self.error is None


class SmilesRecord(NamedTuple):
    """A SMILES waiting to be embedded: its 0-based row index, optional id, and the SMILES text."""

    index: int
    id: str | None
    smiles: str


class RawRecord(NamedTuple):
    """One raw record cut from a text stream: its text, the line it starts on, a framing error when it
    could not be cut cleanly, and (XYZ) its comment line, which may name it."""

    text: str
    line: int
    error: MoleculeError | None = None
    comment: str | None = None


@dataclass(frozen=True)
class ParseOptions:
    """How records are turned into molecules: the validation limits, the embedding seed and how many conformers
    to generate for a SMILES or 2D MOL block (the lowest-energy one is the geometry; predictions average over all).
    Hashable, so that a worker can cache outcomes by it."""

    limits: ValidationLimits = DEFAULT_LIMITS
    seed: int = DEFAULT_SEED
    n_conformers: int = DEFAULT_CONFORMERS


@dataclass(frozen=True)
class ReadOptions:
    """How a file is cut into records, for the formats that need to be told: which CSV column holds the SMILES
    (any case) and which the ids (None: the first of :data:`ID_KEYS` present, if any); ``max_decompressed_bytes``:
    how much a ``.gz`` file may expand to (None: no limit; more -> ``ValueError``)."""

    smiles_column: str = "smiles"
    id_column: str | None = None
    max_decompressed_bytes: int | None = None


#: A per-record parser: ``(index, record, options) -> Item``. Never raises for a bad record (the failure becomes
#: the item's error). Must be a module-level function: worker processes unpickle it by its module path.
RecordParser = Callable[[int, Any, ParseOptions], Item]


def parse_record(parse: RecordParser, index: int, record: Any, options: ParseOptions) -> Item:
    """``parse(index, record, options)``, except for a record that is already a :class:`MoleculeError` (an input
    without records stands for one ``empty_input`` record): that becomes the item's error, named by its index."""
    if isinstance(record, MoleculeError):
        return Item(index, str(index), error=record)
    return parse(index, record, options)
