"""Input files as streams of raw records, and the worker function that turns records into :class:`Item` s.

A batch job splits its input in two steps so that both halves scale:

* **splitting** (here, in the process that owns the output): cut the file into raw records, one per input row,
  frame or SDF record, without parsing them. It is cheap (a line scan, or the ``csv`` module), so it can run
  ahead of the workers, count the rows for the progress bar, and skip already-written rows on ``--resume``
  without embedding or parsing them again;
* **parsing** (:func:`parse_records`, in worker processes or Ray actors): SMILES -> 3D conformer, XYZ frame or
  SDF record -> validated :class:`~lieprop.data.molecule.Molecule`. Records are small picklable tuples.

Both halves are the readers of :mod:`lieprop.data.readers`, so a job reads a file exactly as ``read_file`` does:
same ids, same error codes and messages, the same ``empty_input`` item for an XYZ/SDF file without records.
The XYZ/SDF splitters and per-record parsers are private there; this module is the only place that reaches
for them (see :data:`_READERS`), so a change there is caught by ``tests/test_jobs.py``.
"""

from __future__ import annotations

import collections
import os
import threading
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, NamedTuple

from lieprop.data import readers
from lieprop.data.readers import DEFAULT_SEED, FORMATS, Item, SmilesRecord
from lieprop.data.validation import MoleculeError, ValidationLimits

#: Input kinds: how records of each :data:`~lieprop.data.readers.FORMATS` entry are parsed.
KINDS = {"csv": "smiles", "smi": "smiles", "xyz": "xyz", "extxyz": "xyz", "sdf": "sdf", "mol": "sdf"}
#: The private reader functions this module builds on (split a text stream into records; parse one record).
_READERS = {
    "xyz": (readers.split_xyz_frames, readers.xyz_item),
    "sdf": (readers.split_sdf_records, readers.sdf_item),
}
#: SMILES -> embedding outcome, per worker process: a repeated SMILES is embedded once. Exact, because embedding
#: is seeded: the cached molecule is the one a fresh embedding would give (the id is set per row).
_CACHE_SIZE = 4096
_cache: collections.OrderedDict[tuple[str, int, ValidationLimits], Any] = collections.OrderedDict()
_cache_lock = threading.Lock()


class RawRecord(NamedTuple):
    """An XYZ frame or SDF record, cut from its file but not parsed: ``record`` is the readers' raw record."""

    index: int
    record: Any


@dataclass(frozen=True)
class Source:
    """An input file and how to read it: ``format`` (a ``FORMATS`` key), ``kind`` (``smiles``, ``xyz``, ``sdf``)."""

    path: Path
    format: str
    smiles_column: str = "smiles"
    id_column: str | None = None

    @property
    def kind(self) -> str:
        return KINDS[self.format]

    def records(self, start: int = 0) -> Iterator[SmilesRecord | RawRecord]:
        """Raw records in file order, from the ``start``-th on (the ones before are split but not kept)."""
        if self.kind == "smiles":
            stream: Iterator[Any] = (readers.read_smiles_csv(self.path, self.smiles_column, self.id_column)
                                     if self.format == "csv" else readers.read_smi(self.path))
        else:
            stream = self._raw_records()
        for position, record in enumerate(stream):
            if position >= start:
                yield record

    def _raw_records(self) -> Iterator[RawRecord]:
        split, _ = _READERS[self.kind]
        count = 0
        with readers.open_text(self.path) as handle:
            for index, record in enumerate(split(iter(handle))):
                count += 1
                yield RawRecord(index, record)
        if count == 0:  # as readers.read_xyz / read_sdf: an empty input is one empty_input item
            what = "XYZ frame" if self.kind == "xyz" else "SDF record"
            yield RawRecord(0, MoleculeError("empty_input", f"no {what} found: the input is empty"))

    def count(self) -> int:
        """How many records :meth:`records` yields (one cheap pass over the file)."""
        return sum(1 for _ in self.records())


def open_source(path: str | os.PathLike, format: str | None = None, smiles_column: str = "smiles",
                id_column: str | None = None) -> Source:
    """Check an input file and its format (by extension unless ``format`` is given) before any work starts.

    Raises ``FileNotFoundError``, or ``ValueError`` for an unknown format or a CSV without the SMILES (or id)
    column, with a message for the user.
    """
    path = Path(path)
    fmt = readers.detect_format(path) if format is None else format.lower().lstrip(".")
    fmt = {"smiles": "smi", "sd": "sdf"}.get(fmt, fmt)
    if fmt not in FORMATS:
        raise ValueError(f"unknown input format {format!r}; supported: {', '.join(FORMATS)}")
    if not path.is_file():
        raise FileNotFoundError(f"no such file: {str(path)!r}")
    source = Source(path, fmt, smiles_column, id_column)
    if fmt == "csv":
        readers.read_smiles_csv(path, smiles_column, id_column)  # raises at once for a missing column
    return source


def record_input(record: SmilesRecord | RawRecord) -> str | None:
    """The SMILES of a SMILES record (it goes into the output next to the id), else None."""
    return record.smiles if isinstance(record, SmilesRecord) else None


def parse_records(kind: str, records: list[SmilesRecord | RawRecord], seed: int = DEFAULT_SEED,
                  limits: ValidationLimits | None = None) -> list[Item]:
    """Parse a task's records into items, in order: a process-pool task and a Ray actor's first step.

    Never raises for a bad record: readers turn every failure into the item's error.
    """
    limits = limits or ValidationLimits()
    if kind == "smiles":
        return [_embed_cached(r, seed, limits) for r in records]
    _, parse = _READERS[kind]
    items = []
    for raw in records:
        if isinstance(raw.record, MoleculeError):
            items.append(Item(raw.index, str(raw.index), error=raw.record))
        elif kind == "sdf":
            items.append(parse(raw.index, raw.record, limits, seed))
        else:
            items.append(parse(raw.index, raw.record, limits))
    return items


def _embed_cached(record: SmilesRecord, seed: int, limits: ValidationLimits) -> Item:
    ident = record.id or str(record.index)
    key = (record.smiles, seed, limits)
    with _cache_lock:
        hit = _cache.get(key)
        if hit is not None:
            _cache.move_to_end(key)
    if hit is None:
        item = next(readers.embed_many([record], 1, seed=seed, limits=limits))
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

