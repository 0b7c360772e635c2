"""XYZ and extended-XYZ: cut a (multi-frame) stream into frames, parse each frame through ASE.

Frames are cut apart by their atom-count lines before parsing (:func:`split_xyz_frames`), so a broken frame becomes
one ``invalid_xyz`` record and the frames after it still come through. The id of a frame is the extxyz
``id``/``name`` key, else the comment line when it is a single word (``gdb 17 ...`` QM9 comments give ``gdb_17``),
else the frame index. Atomic numbers in place of symbols are accepted. ASE is imported inside the parser.
"""

from __future__ import annotations

import io
import re
from collections.abc import Iterator, Sequence
from typing import Any

import numpy as np

from lieprop.data.atoms import id_from_info, molecule_from_atoms
from lieprop.data.elements import SYMBOLS, atomic_number
from lieprop.data.records import ID_KEYS, Item, ParseOptions, RawRecord, ReadOptions
from lieprop.data.textio import Lines, Source, clip, open_text, quote_input, resolve_source
from lieprop.data.validation import MoleculeError, ValidationLimits


def _is_count_line(line: str) -> bool:
    fields = line.split()
    return len(fields) == 1 and fields[0].isdigit()


def _is_atom_line(line: str) -> bool:
    return len(line.split()) >= 4


def split_xyz_frames(raw: Iterator[str], options: ReadOptions | None = None) -> Iterator[RawRecord]:
    """Cut a (multi-frame) XYZ stream into frames using the atom-count lines.

    A frame whose count line is garbled, or that has fewer or more atom lines than it declares, becomes
    one error record; reading resumes at the next line that is a bare atom count. ``options`` is unused (the
    registry's splitter signature, :mod:`lieprop.data.formats`).
    """
    lines = Lines(raw)

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
            message = f"expected the atom count of a frame, got {clip(header)}"
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
            where = "the input ends" if bad is None else f"line {lines.number + 1} is {clip(bad)}"
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
        info_id = id_from_info(atoms.info)
        molecule = molecule_from_atoms(
            atoms, info_id or fallback, {"source": "xyz", "frame": index, "conformer": None}, limits
        )
        return Item(index, molecule.id, molecule)
    except MoleculeError as exc:
        return Item(index, fallback, error=exc)


def parse_xyz_record(index: int, record: RawRecord, options: ParseOptions) -> Item:
    """:func:`xyz_item` with the registry's parser signature (:mod:`lieprop.data.formats`)."""
    return xyz_item(index, record, options.limits)


def read_xyz_frames(source: Source, *, text: bool | None = None) -> list[tuple[Any, Any]]:
    """Every frame of a (multi-frame) XYZ / extxyz source as ``(numbers (n,), positions (n, 3) Å)`` numpy arrays,
    in order, as point clouds: no chemistry is validated (any element, any geometry), unlike :func:`xyz_item`.

    Raises ``ValueError`` naming the first frame that cannot be read (and its line), ``FileNotFoundError`` for a
    missing file. Used where frames are configurations of one system rather than molecules to predict
    (``lieprop discover``).
    """
    frames: list[tuple[Any, Any]] = []
    with open_text(resolve_source(source, text)) as handle:
        for index, record in enumerate(split_xyz_frames(iter(handle))):
            try:
                if record.error is not None:
                    raise record.error
                atoms = _parse_xyz_frame(record)
            except MoleculeError as exc:
                raise ValueError(f"frame {index}: {exc}") from None
            frames.append((np.asarray(atoms.numbers, dtype=np.int64), np.asarray(atoms.positions, dtype=np.float64)))
    return frames


def write_xyz_frames(path: Any, frames: Sequence[tuple[Any, Any]], comments: Sequence[str] | None = None) -> None:
    """Write ``(numbers, positions)`` frames as one multi-frame XYZ file (positions in Å, 10 decimals), the format
    :func:`read_xyz_frames` reads."""
    lines: list[str] = []
    for i, (numbers, positions) in enumerate(frames):
        lines += [str(len(numbers)), comments[i] if comments is not None else f"frame={i}"]
        lines += [f"{SYMBOLS[int(z)]} {x:.10f} {y:.10f} {w:.10f}" for z, (x, y, w) in zip(numbers, positions,
                                                                                          strict=True)]
    with open(path, "w") as handle:
        handle.write("\n".join(lines) + "\n")


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
                f"unknown element symbol {quote_input(token)} on line {record.line + k}; lieprop models cover "
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
_KEY_ID = re.compile(r"(?:^|\s)(?:" + "|".join(ID_KEYS) + r')=(?:"([^"]*)"|(\S+))', re.IGNORECASE)


def _id_from_comment(comment: str) -> str | None:
    """An id from a comment line: an extxyz ``id=``/``name=`` pair, ``gdb N`` (QM9) -> ``gdb_N``, or the
    line itself when it is a single word."""
    text = comment.strip()
    if m := _KEY_ID.search(text):
        return m.group(1) if m.group(1) is not None else m.group(2)
    if m := _QM9_COMMENT.match(text):
        return f"gdb_{m.group(1)}"
    return text if _WORD_ID.match(text) else None
