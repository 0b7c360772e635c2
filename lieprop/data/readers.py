"""Readers: XYZ / extxyz, SDF / MOL, SMILES, CSV of SMILES and ASE Atoms -> validated :class:`Molecule`.

The public face of the reading modules; each idea lives in a module of its own:

* :mod:`lieprop.data.formats`: the format registry (extensions, aliases, record kinds, parsers, error codes);
* :mod:`lieprop.data.textio`: sources (path, ``str`` or ``bytes`` contents) and ``.gz`` files;
* :mod:`lieprop.data.xyz`, :mod:`lieprop.data.sdf`, :mod:`lieprop.data.smiles`: splitters and parsers per format;
* :mod:`lieprop.data.conformers`: SMILES and 2D MOL blocks -> 3D (ETKDGv3 with a fixed seed, then MMFF94);
* :mod:`lieprop.data.atoms`: ASE ``Atoms`` and arrays;
* :mod:`lieprop.data.pool`: parsing many records on worker processes, in order;
* :mod:`lieprop.data.records`: the records, options and :class:`Item` outcomes they exchange.

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

import os
from collections.abc import Iterator
from concurrent.futures import Executor
from pathlib import Path

from lieprop.data import formats
from lieprop.data.atoms import from_arrays, from_atoms
from lieprop.data.formats import Format, Kind
from lieprop.data.pool import embed_many, embedding_pool, parse_many
from lieprop.data.records import (
    DEFAULT_CONFORMERS,
    DEFAULT_SEED,
    Item,
    ParseOptions,
    RawRecord,
    ReadOptions,
    SmilesRecord,
)
from lieprop.data.sdf import sdf_item, split_sdf_records
from lieprop.data.smiles import from_smiles
from lieprop.data.textio import Source, open_text, resolve_source
from lieprop.data.validation import DEFAULT_LIMITS, ValidationLimits
from lieprop.data.views import LiveMapping
from lieprop.data.xyz import split_xyz_frames, xyz_item

__all__ = [
    "DEFAULT_CONFORMERS", "DEFAULT_SEED", "FORMATS", "Item", "RawRecord", "SmilesRecord", "Source", "detect_format",
    "embed_many",
    "embedding_pool", "from_arrays", "from_atoms", "from_smiles", "open_text", "read_file", "read_records",
    "read_sdf", "read_smi", "read_smiles_csv", "read_xyz", "sdf_item", "split_sdf_records", "split_xyz_frames",
    "xyz_item",
]

#: Formats :func:`read_file` understands (``format=`` values) and the extensions that select them: a view of
#: the registry (:mod:`lieprop.data.formats`), so it always lists every registered format.
FORMATS: LiveMapping[str, tuple[str, ...]] = LiveMapping(
    lambda: {f.name: f.extensions for f in formats.registered()})


def read_records(
    entry: Format | Kind,
    source: Source,
    *,
    options: ParseOptions | None = None,
    read_options: ReadOptions | None = None,
    text: bool | None = None,
    workers: int | None = 1,
) -> Iterator[Item]:
    """Items from a source of one registered format (or of a record kind, cut by the kind's own splitter).

    Splits the source into records (lazily, in this process), numbers them, and parses them with the kind's
    parser on ``workers`` processes (1: here), ``task_size`` records per task. An input without records is one
    ``empty_input`` item for kinds that say so. Raises at once what the source and the format's check raise
    (``FileNotFoundError``, ``ValueError`` for a CSV without its columns).
    """
    resolved = resolve_source(source, text)
    kind = entry.kind if isinstance(entry, Format) else entry
    records = entry.records(resolved, read_options) if isinstance(entry, Format) else entry.records(resolved)
    return parse_many(kind.parse, formats.numbered(kind, records), options or ParseOptions(), workers,
                      chunk_size=kind.task_size)


def read_xyz(source: Source, *, limits: ValidationLimits = DEFAULT_LIMITS, text: bool | None = None
             ) -> Iterator[Item]:
    """Items from an XYZ or extended-XYZ file, one per frame, through ASE.

    Frames are cut apart by their atom-count lines before parsing, so a broken frame becomes one
    ``invalid_xyz`` item and the frames after it still come through. Unknown element symbols ->
    ``unsupported_element``; an empty input -> one ``empty_input`` item. Atomic numbers in place of
    symbols are accepted. The id is the extxyz ``id``/``name`` key, else the comment line when it is a
    single word (``gdb 17 ...`` QM9 comments give ``gdb_17``), else the frame index.
    """
    return read_records(formats.get("xyz"), source, options=ParseOptions(limits), text=text)


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
    return read_records(formats.get("sdf"), source, options=ParseOptions(limits, seed), text=text)


def read_smi(source: Source, *, text: bool | None = None) -> Iterator[SmilesRecord]:
    """SMILES records from a ``.smi`` file: one SMILES per line, optionally followed by whitespace and an
    id. Blank lines and ``#`` comments are skipped, as is a header line starting with ``smiles``."""
    return formats.get("smi").records(resolve_source(source, text))


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
    return formats.get("csv").records(resolve_source(source, text), ReadOptions(smiles_column, id_column))


def read_file(
    path: str | os.PathLike,
    format: str | None = None,
    *,
    limits: ValidationLimits = DEFAULT_LIMITS,
    seed: int = DEFAULT_SEED,
    n_conformers: int = DEFAULT_CONFORMERS,
    workers: int | None = 1,
    smiles_column: str = "smiles",
    id_column: str | None = None,
    executor: Executor | None = None,
) -> Iterator[Item]:
    """Items from a file of any registered format, chosen by extension or by ``format=`` (a name or alias, see
    :data:`FORMATS`; a ``.gz`` suffix is looked through). Records are parsed on ``workers`` processes (SMILES
    embedded with ``seed`` and ``n_conformers``), or on a long-lived ``executor``. An unknown format raises
    ``ValueError`` naming the supported ones; a missing file raises ``FileNotFoundError``; both before anything
    is read.
    """
    path = Path(path)
    fmt = formats.detect(path) if format is None else formats.resolve(format)
    if not path.is_file():
        raise FileNotFoundError(f"no such file: {str(path)!r}")
    kind = fmt.kind
    records = formats.numbered(kind, fmt.records(path, ReadOptions(smiles_column, id_column)))
    return parse_many(kind.parse, records, ParseOptions(limits, seed, n_conformers), workers,
                      chunk_size=kind.task_size, executor=executor)


def detect_format(path: Path) -> str:
    """The reader format of ``path`` from its extension (``.xyz.gz`` counts as ``.xyz``); ValueError if unknown."""
    return formats.detect(path).name
