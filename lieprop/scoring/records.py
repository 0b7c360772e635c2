"""Input files as streams of raw records, and the worker function that turns records into :class:`Item` s.

A batch job splits its input in two steps so that both halves scale:

* **splitting** (here, in the process that owns the output): cut the file into raw records, one per input row,
  frame or SDF record, without parsing them. It is cheap (a line scan, or the ``csv`` module), so it can run
  ahead of the workers, count the rows for the progress bar, and skip already-written rows on ``--resume``
  without embedding or parsing them again;
* **parsing** (:func:`parse_records`, in worker processes or Ray actors): SMILES -> 3D conformer, XYZ frame or
  SDF record -> validated :class:`~lieprop.data.molecule.Molecule`. Records are small picklable tuples.

Both halves come from the format registry (:mod:`lieprop.data.formats`: each format's splitter, each kind's
parser), exactly as :func:`lieprop.data.readers.read_file` uses them: same ids, same error codes and messages, the
same ``empty_input`` item for an XYZ/SDF file without records. Nothing here names a format, so a registered format
is a job input without a change here.
"""

from __future__ import annotations

import collections
import os
import threading
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, NamedTuple

from lieprop.data import formats
from lieprop.data.formats import Format
from lieprop.data.records import (
    DEFAULT_CONFORMERS,
    DEFAULT_SEED,
    Item,
    ParseOptions,
    ReadOptions,
    RecordParser,
    SmilesRecord,
    parse_record,
)
from lieprop.data.textio import QuotaExceeded, check_gzip
from lieprop.data.validation import MoleculeError, ValidationLimits
from lieprop.data.views import LiveMapping

#: Input kinds: how records of each :data:`~lieprop.data.readers.FORMATS` entry are parsed (a registry view).
KINDS: LiveMapping[str, str] = LiveMapping(
    lambda: {f.name: f.kind.name for f in formats.registered()})
#: SMILES -> embedding outcome, per worker process: a repeated SMILES is embedded once. Exact, because embedding
#: is seeded: the cached molecule is the one a fresh embedding would give (the id is set per row).
_CACHE_SIZE = 4096
_cache: collections.OrderedDict[tuple[str, str, int, int, ValidationLimits], Any] = collections.OrderedDict()
_cache_lock = threading.Lock()


class RawRecord(NamedTuple):
    """A record cut from its file but not parsed, with its index: ``record`` is the splitter's raw record (an XYZ
    frame, an SDF record, ...), or the :class:`MoleculeError` standing for an input without records."""

    index: int
    record: Any


@dataclass(frozen=True)
class Source:
    """An input file and how to read it: ``format`` (a registered format's name), ``kind`` (its record kind:
    ``smiles``, ``xyz``, ``sdf``, ...). Quotas (None: none): ``max_rows`` records (:meth:`records` stops there and
    :meth:`check_max_rows` raises once they are scored), ``max_decompressed_bytes`` of a ``.gz`` file (reading past it
    raises ``ValueError``); both errors name the limit: never a silent truncation."""

    path: Path
    format: str
    smiles_column: str = "smiles"
    id_column: str | None = None
    max_rows: int | None = None
    max_decompressed_bytes: int | None = None

    @property
    def entry(self) -> Format:
        """The registry entry of :attr:`format`."""
        return formats.get(self.format)

    @property
    def kind(self) -> str:
        return self.entry.kind.name

    def records(self, start: int = 0) -> Iterator[SmilesRecord | RawRecord]:
        """Raw records in file order, from the ``start``-th on (the ones before are split but not kept).

        SMILES records carry their own index and id (and the SMILES goes into the output); other records are
        wrapped in a :class:`RawRecord` with their index.
        """
        entry = self.entry
        stream = entry.records(self.path, ReadOptions(self.smiles_column, self.id_column,
                                                      self.max_decompressed_bytes))
        for index, record in formats.numbered(entry.kind, stream):
            if self.max_rows is not None and index >= self.max_rows:
                return  # the run checks :meth:`check_max_rows` once these are committed
            if index >= start:
                yield record if isinstance(record, SmilesRecord) else RawRecord(index, record)

    def check_max_rows(self) -> None:
        """``ValueError`` naming the limit when the input holds more than ``max_rows`` records."""
        if self.max_rows is None:
            return
        stream = self.entry.records(self.path, ReadOptions(self.smiles_column, self.id_column,
                                                           self.max_decompressed_bytes))
        for index, _ in formats.numbered(self.entry.kind, stream):
            if index >= self.max_rows:
                raise QuotaExceeded(f"the input has more than {self.max_rows:,} rows, the limit (max_rows); the "
                                    f"first {self.max_rows:,} were scored and the result file is left unfinished",
                                    "rows")

    def count(self) -> int:
        """How many records :meth:`records` yields (one cheap pass over the file)."""
        return sum(1 for _ in self.records())


def open_source(path: str | os.PathLike, format: str | None = None, smiles_column: str = "smiles",
                id_column: str | None = None, *, max_rows: int | None = None,
                max_decompressed_bytes: int | None = None) -> Source:
    """Check an input file and its format (by extension unless ``format``, a name or alias, is given) before any
    work starts.

    Raises ``FileNotFoundError``, or ``ValueError`` for an unknown format or a file its format's check refuses
    (a CSV without the SMILES or id column, a ``.gz`` file that is not gzip), with a message for the user.
    """
    path = Path(path)
    fmt = formats.detect(path) if format is None else formats.resolve(format, what="input format")
    if not path.is_file():
        raise FileNotFoundError(f"no such file: {str(path)!r}")
    if path.suffix == ".gz":
        check_gzip(path)
    options = ReadOptions(smiles_column, id_column, max_decompressed_bytes)
    if fmt.check is not None:
        fmt.check(path, options)  # raises at once, e.g. for a missing CSV column
    return Source(path, fmt.name, smiles_column, id_column, max_rows, max_decompressed_bytes)


def record_input(record: SmilesRecord | RawRecord) -> str | None:
    """The SMILES of a SMILES record (it goes into the output next to the id), else None."""
    return record.smiles if isinstance(record, SmilesRecord) else None


def parse_records(kind: str, records: list[SmilesRecord | RawRecord], seed: int = DEFAULT_SEED,
                  limits: ValidationLimits | None = None, conformers: int = DEFAULT_CONFORMERS) -> list[Item]:
    """Parse a task's records of record kind ``kind`` into items, in order: a process-pool task and a Ray actor's
    first step.

    Never raises for a bad record: parsers turn every failure into the item's error.
    """
    parse = formats.kind(kind).parse
    options = ParseOptions(limits or ValidationLimits(), seed, conformers)
    items = []
    for raw in records:
        if isinstance(raw, SmilesRecord):
            items.append(_embed_cached(kind, parse, raw, options))
        else:
            items.append(parse_record(parse, raw.index, raw.record, options))
    return items


def _embed_cached(kind: str, parse: RecordParser, record: SmilesRecord, options: ParseOptions) -> Item:
    ident = record.id or str(record.index)
    key = (kind, record.smiles, options.seed, options.n_conformers, options.limits)
    with _cache_lock:
        hit = _cache.get(key)
        if hit is not None:
            _cache.move_to_end(key)
    if hit is None:
        item = parse(record.index, record, options)
        hit = item.molecule if item.ok else item.error
        with _cache_lock:
            _cache[key] = hit
            while len(_cache) > _CACHE_SIZE:
                _cache.popitem(last=False)
        return item
    if isinstance(hit, MoleculeError):
        return Item(record.index, ident, error=hit)
    return Item(record.index, ident, molecule=_with_id(hit, ident))


def _with_id(molecule: Any, ident: str) -> Any:
    import dataclasses

    return molecule if molecule.id == ident else dataclasses.replace(molecule, id=ident)
