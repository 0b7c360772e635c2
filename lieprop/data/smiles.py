"""SMILES: ``.smi`` lines and CSV columns cut into :class:`SmilesRecord` s, each embedded in 3D with RDKit.

Embedding (:mod:`lieprop.data.conformers`) is seeded, so the same SMILES always gets the same geometry, in any
process. Element, size and charge are checked before embedding, so out-of-domain molecules are refused quickly.
Splitting is cheap and streams (the ``csv`` module, no pandas): memory stays constant for any number of rows.
"""

from __future__ import annotations

import csv
import re
from collections.abc import Iterator
from pathlib import Path

import numpy as np

from lieprop.data.conformers import embed, rdkit_message, rdkit_numbers, validate_embedded
from lieprop.data.molecule import Molecule
from lieprop.data.records import (
    DEFAULT_CONFORMERS,
    DEFAULT_SEED,
    ID_KEYS,
    Item,
    ParseOptions,
    ReadOptions,
    SmilesRecord,
)
from lieprop.data.textio import open_text, quote_input
from lieprop.data.validation import DEFAULT_LIMITS, MoleculeError, ValidationLimits, check_composition


def from_smiles(
    smiles: str,
    id: str | None = None,
    seed: int = DEFAULT_SEED,
    n_conformers: int = DEFAULT_CONFORMERS,
    *,
    limits: ValidationLimits = DEFAULT_LIMITS,
) -> Molecule:
    """Embed a SMILES in 3D (ETKDGv3 + MMFF94/UFF) and validate it.

    ``n_conformers`` ETKDG conformers are optimised: the lowest-energy one is the molecule's ``positions``, the
    others of the same stereoisomer its ``other_conformers``, and a prediction averages over all of them (averaging
    over 5 conformers is 3-8% more accurate on QM9's SMILES than one: docs/BENCHMARKS.md). The same SMILES, seed and
    ``n_conformers`` give identical coordinates in any process. Element, size and charge are checked
    before embedding, so out-of-domain molecules are refused quickly.

    Raises :class:`MoleculeError`: ``empty_input``, ``invalid_smiles`` (unparsable, or several
    disconnected molecules), ``unsupported_element``, ``too_many_atoms``, ``charged_molecule``,
    ``embedding_failed``, ``embedding_timeout``. A text far too long or naming too many atoms for
    ``limits.max_atoms`` is refused before RDKit parses it (:func:`check_smiles_size`).
    """
    from rdkit import Chem, rdBase

    if seed < 0:
        raise ValueError(f"seed must be >= 0 (RDKit treats negative seeds as 'random'), got {seed}")
    if n_conformers < 1:
        raise ValueError(f"n_conformers must be >= 1, got {n_conformers}")
    text = smiles.strip() if isinstance(smiles, str) else ""
    if not text:
        raise MoleculeError("empty_input", "the SMILES is empty")
    check_smiles_size(text, limits)  # before RDKit spends time and memory on a huge text
    shown = quote_input(text)
    with rdBase.CaptureErrorLog() as log:
        mol = Chem.MolFromSmiles(text)
    if mol is None:
        raise MoleculeError("invalid_smiles", f"cannot parse SMILES {shown}: {rdkit_message(log)}")
    # The hydrogens AddHs would add are counted first, so that a large molecule is refused before they exist.
    n_hydrogens = sum(atom.GetTotalNumHs() for atom in mol.GetAtoms())
    heavy = rdkit_numbers(mol)
    check_composition(np.concatenate([heavy, np.ones(n_hydrogens, dtype=heavy.dtype)]), Chem.GetFormalCharge(mol),
                      limits)
    mol = Chem.AddHs(mol)
    check_composition(rdkit_numbers(mol), Chem.GetFormalCharge(mol), limits)
    n_pieces = len(Chem.GetMolFrags(mol))
    if n_pieces > 1:
        raise MoleculeError(
            "invalid_smiles",
            f"SMILES {shown} describes {n_pieces} disconnected molecules; lieprop predicts one molecule "
            "at a time",
        )
    positions, conformer, warnings = embed(mol, seed, n_conformers, what=f"SMILES {shown}",
                                           timeout=limits.embed_timeout)
    if any(atom.GetNumRadicalElectrons() for atom in mol.GetAtoms()):
        warnings.append(RADICAL_WARNING)
    molecule = Molecule(
        rdkit_numbers(mol), positions[0], id, Chem.GetFormalCharge(mol),
        {"source": "smiles", "smiles": text, "conformer": conformer}, warnings, tuple(positions[1:]),
    )
    return validate_embedded(molecule, limits)


#: The warning of a molecule with unpaired electrons (the same for SMILES and SDF input).
RADICAL_WARNING = "out of domain: the molecule has unpaired electrons; QM9 molecules are closed-shell"
#: Characters a SMILES may have per allowed atom: ``[C@@H]`` and a ring closure are ~10; more is no molecule in range.
MAX_CHARS_PER_ATOM = 20
#: One atom of a SMILES: a bracket atom (to its ``]``, or the end of a cut text), or an organic-subset symbol.
_ATOM = re.compile(r"\[[^\]]*(?:\]|$)|Cl|Br|[BCNOPSFIbcnops]")


def check_smiles_size(text: str, limits: ValidationLimits = DEFAULT_LIMITS) -> None:
    """Refuse a SMILES that is obviously over ``limits.max_atoms`` without parsing it: ``too_many_atoms`` when its
    text names more atoms than allowed (counted in at most ``MAX_CHARS_PER_ATOM * max_atoms`` characters: every
    atom written counts one, hydrogens left implicit none, so the count never exceeds the real one), else
    ``invalid_smiles`` when it is longer than ``MAX_CHARS_PER_ATOM * max_atoms`` characters. Linear and cheap."""
    max_chars = MAX_CHARS_PER_ATOM * limits.max_atoms
    n_atoms = sum(1 for _ in _ATOM.finditer(text, 0, max_chars + 1))
    if n_atoms > limits.max_atoms:
        more = "at least " if len(text) > max_chars + 1 else ""
        raise MoleculeError(
            "too_many_atoms",
            f"the SMILES names {more}{n_atoms} atoms before hydrogens are added; the limit is {limits.max_atoms} "
            "atoms (hydrogens included)",
        )
    if len(text) > max_chars:
        raise MoleculeError(
            "invalid_smiles",
            f"the SMILES is {len(text):,} characters long; at most {max_chars} ({MAX_CHARS_PER_ATOM} per atom of the "
            f"limit of {limits.max_atoms} atoms) are accepted",
        )


def smiles_molecule(text: str, id: str, options: ParseOptions) -> Molecule:
    """A REST item's ``smiles`` as a molecule: the whole text is one SMILES (no id column, no comments)."""
    return from_smiles(text, id, options.seed, options.n_conformers, limits=options.limits)


# --------------------------------------------------------------------------------------------------
# Splitters


def split_smi(lines: Iterator[str], options: ReadOptions | None = None) -> Iterator[SmilesRecord]:
    """``.smi`` lines as records: one SMILES per line, optionally followed by whitespace and an id. Blank lines
    and ``#`` comments are skipped, as is a header line starting with ``smiles``. ``options`` is unused."""
    index = 0
    for line in lines:
        stripped = line.strip()
        if not stripped or stripped.startswith("#"):
            continue
        smiles, _, rest = stripped.partition(" ") if " " in stripped else stripped.partition("\t")
        if index == 0 and smiles.lower() in ("smiles", "smi"):
            continue
        yield SmilesRecord(index, rest.strip() or None, smiles)
        index += 1


def check_smiles_csv(source: Path | str, options: ReadOptions) -> None:
    """Read a CSV header and raise ``ValueError`` at once (before any work) for an empty input or a missing
    SMILES or id column."""
    with open_text(source, newline="", max_decompressed_bytes=options.max_decompressed_bytes) as handle:
        _columns(next(_rows(csv.reader(handle)), None), options)


def split_smiles_csv(lines: Iterator[str], options: ReadOptions) -> Iterator[SmilesRecord]:
    """CSV rows (lines read with ``newline=""``) as records, in file order, one row at a time.

    Column names match case-insensitively. Without ``options.id_column`` the first of ``id``, ``name``, ``mol_id``,
    ``molecule_id``, ``identifier``, ``title`` present is used, if any. Blank lines are no rows; a row whose
    SMILES cell is missing gets ``""`` (-> ``empty_input`` when embedded).
    """
    reader = _rows(csv.reader(lines))
    smiles_at, id_at = _columns(next(reader, None), options)
    index = 0
    for row in reader:
        if not row or not any(cell.strip() for cell in row):
            continue
        smiles = row[smiles_at].strip() if smiles_at < len(row) else ""
        ident = row[id_at].strip() if id_at is not None and id_at < len(row) else ""
        yield SmilesRecord(index, ident or None, smiles)
        index += 1


def _rows(reader: Iterator[list[str]]) -> Iterator[list[str]]:
    """A CSV reader's rows; its ``csv.Error`` (a cell over the csv module's field limit, 128 KiB) as a ``ValueError``
    naming the line, so that a hostile file stops the run with a message rather than a traceback."""
    try:
        yield from reader
    except csv.Error as exc:
        raise ValueError(f"unreadable CSV near line {getattr(reader, 'line_num', '?')}: {exc}") from None


def _columns(header: list[str] | None, options: ReadOptions) -> tuple[int, int | None]:
    """The positions of the SMILES and id columns in a CSV header (ValueError when missing)."""
    if header is None:
        raise ValueError("the CSV input is empty: expected a header row with a SMILES column")
    smiles_at = _column(header, options.smiles_column, required=True)
    assert smiles_at is not None
    id_at = _column(header, options.id_column, required=True) if options.id_column else next(
        (i for key in ID_KEYS if (i := _column(header, key, required=False)) is not None), None
    )
    return smiles_at, id_at


def _column(header: list[str], name: str, *, required: bool) -> int | None:
    names = [h.strip().lower() for h in header]
    if name.strip().lower() in names:
        return names.index(name.strip().lower())
    if required:
        raise ValueError(f"no column {name!r} in the CSV header; columns are {', '.join(map(repr, header))}")
    return None


# --------------------------------------------------------------------------------------------------
# Parser


def embed_record(record: SmilesRecord, seed: int, n_conformers: int, limits: ValidationLimits) -> Item:
    """Embed one SMILES record into an :class:`Item` (id: the record's, else its index); never raises."""
    ident = record.id or str(record.index)
    try:
        return Item(record.index, ident, from_smiles(record.smiles, ident, seed, n_conformers, limits=limits))
    except MoleculeError as exc:
        return Item(record.index, ident, error=exc)
    except Exception as exc:  # an RDKit failure we did not foresee must not end the batch
        return Item(record.index, ident, error=MoleculeError(
            "embedding_failed", f"SMILES {quote_input(record.smiles)}: {type(exc).__name__}: {quote_input(str(exc))}"
        ))


def parse_smiles_record(index: int, record: SmilesRecord, options: ParseOptions) -> Item:
    """:func:`embed_record` with the registry's parser signature (the record carries its own index)."""
    return embed_record(record, options.seed, options.n_conformers, options.limits)
