"""Readers: XYZ / extxyz, SDF / MOL, SMILES, CSV of SMILES and ASE Atoms -> validated :class:`Molecule`.

Batch readers yield one :class:`Item` per input record, in input order: a molecule or a typed
:class:`~lieprop.data.validation.MoleculeError`, so one bad record never stops the rest. Single-molecule
functions (:func:`from_smiles`, :func:`from_atoms`, :func:`from_arrays`) return a molecule or raise.

Sources: a ``pathlib.Path`` (or any ``os.PathLike``) is a file, ``bytes`` are file contents, and a
``str`` is contents when it contains a newline and a file name otherwise. Pass ``text=True`` to treat
a ``str`` as contents whatever it holds; a service handing user input to a reader must do so, or a
request could name a file on the server. Files ending in ``.gz`` are decompressed on the fly.

SMILES become 3D with RDKit: ETKDGv3 with a fixed seed (same SMILES, same seed -> same coordinates, in
any process), then MMFF94 (UFF where MMFF lacks parameters). A 2D MOL block (no "3D" flag and all
z = 0) is embedded the same way and flagged with a warning, since a flat drawing is no geometry a
model trained on DFT-relaxed structures should see.
"""

from __future__ import annotations

import contextlib
import csv
import gzip
import io
import multiprocessing
import os
import re
from collections import deque
from collections.abc import Callable, Iterable, Iterator
from concurrent.futures import Executor, Future, ProcessPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any, NamedTuple, TextIO

import numpy as np

from lieprop.data.elements import SYMBOLS, atomic_number
from lieprop.data.molecule import Molecule
from lieprop.data.validation import (
    DEFAULT_LIMITS,
    MoleculeError,
    ValidationLimits,
    check_composition,
    validate,
)

#: Seed for ETKDG embedding; fixed so that a SMILES always gets the same geometry.
DEFAULT_SEED = 0xF00D
#: Formats :func:`read_file` understands (``format=`` values) and the extensions that select them.
FORMATS: dict[str, tuple[str, ...]] = {
    "xyz": (".xyz",),
    "extxyz": (".extxyz",),
    "sdf": (".sdf", ".sd"),
    "mol": (".mol",),
    "smi": (".smi", ".smiles"),
    "csv": (".csv",),
}
_ID_KEYS = ("id", "name", "mol_id", "molecule_id", "identifier", "title")
Source = str | bytes | os.PathLike


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


# --------------------------------------------------------------------------------------------------
# Single molecules


def from_smiles(
    smiles: str,
    id: str | None = None,
    seed: int = DEFAULT_SEED,
    n_conformers: int = 1,
    *,
    limits: ValidationLimits = DEFAULT_LIMITS,
) -> Molecule:
    """Embed a SMILES in 3D (ETKDGv3 + MMFF94/UFF) and validate it.

    With ``n_conformers > 1`` the lowest-energy optimised conformer is kept. The same SMILES, seed and
    ``n_conformers`` give identical coordinates in any process. Element, size and charge are checked
    before embedding, so out-of-domain molecules are refused quickly.

    Raises :class:`MoleculeError`: ``empty_input``, ``invalid_smiles`` (unparsable, or several
    disconnected molecules), ``unsupported_element``, ``too_many_atoms``, ``charged_molecule``,
    ``embedding_failed``.
    """
    from rdkit import Chem, rdBase

    if seed < 0:
        raise ValueError(f"seed must be >= 0 (RDKit treats negative seeds as 'random'), got {seed}")
    if n_conformers < 1:
        raise ValueError(f"n_conformers must be >= 1, got {n_conformers}")
    text = smiles.strip() if isinstance(smiles, str) else ""
    if not text:
        raise MoleculeError("empty_input", "the SMILES is empty")
    with rdBase.CaptureErrorLog() as log:
        mol = Chem.MolFromSmiles(text)
    if mol is None:
        raise MoleculeError("invalid_smiles", f"cannot parse SMILES {text!r}: {_rdkit_message(log)}")
    mol = Chem.AddHs(mol)
    check_composition(_rdkit_numbers(mol), Chem.GetFormalCharge(mol), limits)
    n_pieces = len(Chem.GetMolFrags(mol))
    if n_pieces > 1:
        raise MoleculeError(
            "invalid_smiles",
            f"SMILES {text!r} describes {n_pieces} disconnected molecules; lieprop predicts one molecule "
            "at a time",
        )
    positions, conformer, warnings = _embed(mol, seed, n_conformers, what=f"SMILES {text!r}")
    molecule = Molecule(
        _rdkit_numbers(mol), positions, id, Chem.GetFormalCharge(mol),
        {"source": "smiles", "smiles": text, "conformer": conformer}, warnings,
    )
    return _validate_embedded(molecule, limits)


def from_atoms(atoms: Any, *, id: str | None = None, limits: ValidationLimits = DEFAULT_LIMITS) -> Molecule:
    """An ASE ``Atoms`` object as a validated molecule.

    The id is ``id`` or ``atoms.info["id"]`` / ``["name"]``; the charge is ``atoms.info["charge"]`` when
    present, else the rounded sum of the initial charges. Raises :class:`MoleculeError`.
    """
    return _molecule_from_atoms(atoms, id, {"source": "atoms", "conformer": None}, limits)


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


# --------------------------------------------------------------------------------------------------
# Batch readers


def read_xyz(source: Source, *, limits: ValidationLimits = DEFAULT_LIMITS, text: bool | None = None
             ) -> Iterator[Item]:
    """Items from an XYZ or extended-XYZ file, one per frame, through ASE.

    Frames are cut apart by their atom-count lines before parsing, so a broken frame becomes one
    ``invalid_xyz`` item and the frames after it still come through. Unknown element symbols ->
    ``unsupported_element``; an empty input -> one ``empty_input`` item. Atomic numbers in place of
    symbols are accepted. The id is the extxyz ``id``/``name`` key, else the comment line when it is a
    single word (``gdb 17 ...`` QM9 comments give ``gdb_17``), else the frame index.
    """
    return _read_records(_resolve(source, text), split_xyz_frames, xyz_item, limits, "XYZ frame")


def read_sdf(
    source: Source,
    *,
    limits: ValidationLimits = DEFAULT_LIMITS,
    seed: int = DEFAULT_SEED,
    text: bool | None = None,
) -> Iterator[Item]:
    """Items from an SDF file or a single MOL block, through RDKit, one per record.

    3D coordinates are kept. Implicit hydrogens are added with coordinates
    (``provenance["hydrogens_added"]``). A 2D block is embedded like a SMILES (``seed``) and warned
    about. The id is the title line, else an ``id``/``name`` data field, else the record index.
    Codes: ``invalid_sdf`` (RDKit cannot read or sanitise the record), ``embedding_failed`` (2D
    blocks), ``empty_input``, and :func:`validate`'s.
    """
    def item(index: int, block: str, lim: ValidationLimits) -> Item:
        return sdf_item(index, block, lim, seed)

    return _read_records(_resolve(source, text), split_sdf_records, item, limits, "SDF record")


def read_smi(source: Source, *, text: bool | None = None) -> Iterator[SmilesRecord]:
    """SMILES records from a ``.smi`` file: one SMILES per line, optionally followed by whitespace and an
    id. Blank lines and ``#`` comments are skipped, as is a header line starting with ``smiles``."""
    resolved = _resolve(source, text)

    def records() -> Iterator[SmilesRecord]:
        with open_text(resolved) as handle:
            index = 0
            for line in handle:
                stripped = line.strip()
                if not stripped or stripped.startswith("#"):
                    continue
                smiles, _, rest = stripped.partition(" ") if " " in stripped else stripped.partition("\t")
                if index == 0 and smiles.lower() in ("smiles", "smi"):
                    continue
                yield SmilesRecord(index, rest.strip() or None, smiles)
                index += 1

    return records()


def read_smiles_csv(
    source: Source,
    smiles_column: str = "smiles",
    id_column: str | None = None,
    *,
    text: bool | None = None,
) -> Iterator[SmilesRecord]:
    """Stream ``(row_index, id, smiles)`` records from a CSV file, in file order, one row at a time.

    Memory stays constant for any number of rows (the ``csv`` module, no pandas); pair it with
    :func:`embed_many`, which embeds in bounded chunks. Column names match case-insensitively. Without
    ``id_column`` the first of ``id``, ``name``, ``mol_id``, ``molecule_id``, ``identifier``, ``title``
    present is used, if any. Blank lines are no rows; a row whose SMILES cell is missing gets ``""``
    (-> ``empty_input`` when embedded). A missing column raises ``ValueError`` at once.
    """
    resolved = _resolve(source, text)
    with open_text(resolved, newline="") as handle:
        header = next(csv.reader(handle), None)
    if header is None:
        raise ValueError("the CSV input is empty: expected a header row with a SMILES column")
    smiles_at = _column(header, smiles_column, required=True)
    id_at = _column(header, id_column, required=True) if id_column else next(
        (i for key in _ID_KEYS if (i := _column(header, key, required=False)) is not None), None
    )

    def records() -> Iterator[SmilesRecord]:
        with open_text(resolved, newline="") as handle:
            reader = csv.reader(handle)
            next(reader, None)
            index = 0
            for row in reader:
                if not row or not any(cell.strip() for cell in row):
                    continue
                smiles = row[smiles_at].strip() if smiles_at < len(row) else ""
                ident = row[id_at].strip() if id_at is not None and id_at < len(row) else ""
                yield SmilesRecord(index, ident or None, smiles)
                index += 1

    return records()


def embed_many(
    records: Iterable[SmilesRecord | tuple[int, str | None, str]],
    workers: int | None = 1,
    *,
    seed: int = DEFAULT_SEED,
    n_conformers: int = 1,
    limits: ValidationLimits = DEFAULT_LIMITS,
    chunk_size: int = 16,
    mp_context: str | None = None,
    executor: Executor | None = None,
) -> Iterator[Item]:
    """Embed SMILES records (:func:`from_smiles`), yielding one :class:`Item` per record in input order.

    ``workers=1`` runs in this process; more (``None``: all cores) use a process pool fed ``chunk_size``
    records per task, with at most ``4 * workers`` tasks in flight, so memory stays bounded for any
    input length. Results equal the single-process ones exactly (embedding is seeded). ``mp_context``
    defaults to ``"forkserver"`` (safe in a multi-threaded server), else ``"spawn"``. A long-lived caller
    (a job runner) can pass its own ``executor`` to skip the pool start-up (~1 s); it is not shut down.
    """
    workers = (os.cpu_count() or 1) if workers is None else workers
    if workers < 1:
        raise ValueError(f"workers must be >= 1, got {workers}")
    if chunk_size < 1:
        raise ValueError(f"chunk_size must be >= 1, got {chunk_size}")
    records = (SmilesRecord(*r) for r in records)
    if workers == 1 and executor is None:
        return (_embed_record(r, seed, n_conformers, limits) for r in records)
    return _embed_in_pool(records, workers, seed, n_conformers, limits, chunk_size, mp_context, executor)


def read_file(
    path: str | os.PathLike,
    format: str | None = None,
    *,
    limits: ValidationLimits = DEFAULT_LIMITS,
    seed: int = DEFAULT_SEED,
    n_conformers: int = 1,
    workers: int | None = 1,
    smiles_column: str = "smiles",
    id_column: str | None = None,
) -> Iterator[Item]:
    """Items from a file of any supported format, chosen by extension or by ``format=`` (see
    :data:`FORMATS`; a ``.gz`` suffix is looked through). SMILES formats are embedded with ``seed`` and
    ``n_conformers`` on ``workers`` processes. An unknown format raises ``ValueError`` naming the
    supported ones; a missing file raises ``FileNotFoundError``; both before anything is read.
    """
    path = Path(path)
    fmt = detect_format(path) if format is None else format.lower().lstrip(".")
    fmt = {"smiles": "smi", "sd": "sdf"}.get(fmt, fmt)
    if fmt not in FORMATS:
        raise ValueError(f"unknown format {format!r}; supported: {', '.join(FORMATS)}")
    if not path.is_file():
        raise FileNotFoundError(f"no such file: {str(path)!r}")
    if fmt in ("xyz", "extxyz"):
        return read_xyz(path, limits=limits)
    if fmt in ("sdf", "mol"):
        return read_sdf(path, limits=limits, seed=seed)
    records = read_smi(path) if fmt == "smi" else read_smiles_csv(path, smiles_column, id_column)
    return embed_many(records, workers, seed=seed, n_conformers=n_conformers, limits=limits)


# --------------------------------------------------------------------------------------------------
# Sources


def _resolve(source: Source, text: bool | None) -> Path | str:
    """A file path, or the contents as a string."""
    if isinstance(source, os.PathLike):
        path = Path(source)
    elif isinstance(source, bytes):
        return source.decode("utf-8-sig", errors="replace")
    elif isinstance(source, str):
        if text or (text is None and ("\n" in source or not source.strip())):
            return source
        path = Path(source)
    else:
        raise TypeError(f"expected a path, str or bytes, got {type(source).__name__}")
    if not path.is_file():
        raise FileNotFoundError(f"no such file: {str(path)!r}")
    return path


@contextlib.contextmanager
def open_text(source: Path | str, newline: str | None = None) -> Iterator[TextIO]:
    """A text handle on a file (``.gz`` decompressed, BOM dropped) or on a string's contents."""
    if isinstance(source, str):
        yield io.StringIO(source, newline=newline)
        return
    opener = gzip.open if source.suffix == ".gz" else open
    with opener(source, "rt", encoding="utf-8-sig", errors="replace", newline=newline) as handle:
        yield handle


def detect_format(path: Path) -> str:
    """The reader format of ``path`` from its extension (``.xyz.gz`` counts as ``.xyz``); ValueError if unknown."""
    suffixes = [s.lower() for s in path.suffixes]
    ext = suffixes[-2] if suffixes[-1:] == [".gz"] and len(suffixes) > 1 else (suffixes[-1:] or [""])[0]
    for fmt, extensions in FORMATS.items():
        if ext in extensions:
            return fmt
    known = ", ".join(e for exts in FORMATS.values() for e in exts)
    raise ValueError(
        f"cannot tell the format of {path.name!r} from its extension; supported extensions: {known} "
        f"(optionally + .gz), or pass format= one of {', '.join(FORMATS)}"
    )


def _column(header: list[str], name: str, *, required: bool) -> int | None:
    names = [h.strip().lower() for h in header]
    if name.strip().lower() in names:
        return names.index(name.strip().lower())
    if required:
        raise ValueError(f"no column {name!r} in the CSV header; columns are {', '.join(map(repr, header))}")
    return None


class RawRecord(NamedTuple):
    """One raw record cut from a text stream: its text, the line it starts on, a framing error when it
    could not be cut cleanly, and (XYZ) its comment line, which may name it."""

    text: str
    line: int
    error: MoleculeError | None = None
    comment: str | None = None


def _read_records(
    source: Path | str,
    split: Callable[[Iterator[str]], Iterator[RawRecord]],
    parse: Callable[[int, RawRecord, ValidationLimits], Item],
    limits: ValidationLimits,
    what: str,
) -> Iterator[Item]:
    with open_text(source) as handle:
        count = 0
        for index, record in enumerate(split(iter(handle))):
            count += 1
            yield parse(index, record, limits)
        if count == 0:
            yield Item(0, "0", error=MoleculeError("empty_input", f"no {what} found: the input is empty"))


class _Lines:
    """Lines with one line of look-ahead and 1-based line numbers."""

    def __init__(self, lines: Iterator[str]) -> None:
        self._lines = lines
        self._peeked: str | None = None
        self.number = 0

    def peek(self) -> str | None:
        if self._peeked is None:
            self._peeked = next(self._lines, None)
        return self._peeked

    def next(self) -> str | None:
        line = self.peek()
        self._peeked = None
        if line is not None:
            self.number += 1
        return line


# --------------------------------------------------------------------------------------------------
# XYZ


def _is_count_line(line: str) -> bool:
    fields = line.split()
    return len(fields) == 1 and fields[0].isdigit()


def _is_atom_line(line: str) -> bool:
    return len(line.split()) >= 4


def split_xyz_frames(raw: Iterator[str]) -> Iterator[RawRecord]:
    """Cut a (multi-frame) XYZ stream into frames using the atom-count lines.

    A frame whose count line is garbled, or that has fewer or more atom lines than it declares, becomes
    one error record; reading resumes at the next line that is a bare atom count.
    """
    lines = _Lines(raw)

    def resync() -> None:
        while (line := lines.peek()) is not None and not _is_count_line(line):
            lines.next()

    while True:
        while (line := lines.peek()) is not None and not line.strip():
            lines.next()
        header = lines.next()
        if header is None:
            return
        start = lines.number
        if not _is_count_line(header):
            resync()
            message = f"expected the atom count of a frame, got {_clip(header)}"
            yield RawRecord("", start, _xyz_error(start, message))
            continue
        n = int(header)
        comment = lines.next()
        if comment is None:
            yield RawRecord("", start, _xyz_error(start, "the input ends right after the atom count"))
            return
        atoms: list[str] = []
        while len(atoms) < n and (line := lines.peek()) is not None and _is_atom_line(line):
            atoms.append(lines.next())
        if len(atoms) < n:
            bad = lines.peek()
            where = "the input ends" if bad is None else f"line {lines.number + 1} is {_clip(bad)}"
            resync()
            yield RawRecord("", start, _xyz_error(
                start, f"the frame declares {n} atoms but only {len(atoms)} atom lines follow ({where})"
            ), comment)
            continue
        extra = 0
        while (line := lines.peek()) is not None and _is_atom_line(line):
            lines.next()
            extra += 1
        if extra:
            yield RawRecord("", start, _xyz_error(
                start, f"the frame declares {n} atoms but {n + extra} atom lines follow"
            ), comment)
            continue
        yield RawRecord("".join([header, comment, *atoms]), start, None, comment)


def xyz_item(index: int, record: RawRecord, limits: ValidationLimits) -> Item:
    """Parse and validate one XYZ frame cut by :func:`split_xyz_frames` into an :class:`Item`."""
    ident = _id_from_comment(record.comment) if record.comment is not None else None
    fallback = ident or str(index)
    if record.error is not None:
        return Item(index, fallback, error=record.error)
    try:
        atoms = _parse_xyz_frame(record)
        info_id = _id_from_info(atoms.info)
        molecule = _molecule_from_atoms(
            atoms, info_id or fallback, {"source": "xyz", "frame": index, "conformer": None}, limits
        )
        return Item(index, molecule.id, molecule)
    except MoleculeError as exc:
        return Item(index, fallback, error=exc)


def _parse_xyz_frame(record: RawRecord) -> Any:
    import ase.io

    lines = record.text.splitlines(keepends=True)
    for k in range(2, len(lines)):
        token, rest = lines[k].split(None, 1)
        if token.isdigit() and 0 < int(token) < len(SYMBOLS):  # atomic numbers instead of symbols
            lines[k] = f"{SYMBOLS[int(token)]} {rest}"
            continue
        try:
            atomic_number(token)
        except KeyError:
            raise MoleculeError(
                "unsupported_element",
                f"unknown element symbol {token!r} on line {record.line + k}; lieprop models cover "
                "H, C, N, O, F",
            ) from None
    text = "".join(lines)
    try:
        return ase.io.read(io.StringIO(text), format="extxyz", index=0)
    except Exception as extxyz_error:  # ASE raises many types; any of them means "not readable"
        try:  # a free-form comment line can trip the extxyz key=value parser
            return ase.io.read(io.StringIO(text), format="xyz", index=0)
        except Exception:
            raise _xyz_error(record.line, f"{type(extxyz_error).__name__}: {extxyz_error}") from None


def _xyz_error(line: int, message: str) -> MoleculeError:
    return MoleculeError("invalid_xyz", f"XYZ frame starting on line {line}: {message}")


_QM9_COMMENT = re.compile(r"^gdb\s+(\d+)\b")
_WORD_ID = re.compile(r"^[^\s=\"']{1,128}$")
_KEY_ID = re.compile(r"(?:^|\s)(?:" + "|".join(_ID_KEYS) + r')=(?:"([^"]*)"|(\S+))', re.IGNORECASE)


def _id_from_comment(comment: str) -> str | None:
    """An id from a comment line: an extxyz ``id=``/``name=`` pair, ``gdb N`` (QM9) -> ``gdb_N``, or the
    line itself when it is a single word."""
    text = comment.strip()
    if m := _KEY_ID.search(text):
        return m.group(1) if m.group(1) is not None else m.group(2)
    if m := _QM9_COMMENT.match(text):
        return f"gdb_{m.group(1)}"
    return text if _WORD_ID.match(text) else None


def _id_from_info(info: dict[str, Any]) -> str | None:
    lowered = {str(k).lower(): v for k, v in info.items()}
    for key in _ID_KEYS:
        value = lowered.get(key)
        if value is not None and not isinstance(value, (bool, np.bool_)):
            return str(value)
    return None


def _molecule_from_atoms(atoms: Any, id: str | None, provenance: dict[str, Any],
                         limits: ValidationLimits) -> Molecule:
    info = getattr(atoms, "info", {}) or {}
    charge = info.get("charge")
    if charge is None:
        charge = float(np.sum(atoms.get_initial_charges())) if len(atoms) else 0.0
    molecule = Molecule(
        np.asarray(atoms.numbers), np.asarray(atoms.positions), id or _id_from_info(info),
        int(round(float(charge))), provenance,
    )
    return validate(molecule, limits)


# --------------------------------------------------------------------------------------------------
# SDF / MOL


def split_sdf_records(raw: Iterator[str]) -> Iterator[RawRecord]:
    """Cut an SDF stream at ``$$$$`` lines; blank records are no records."""
    lines = _Lines(raw)
    block: list[str] = []
    start = 1
    while (line := lines.next()) is not None:
        if line.rstrip() == "$$$$":
            if "".join(block).strip():
                yield RawRecord("".join(block) + "$$$$\n", start)
            block, start = [], lines.number + 1
        else:
            block.append(line)
    if "".join(block).strip():
        yield RawRecord("".join(block) + "\n$$$$\n", start)


def sdf_item(index: int, record: RawRecord, limits: ValidationLimits, seed: int) -> Item:
    """Parse and validate one MOL block cut by :func:`split_sdf_records` into an :class:`Item`."""
    title = record.text.split("\n", 1)[0].strip()
    fallback = title or str(index)
    try:
        molecule = _sdf_molecule(index, record, title, limits, seed)
        return Item(index, molecule.id, molecule)
    except MoleculeError as exc:
        return Item(index, fallback, error=exc)
    except Exception as exc:  # an RDKit failure we did not foresee must not end the batch
        return Item(index, fallback, error=MoleculeError(
            "invalid_sdf", f"SDF record {index} (line {record.line}): {type(exc).__name__}: {exc}"
        ))


def _sdf_molecule(index: int, record: RawRecord, title: str, limits: ValidationLimits, seed: int) -> Molecule:
    from rdkit import Chem, rdBase

    where = f"SDF record {index} (line {record.line}{', ' + repr(title) if title else ''})"
    with rdBase.CaptureErrorLog() as log:
        supplier = Chem.ForwardSDMolSupplier(io.BytesIO(record.text.encode()), sanitize=False, removeHs=False)
        mol = next(supplier, None)
    if mol is None:
        raise MoleculeError("invalid_sdf", f"{where}: RDKit cannot read the MOL block: {_rdkit_message(log)}")
    ident = title or next(
        (mol.GetProp(k) for k in mol.GetPropNames() if k.lower() in _ID_KEYS and mol.GetProp(k).strip()), None
    ) or str(index)
    if mol.GetNumAtoms() == 0:
        raise MoleculeError("empty_input", f"{where}: the MOL block has no atoms")
    with rdBase.CaptureErrorLog():
        problems = Chem.DetectChemistryProblems(mol)
    if problems:
        raise MoleculeError("invalid_sdf", f"{where}: " + "; ".join(p.Message() for p in problems))
    Chem.SanitizeMol(mol)

    flat = mol.GetNumConformers() == 0 or not mol.GetConformer().Is3D()
    n_implicit = sum(atom.GetTotalNumHs() for atom in mol.GetAtoms())
    if n_implicit:
        mol = Chem.AddHs(mol, addCoords=not flat)
    provenance: dict[str, Any] = {"source": "sdf", "record": index, "hydrogens_added": bool(n_implicit),
                                  "n_hydrogens_added": int(n_implicit), "conformer": None}
    warnings: list[str] = []
    if any(atom.GetNumRadicalElectrons() for atom in mol.GetAtoms()):
        warnings.append("out of domain: the molecule has unpaired electrons; QM9 molecules are closed-shell")
    charge = Chem.GetFormalCharge(mol)
    if flat:
        check_composition(_rdkit_numbers(mol), charge, limits)  # refuse before spending time embedding
        positions, conformer, embed_warnings = _embed(mol, seed, 1, what=where)
        provenance.update(conformer=conformer, embedded_from_2d=True)
        warnings += [
            "the MOL block has 2D coordinates only; a 3D geometry was generated with "
            f"{conformer['method']} + {conformer['force_field']}",
            *embed_warnings,
        ]
    else:
        positions = mol.GetConformer().GetPositions()
    molecule = Molecule(_rdkit_numbers(mol), positions, ident, charge, provenance, tuple(warnings))
    return _validate_embedded(molecule, limits) if flat else validate(molecule, limits)


# --------------------------------------------------------------------------------------------------
# Embedding


def _rdkit_numbers(mol: Any) -> np.ndarray:
    return np.array([atom.GetAtomicNum() for atom in mol.GetAtoms()], dtype=np.int64)


def _rdkit_message(log: Any) -> str:
    """RDKit's captured error lines, without time stamps and boilerplate."""
    lines = []
    for line in log.messages.splitlines():
        line = re.sub(r"^\[\d\d:\d\d:\d\d\]\s*", "", line).removeprefix("ERROR: ").strip()
        if line and "moving to the beginning of the next molecule" not in line:
            lines.append(line)
    return "; ".join(lines) or "no details from RDKit"


def _embed(mol: Any, seed: int, n_conformers: int, *, what: str
           ) -> tuple[np.ndarray, dict[str, Any], list[str]]:
    """Embed ``mol`` (hydrogens explicit) in place: ETKDGv3, force-field optimisation, keep the
    lowest-energy conformer. Returns its positions, the provenance ``conformer`` entry and warnings."""
    from rdkit import rdBase
    from rdkit.Chem import AllChem

    params = AllChem.ETKDGv3()
    params.randomSeed = int(seed)
    params.numThreads = 1
    with rdBase.CaptureErrorLog():
        ids = list(AllChem.EmbedMultipleConfs(mol, n_conformers, params))
        random_coords = not ids
        if random_coords:  # ETKDG's distance-geometry start fails for some strained systems
            params.useRandomCoords = True
            ids = list(AllChem.EmbedMultipleConfs(mol, n_conformers, params))
    if not ids:
        raise MoleculeError("embedding_failed", f"{what}: ETKDGv3 found no 3D geometry (seed {seed})")

    with rdBase.CaptureErrorLog():
        if AllChem.MMFFHasAllMoleculeParams(mol):
            force_field = "MMFF94"
            props = AllChem.MMFFGetMoleculeProperties(mol, mmffVariant="MMFF94")

            def make(cid: int) -> Any:
                return AllChem.MMFFGetMoleculeForceField(mol, props, confId=cid)
        elif AllChem.UFFHasAllMoleculeParams(mol):
            force_field = "UFF"

            def make(cid: int) -> Any:
                return AllChem.UFFGetMoleculeForceField(mol, confId=cid)
        else:
            force_field = None
        results = []  # (energy, conformer id, converged)
        for cid in ids:
            if force_field is None:
                results.append((float("nan"), cid, False))
                continue
            ff = make(cid)
            converged = ff.Minimize(maxIts=2000) == 0
            results.append((float(ff.CalcEnergy()), cid, converged))
    energy, best, converged = min(results, key=lambda r: (np.nan_to_num(r[0], nan=np.inf), r[1]))
    conformer = {
        "method": "ETKDGv3", "seed": int(seed), "random_coords": random_coords,
        "n_conformers": len(ids), "force_field": force_field, "converged": converged,
        "energy_kcal_mol": None if np.isnan(energy) else energy,
    }
    warnings = []
    if force_field is None:
        warnings.append("no force field has parameters for this molecule; the ETKDG geometry is unoptimised")
    elif not converged:
        warnings.append(f"the {force_field} optimisation of the generated conformer did not converge")
    return mol.GetConformer(best).GetPositions(), conformer, warnings


def _validate_embedded(molecule: Molecule, limits: ValidationLimits) -> Molecule:
    """Validate a generated geometry; a broken one is the embedder's failure, not the input's."""
    try:
        return validate(molecule, limits)
    except MoleculeError as exc:
        if exc.code != "invalid_geometry":
            raise
        message = f"the generated 3D geometry is unusable: {exc.message}"
        raise MoleculeError("embedding_failed", message) from None


def _embed_record(record: SmilesRecord, seed: int, n_conformers: int, limits: ValidationLimits) -> Item:
    ident = record.id or str(record.index)
    try:
        return Item(record.index, ident, from_smiles(record.smiles, ident, seed, n_conformers, limits=limits))
    except MoleculeError as exc:
        return Item(record.index, ident, error=exc)
    except Exception as exc:  # an RDKit failure we did not foresee must not end the batch
        return Item(record.index, ident, error=MoleculeError(
            "embedding_failed", f"SMILES {record.smiles!r}: {type(exc).__name__}: {exc}"
        ))


def _embed_chunk(records: list[SmilesRecord], seed: int, n_conformers: int, limits: ValidationLimits
                 ) -> list[Item]:
    return [_embed_record(r, seed, n_conformers, limits) for r in records]


def embedding_pool(workers: int | None = None, mp_context: str | None = None) -> ProcessPoolExecutor:
    """A process pool for :func:`embed_many` (``None`` workers: all cores). With the default
    ``"forkserver"`` start method, RDKit is imported once in the server, not in every worker."""
    if mp_context is None:
        mp_context = "forkserver" if "forkserver" in multiprocessing.get_all_start_methods() else "spawn"
    context = multiprocessing.get_context(mp_context)
    if mp_context == "forkserver":
        context.set_forkserver_preload(["lieprop.data.readers", "rdkit.Chem.AllChem"])
    return ProcessPoolExecutor(max_workers=workers or os.cpu_count() or 1, mp_context=context)


def _embed_in_pool(records: Iterator[SmilesRecord], workers: int, seed: int, n_conformers: int,
                   limits: ValidationLimits, chunk_size: int, mp_context: str | None,
                   executor: Executor | None) -> Iterator[Item]:
    pool = executor if executor is not None else embedding_pool(workers, mp_context)
    pending: deque[Future[list[Item]]] = deque()
    try:
        chunk: list[SmilesRecord] = []
        for record in records:
            chunk.append(record)
            if len(chunk) == chunk_size:
                pending.append(pool.submit(_embed_chunk, chunk, seed, n_conformers, limits))
                chunk = []
                while len(pending) >= 4 * workers:
                    yield from pending.popleft().result()
        if chunk:
            pending.append(pool.submit(_embed_chunk, chunk, seed, n_conformers, limits))
        while pending:
            yield from pending.popleft().result()
    finally:
        if executor is None:
            pool.shutdown(wait=True, cancel_futures=True)
        else:
            for future in pending:
                future.cancel()


def _clip(line: str, width: int = 40) -> str:
    text = line.strip()
    return repr(text if len(text) <= width else text[: width - 3] + "...")
