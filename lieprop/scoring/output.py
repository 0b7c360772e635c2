"""Result files: one row per input record, in input order, written chunk by chunk so that a killed run resumes.

Row layout (every format carries the same values):

* JSON Lines: the REST result of the record (``{"id", "ok", "properties": {name: {"value", "unit"[, "std"]}},
  "provenance", "warnings"}`` or ``{"id", "ok": false, "error": {"code", "message"}}``) with ``index`` (0-based
  record position) and, for SMILES inputs, ``smiles`` in front.
* CSV and Parquet: ``index, id, [smiles,] ok, <property> [<unit>] ..., error, error_message, warnings``: one
  column per property with its unit in the header (``homo [eV]``), empty / null for failed rows; ``error`` is the
  error code and ``error_message`` the message, both empty for rows that succeeded; ``warnings`` joined by "; ".
  A model that gives a spread (an ensemble) adds ``<property>_std [<unit>]`` after each property column, and a
  calibrated one ``<property>_lower [<unit>]`` and ``<property>_upper [<unit>]``, its prediction interval.
  Parquet columns are typed (int64, string, bool, float64) and carry their unit as field metadata.

How a run survives ``kill -9``: the result file is built in ``OUTPUT.partial/`` next to it. Each completed chunk
is appended (CSV, JSON Lines) or written as its own part file (Parquet) and fsynced; only then is
``progress.json`` replaced atomically (write, fsync, rename, fsync the directory) with the number of chunks, rows
and bytes that are now safe, plus the outcome counts. A resumed run truncates the data to the recorded size (a
chunk half-written when the run died is dropped and computed again) and continues with the next chunk, so no row
is lost or written twice. At the end the finished file is renamed to OUTPUT and the directory removed; OUTPUT
never exists half-written.

Verified outputs: ``progress.json`` holds a manifest, for each committed chunk its row count, its byte range in
``data`` (CSV, JSON Lines) or its part file (Parquet) with its size, and the sha256 of its bytes. ``--resume`` checks
what is on disk against the manifest before it continues, and :meth:`ResultFile.finish` checks the whole output
(every chunk's checksum, no bytes beyond the last chunk, the row total against the number of input records) before
it renames anything to OUTPUT; damage is an :class:`OutputError` naming the chunk or part, expected and found, never
a short success. The finished file's row count, size and sha256 are recorded too; with ``sidecar=True`` (REST jobs)
they are written next to OUTPUT as ``OUTPUT.manifest.json`` so that :func:`verify_finished` can check the file
before it is served. ``progress.json`` also holds a fingerprint of the input's contents (size and sha256, not its
path, so a run resumes after its folder moved) and of every option that changes the output; ``--resume`` refuses to
continue a run whose fingerprint differs.
"""

from __future__ import annotations

import csv
import fcntl
import hashlib
import io
import json
import os
import shutil
from collections.abc import Iterable, Iterator, Mapping, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, BinaryIO

from lieprop.inference import Column

#: Output formats by file extension.
OUTPUT_FORMATS = {".csv": "csv", ".jsonl": "jsonl", ".ndjson": "jsonl", ".parquet": "parquet"}
PROGRESS_VERSION = 2  # 2: a manifest of the committed chunks (rows, bytes, sha256) and of the finished file
_PARQUET_ROW_GROUP = 32_768  # rows per row group of a merged Parquet file


#: What a ``lieprop predict`` user can do about an :class:`OutputError`, by its ``remedy``.
CLI_REMEDIES = {
    "overwrite": "start over with --overwrite",
    "resume_or_overwrite": "add --resume to continue it, or --overwrite to start over",
    "recompute": "add --overwrite to compute it again",
    "replace": "add --overwrite to replace it",
}


class OutputError(Exception):
    """The output cannot be written as asked (exists, busy, or an interrupted run does not match); for the user.

    ``problem`` says what is wrong; ``remedy`` (a key of :data:`CLI_REMEDIES`, or None) what the user can do, which
    ``str(exc)`` words as ``lieprop predict`` flags. Other front ends (REST jobs) word the remedy their own way from
    ``problem`` and ``remedy``.
    """

    def __init__(self, problem: str, remedy: str | None = None) -> None:
        super().__init__(f"{problem}; {CLI_REMEDIES[remedy]}" if remedy is not None else problem)
        self.problem = problem
        self.remedy = remedy


class NothingToResume(OutputError):
    """``--resume`` found a finished output and no interrupted run."""


def output_format(path: str | os.PathLike) -> str:
    """``csv``, ``jsonl`` or ``parquet`` from the output file's extension; ``ValueError`` otherwise."""
    suffix = Path(path).suffix.lower()
    if suffix not in OUTPUT_FORMATS:
        raise ValueError(f"cannot tell the output format of {Path(path).name!r}: use one of the extensions "
                         f"{', '.join(OUTPUT_FORMATS)}")
    return OUTPUT_FORMATS[suffix]


# --------------------------------------------------------------------------------------------------
# Rows


def result_row(index: int, result: Mapping[str, Any], smiles: str | None) -> dict[str, Any]:
    """A JSON Lines row: the REST result with ``index`` (and ``smiles`` for SMILES inputs) in front."""
    head: dict[str, Any] = {"index": index, "id": result["id"]}
    if smiles is not None:
        head["smiles"] = smiles
    return {**head, **result}


def property_header(column: Column) -> str:
    return f"{column.name} [{column.unit}]"


def std_header(column: Column, statistic: str = "std") -> str:
    """``homo_std [eV]`` (or ``homo_lower [eV]``, ``homo_upper [eV]``): a column of a property's uncertainty."""
    return f"{column.name}_{statistic} [{column.unit}]"


@dataclass(frozen=True)
class Table:
    """The flat (CSV / Parquet) layout of a run's rows: its properties, whether a ``smiles`` column exists, and
    whether each property is followed by its spread (``homo_std [eV]``, for models that give one: ensembles) and its
    prediction interval (``homo_lower [eV]``, ``homo_upper [eV]``, for calibrated ones)."""

    columns: tuple[Column, ...]
    with_smiles: bool
    with_std: bool = False
    with_interval: bool = False

    @property
    def statistics(self) -> list[str]:
        """What follows each property's value: ``std``, ``lower``, ``upper``, as the model gives them."""
        return ["std"] * self.with_std + ["lower", "upper"] * self.with_interval

    @property
    def value_headers(self) -> list[str]:
        """The property columns, in order: ``homo [eV]``, then its uncertainty columns (:attr:`statistics`)."""
        return [h for c in self.columns for h in (property_header(c), *(std_header(c, s) for s in self.statistics))]

    @property
    def header(self) -> list[str]:
        return ["index", "id", *(["smiles"] if self.with_smiles else []), "ok", *self.value_headers,
                "error", "error_message", "warnings"]

    def flat(self, row: Mapping[str, Any]) -> list[Any]:
        """One JSON Lines row as a list of cells (None for empty)."""
        props = row.get("properties") or {}
        error = row.get("error") or {}
        warnings = row.get("warnings") or []
        values: list[Any] = []
        for c in self.columns:
            entry = props.get(c.name) or {}
            interval = entry.get("interval") or (None, None)
            given = {"std": entry.get("std"), "lower": interval[0], "upper": interval[1]}
            values += [entry.get("value"), *(given[s] for s in self.statistics)]
        return [row["index"], row["id"], *([row.get("smiles")] if self.with_smiles else []), bool(row["ok"]),
                *values, error.get("code"), error.get("message"), "; ".join(warnings) if warnings else None]


class CsvEncoder:
    """CSV bytes: ``true``/``false`` for ``ok``, shortest round-trip floats, empty cells for None."""

    def __init__(self, table: Table) -> None:
        self.table = table

    def header(self) -> bytes:
        return self._encode([self.table.header])

    def rows(self, rows: Iterable[Mapping[str, Any]]) -> bytes:
        return self._encode(self._cells(self.table.flat(r)) for r in rows)

    @staticmethod
    def _cells(values: list[Any]) -> list[Any]:
        return ["" if v is None else ("true" if v else "false") if isinstance(v, bool) else v for v in values]

    @staticmethod
    def _encode(rows: Iterable[list[Any]]) -> bytes:
        buffer = io.StringIO()
        csv.writer(buffer, lineterminator="\n").writerows(rows)
        return buffer.getvalue().encode()


class JsonlEncoder:
    """JSON Lines bytes, compact and UTF-8, as the REST service writes JSON."""

    def header(self) -> bytes:
        return b""

    def rows(self, rows: Iterable[Mapping[str, Any]]) -> bytes:
        return b"".join(json_line(r) for r in rows)


def json_line(row: Mapping[str, Any]) -> bytes:
    return json.dumps(row, ensure_ascii=False, allow_nan=False, separators=(",", ":")).encode() + b"\n"


def parquet_schema(table: Table) -> Any:
    import pyarrow as pa

    fields = [pa.field("index", pa.int64(), nullable=False), pa.field("id", pa.string())]
    if table.with_smiles:
        fields.append(pa.field("smiles", pa.string()))
    fields.append(pa.field("ok", pa.bool_(), nullable=False))
    for c in table.columns:
        fields.append(pa.field(property_header(c), pa.float64(), metadata={"unit": c.unit, "property": c.name}))
        for statistic in table.statistics:
            fields.append(pa.field(std_header(c, statistic), pa.float64(),
                                   metadata={"unit": c.unit, "property": c.name, "statistic": statistic}))
    fields += [pa.field(n, pa.string()) for n in ("error", "error_message", "warnings")]
    return pa.schema(fields, metadata={"lieprop": "results"})


def parquet_table(table: Table, rows: Sequence[Mapping[str, Any]]) -> Any:
    import pyarrow as pa

    schema = parquet_schema(table)
    cells = [table.flat(r) for r in rows]
    arrays = [pa.array([c[k] for c in cells], type=f.type) for k, f in enumerate(schema)]
    return pa.Table.from_arrays(arrays, schema=schema)


def jsonl_to_csv(lines: Iterable[bytes], table: Table) -> Iterator[bytes]:
    """Stream a JSON Lines result file as CSV (the REST results endpoint): the same bytes ``lieprop predict``
    writes to a ``.csv`` output for the same rows."""
    encoder = CsvEncoder(table)
    yield encoder.header()
    batch: list[dict] = []
    for line in lines:
        if line.strip():
            batch.append(json.loads(line))
        if len(batch) == 1000:
            yield encoder.rows(batch)
            batch = []
    if batch:
        yield encoder.rows(batch)


# --------------------------------------------------------------------------------------------------
# Counts and progress


@dataclass
class Counts:
    """Rows by outcome and error code."""

    rows: int = 0
    ok: int = 0
    failed: int = 0
    errors: dict[str, int] = field(default_factory=dict)

    def add(self, results: Iterable[Mapping[str, Any]]) -> None:
        for r in results:
            self.rows += 1
            if r["ok"]:
                self.ok += 1
            else:
                self.failed += 1
                code = r["error"]["code"]
                self.errors[code] = self.errors.get(code, 0) + 1

    def to_dict(self) -> dict[str, Any]:
        return {"rows": self.rows, "ok": self.ok, "failed": self.failed, "errors": dict(sorted(self.errors.items()))}

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> Counts:
        return cls(int(data["rows"]), int(data["ok"]), int(data["failed"]), dict(data.get("errors", {})))


@dataclass
class Progress:
    """What ``progress.json`` records: chunks, rows and bytes safely on disk, counts, and the run fingerprint."""

    fingerprint: dict[str, Any]
    chunks_done: int = 0
    rows_done: int = 0
    bytes: int = 0
    counts: dict[str, Any] = field(default_factory=lambda: Counts().to_dict())
    elapsed_s: float = 0.0
    complete: bool = False
    #: The manifest: one entry per committed chunk, ``{"rows", "offset", "bytes", "sha256"}`` (CSV, JSON Lines: the
    #: chunk's byte range in ``data``) or ``{"rows", "part", "bytes", "sha256"}`` (Parquet: its part file).
    chunks: list[dict[str, Any]] = field(default_factory=list)
    #: Once complete: the finished file's ``{"rows", "bytes", "sha256"}``.
    final: dict[str, Any] | None = None
    version: int = PROGRESS_VERSION


def read_progress(path: Path) -> Progress | None:
    try:
        data = json.loads(path.read_text())
    except FileNotFoundError:
        return None
    except (OSError, ValueError) as exc:
        raise OutputError(f"{path} is unreadable ({exc})", "overwrite") from None
    if not isinstance(data, dict) or data.get("version") != PROGRESS_VERSION:
        raise OutputError(f"{path} was written by another lieprop version", "overwrite")
    try:
        return Progress(**data)
    except TypeError as exc:
        raise OutputError(f"{path} is unreadable ({exc})", "overwrite") from None


def sha256_file(path: Path, start: int = 0, length: int | None = None) -> str:
    """The sha256 of ``length`` bytes of ``path`` from ``start`` (to the end when None), read in 1 MiB blocks."""
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        f.seek(start)
        left = length
        while left is None or left > 0:
            block = f.read(1 << 20 if left is None else min(1 << 20, left))
            if not block:
                break
            digest.update(block)
            if left is not None:
                left -= len(block)
    return digest.hexdigest()


class ManifestMissing(OutputError):
    """A finished output without a manifest: written before outputs carried one, so it cannot be verified."""


def manifest_path(path: str | os.PathLike) -> Path:
    """Where a finished output's manifest (``{"rows", "bytes", "sha256"}``) lies when written (``sidecar=True``)."""
    path = Path(path)
    return path.with_name(path.name + ".manifest.json")


def verify_finished(path: str | os.PathLike) -> dict[str, Any]:
    """Check a finished output against its manifest (:func:`manifest_path`): size, sha256 and, for JSON Lines, the
    row count. Returns the manifest; :class:`OutputError` naming what differs (or a missing manifest)."""
    path = Path(path)
    try:
        manifest = json.loads(manifest_path(path).read_text())
        rows, size, digest = int(manifest["rows"]), int(manifest["bytes"]), str(manifest["sha256"])
    except FileNotFoundError:
        raise ManifestMissing(f"{path.name} has no manifest ({manifest_path(path).name}): it cannot be verified"
                              ) from None
    except (OSError, ValueError, KeyError, TypeError) as exc:
        raise OutputError(f"the manifest of {path.name} is unreadable ({exc})") from None
    try:
        found_size = path.stat().st_size
    except FileNotFoundError:
        raise OutputError(f"{path.name} is missing") from None
    if found_size != size:
        raise OutputError(f"{path.name} is damaged: {found_size:,} bytes, the manifest records {size:,}")
    found = sha256_file(path)
    if found != digest:
        raise OutputError(f"{path.name} is damaged: its sha256 is {found[:16]}..., the manifest records "
                          f"{digest[:16]}...")
    if path.suffix in (".jsonl", ".ndjson"):
        with open(path, "rb") as f:
            lines = sum(block.count(b"\n") for block in iter(lambda: f.read(1 << 20), b""))
        if lines != rows:
            raise OutputError(f"{path.name} is damaged: {lines:,} rows, the manifest records {rows:,}")
    return manifest


def write_atomically(path: Path, data: bytes) -> None:
    """Replace ``path`` with ``data`` so that a crash leaves either the old or the new file, never a mix."""
    tmp = path.with_name(path.name + ".tmp")
    with open(tmp, "wb") as f:
        f.write(data)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)
    fsync_dir(path.parent)


def fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


# --------------------------------------------------------------------------------------------------
# The resumable result file


class ResultFile:
    """A result file built chunk by chunk in ``OUTPUT.partial/`` (see the module doc).

    Use: ``progress = rf.open(resume, overwrite)``; then ``rf.commit(rows, counts)`` for every chunk from
    ``progress.chunks_done`` on; then ``rf.finish()``. ``close()`` (or the context manager) releases the lock
    that keeps two runs from writing the same output.
    """

    def __init__(self, path: str | os.PathLike, table: Table, fingerprint: dict[str, Any],
                 fmt: str | None = None, sidecar: bool = False) -> None:
        self.path = Path(path)
        self.sidecar = sidecar
        self.format = fmt or output_format(self.path)
        self.table = table
        self.fingerprint = json.loads(json.dumps(fingerprint))  # as it reads back from progress.json
        self.work = self.path.with_name(self.path.name + ".partial")
        self.progress: Progress | None = None
        self._lock: BinaryIO | None = None
        self._data: BinaryIO | None = None
        self._encoder = CsvEncoder(table) if self.format == "csv" else JsonlEncoder()

    def __enter__(self) -> ResultFile:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    @property
    def _progress_path(self) -> Path:
        return self.work / "progress.json"

    @property
    def _data_path(self) -> Path:
        return self.work / "data"

    def open(self, resume: bool = False, overwrite: bool = False) -> Progress:
        """Start a fresh file or pick up an interrupted run; returns where to continue.

        Raises :class:`OutputError` when OUTPUT exists (without ``overwrite``), an interrupted run exists
        (without ``resume`` or ``overwrite``), another process writes the same output, or the interrupted run
        used another input or options; :class:`NothingToResume` for ``resume`` on a finished output.
        """
        if self.path.is_dir():
            raise OutputError(f"{self.path} is a directory; give a file name")
        self.path.parent.mkdir(parents=True, exist_ok=True)
        created = not self.work.exists()
        self.work.mkdir(exist_ok=True)
        self._lock = open(self.work / "lock", "wb")  # noqa: SIM115 - held until close()
        try:
            fcntl.flock(self._lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            self.close()
            raise OutputError(f"another lieprop run is writing {self.path} (lock {self.work / 'lock'})") from None
        try:
            return self._open_locked(resume, overwrite)
        except OutputError:
            if created:
                self.close()
                shutil.rmtree(self.work, ignore_errors=True)
            raise

    def _open_locked(self, resume: bool, overwrite: bool) -> Progress:
        found = None if overwrite else read_progress(self._progress_path)
        if found is not None:
            if not resume:
                raise OutputError(f"an interrupted run of {self.path} is in {self.work} ({found.rows_done} rows "
                                  "done)", "resume_or_overwrite")
            differs = sorted(k for k in {*found.fingerprint, *self.fingerprint}
                             if found.fingerprint.get(k) != self.fingerprint.get(k))
            if differs:
                raise OutputError(f"cannot resume {self.path}: the interrupted run differs in "
                                  f"{', '.join(differs)} (the input's contents changed, or other options)",
                                  "overwrite")
            self.progress = found
            if found.complete:
                self._verify_final(found)
                return found
            self._verify(found, exact=False)
            self._reopen_data(found)
            return found
        if self.path.exists() and not overwrite:
            if resume:
                raise NothingToResume(f"{self.path} is complete and no interrupted run was found; nothing to resume",
                                      "recompute")
            raise OutputError(f"{self.path} exists", "replace")
        for child in self.work.iterdir():
            if child.name != "lock":
                child.unlink() if child.is_file() else shutil.rmtree(child)
        self.progress = Progress(self.fingerprint)
        if self.format != "parquet":
            self._data = open(self._data_path, "w+b")  # noqa: SIM115 - held until close()
            self._append(self._encoder.header())
        self._save_progress()
        return self.progress

    def _reopen_data(self, progress: Progress) -> None:
        if self.format == "parquet":
            for part in self.work.glob("part-*"):
                if not part.name.endswith(".parquet") or int(part.name[5:13]) >= progress.chunks_done:
                    part.unlink()  # a chunk that was not committed (or a half-written .tmp)
            return
        if not self._data_path.exists() or self._data_path.stat().st_size < progress.bytes:
            raise OutputError(f"{self._data_path} is shorter than {self._progress_path} records",
                              "overwrite")
        self._data = open(self._data_path, "r+b")  # noqa: SIM115 - held until close()
        self._data.truncate(progress.bytes)  # drop a chunk that was being written when the run died
        self._data.seek(progress.bytes)

    def commit(self, rows: Sequence[Mapping[str, Any]], counts: Counts, elapsed_s: float) -> None:
        """Make one chunk's rows durable, then record it in the progress file."""
        assert self.progress is not None and not self.progress.complete
        p = self.progress
        if self.format == "parquet":
            import pyarrow.parquet as pq

            part = self.work / f"part-{p.chunks_done:08d}.parquet"
            tmp = part.with_name(part.name + ".tmp")
            with open(tmp, "wb") as f:
                pq.write_table(parquet_table(self.table, rows), f)
                f.flush()
                os.fsync(f.fileno())
            os.replace(tmp, part)
            p.chunks.append({"rows": len(rows), "part": part.name, "bytes": part.stat().st_size,
                             "sha256": sha256_file(part)})
        else:
            blob = self._encoder.rows(rows)
            offset = p.bytes
            self._append(blob)
            p.chunks.append({"rows": len(rows), "offset": offset, "bytes": len(blob),
                             "sha256": hashlib.sha256(blob).hexdigest()})
        p.chunks_done += 1
        p.rows_done += len(rows)
        p.counts = counts.to_dict()
        p.elapsed_s = elapsed_s
        self._save_progress()

    def finish(self, expected_rows: int | None = None) -> None:
        """Verify the whole output (every chunk against the manifest; ``expected_rows``, the number of input
        records, against the rows written), move the finished file to OUTPUT (atomically) and remove the work
        directory. :class:`OutputError` naming the damage leaves everything in place."""
        assert self.progress is not None
        p = self.progress
        if not p.complete:
            if self._data is not None:
                self._data.close()
                self._data = None
            self._verify(p, exact=True)
            if expected_rows is not None and expected_rows != p.rows_done:
                raise OutputError(f"{self.path} is not complete: {p.rows_done:,} rows were written but the input "
                                  f"has {expected_rows:,} records", "overwrite")
            if self.format == "parquet":
                self._merge_parts()
                import pyarrow.parquet as pq

                merged = pq.ParquetFile(self._data_path).metadata.num_rows
                if merged != p.rows_done:
                    raise OutputError(f"{self.path}: the merged file has {merged:,} rows, the parts {p.rows_done:,}")
            p.final = {"rows": p.rows_done, "bytes": self._data_path.stat().st_size,
                       "sha256": sha256_file(self._data_path)}
            p.complete = True
            self._save_progress()
        if self._data_path.exists():
            if self.sidecar:
                write_atomically(manifest_path(self.path), json.dumps(p.final).encode())
            os.replace(self._data_path, self.path)
            fsync_dir(self.path.parent)
        self.close()
        shutil.rmtree(self.work, ignore_errors=True)

    def close(self) -> None:
        if self._data is not None:
            self._data.close()
            self._data = None
        if self._lock is not None:
            self._lock.close()
            self._lock = None

    def _damaged(self, what: str) -> OutputError:
        return OutputError(f"{self.path} cannot be finished or resumed: {what}", "overwrite")

    def _verify(self, p: Progress, exact: bool) -> None:
        """Check the committed chunks on disk against the manifest: every chunk's bytes (its sha256), the totals,
        and for ``exact`` (finishing) that ``data`` holds nothing beyond the last chunk."""
        if len(p.chunks) != p.chunks_done or sum(int(c["rows"]) for c in p.chunks) != p.rows_done:
            raise self._damaged(f"{self._progress_path.name} records {p.rows_done:,} rows in {p.chunks_done} chunks "
                                f"but its manifest lists {sum(int(c['rows']) for c in p.chunks):,} rows in "
                                f"{len(p.chunks)} chunks")
        if self.format == "parquet":
            for i, c in enumerate(p.chunks):
                part = self.work / c["part"]
                where = f"committed part {c['part']} (chunk {i + 1} of {p.chunks_done}, {c['rows']:,} rows)"
                if not part.is_file():
                    raise self._damaged(f"{where} is missing")
                size = part.stat().st_size
                if size != c["bytes"]:
                    raise self._damaged(f"{where} has {size:,} bytes, expected {c['bytes']:,}")
                if sha256_file(part) != c["sha256"]:
                    raise self._damaged(f"{where} does not match its checksum (sha256)")
            return
        data = self._data_path
        size = data.stat().st_size if data.exists() else None
        if size is None or size < p.bytes:
            raise self._damaged(f"{data} has {size or 0:,} bytes, {self._progress_path.name} records {p.bytes:,}")
        if exact and size != p.bytes:
            raise self._damaged(f"{data} has {size:,} bytes, {size - p.bytes:,} more than the committed chunks")
        header = self._encoder.header()
        with open(data, "rb") as f:
            if f.read(len(header)) != header:
                raise self._damaged(f"the header of {data} differs from the expected one")
        offset = len(header)
        for i, c in enumerate(p.chunks):
            where = (f"chunk {i + 1} of {p.chunks_done} ({c['rows']:,} rows, bytes {c['offset']:,} to "
                     f"{c['offset'] + c['bytes']:,} of {data})")
            if c["offset"] != offset:
                raise self._damaged(f"{where} does not follow the previous chunk (expected byte {offset:,})")
            if sha256_file(data, c["offset"], c["bytes"]) != c["sha256"]:
                raise self._damaged(f"{where} does not match its checksum (sha256)")
            offset += c["bytes"]
        if offset != p.bytes:
            raise self._damaged(f"the manifest's chunks end at byte {offset:,}, {self._progress_path.name} records "
                                f"{p.bytes:,}")

    def _verify_final(self, p: Progress) -> None:
        """A run that died between recording "complete" and renaming: check the finished file before the rename."""
        if not self._data_path.exists():
            return  # renamed already: finish() only removes the work directory
        final = p.final or {}
        size = self._data_path.stat().st_size
        if size != final.get("bytes") or sha256_file(self._data_path) != final.get("sha256"):
            raise self._damaged(f"the finished {self._data_path} ({size:,} bytes) does not match its manifest "
                                f"({final.get('bytes')} bytes, sha256 {str(final.get('sha256'))[:16]}...)")

    def _append(self, blob: bytes) -> None:
        assert self._data is not None and self.progress is not None
        self._data.write(blob)
        self._data.flush()
        os.fsync(self._data.fileno())
        self.progress.bytes += len(blob)

    def _save_progress(self) -> None:
        assert self.progress is not None
        write_atomically(self._progress_path, json.dumps(asdict(self.progress), indent=1).encode())

    def _merge_parts(self) -> None:
        import pyarrow as pa
        import pyarrow.parquet as pq

        assert self.progress is not None
        parts = [self.work / c["part"] for c in self.progress.chunks]  # verified: each there, as committed
        schema = parquet_schema(self.table)
        with open(self._data_path, "wb") as f:
            with pq.ParquetWriter(f, schema) as writer:
                pending: list[Any] = []
                size = 0
                for part in parts:
                    t = pq.read_table(part, schema=schema)
                    pending.append(t)
                    size += t.num_rows
                    if size >= _PARQUET_ROW_GROUP:
                        writer.write_table(pa.concat_tables(pending), row_group_size=size)
                        pending, size = [], 0
                if pending or not parts:
                    writer.write_table(pa.concat_tables(pending) if pending else schema.empty_table())
            f.flush()
            os.fsync(f.fileno())
        # the parts stay until progress.json says "complete": a run killed before that merges them again
