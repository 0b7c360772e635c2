"""Text sources for readers: a path, file contents as ``bytes`` or ``str``; ``.gz`` files decompressed on the fly.

A ``str`` is contents when it contains a newline and a file name otherwise; ``text=True`` forces "contents", which
a service handing user input to a reader must use, or a request could name a file on the server.
"""

from __future__ import annotations

import contextlib
import gzip
import io
import os
from collections.abc import Iterator
from pathlib import Path
from typing import TextIO

#: What a reader accepts: a path (``os.PathLike``, or a ``str`` without a newline), or contents.
Source = str | bytes | os.PathLike


class QuotaExceeded(ValueError):
    """An input went over a quota (``max_rows``, ``max_decompressed_bytes``); :attr:`quota` names it (the service
    counts refusals by quota)."""

    def __init__(self, message: str, quota: str) -> None:
        super().__init__(message)
        self.quota = quota


def resolve_source(source: Source, text: bool | None) -> Path | str:
    """A file path (checked to exist: ``FileNotFoundError`` otherwise), or the contents as a string."""
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
def open_text(source: Path | str, newline: str | None = None, max_decompressed_bytes: int | None = None
              ) -> Iterator[TextIO]:
    """A text handle on a file (``.gz`` decompressed, BOM dropped) or on a string's contents.

    A ``.gz`` file that is not gzip raises ``ValueError`` ("not a gzip file"); reading more than
    ``max_decompressed_bytes`` out of it (None: no limit) raises ``ValueError`` naming the limit, so that a small
    upload cannot expand into an unbounded stream.
    """
    if isinstance(source, str):
        yield io.StringIO(source, newline=newline)
        return
    if source.suffix != ".gz":
        with open(source, encoding="utf-8-sig", errors="replace", newline=newline) as handle:
            yield handle
        return
    check_gzip(source)
    with open(source, "rb") as raw, gzip.GzipFile(fileobj=raw, mode="rb") as unzipped:
        capped = _Capped(unzipped, max_decompressed_bytes, source.name)
        with io.TextIOWrapper(io.BufferedReader(capped), encoding="utf-8-sig", errors="replace",
                              newline=newline) as handle:
            try:
                yield handle
            except (gzip.BadGzipFile, EOFError) as exc:
                raise ValueError(f"{source.name} is not a valid gzip file: {exc}") from None


def check_gzip(path: Path) -> None:
    """``ValueError`` unless ``path`` starts with the gzip magic bytes (a ``*.gz`` name is no proof)."""
    with open(path, "rb") as handle:
        if handle.read(2) != GZIP_MAGIC:
            raise ValueError(f"{path.name} is not a gzip file, although its name ends in .gz")


GZIP_MAGIC = b"\x1f\x8b"


class _Capped(io.RawIOBase):
    """A readable stream that raises ``ValueError`` once more than ``limit`` bytes have been read from it."""

    def __init__(self, inner: io.IOBase, limit: int | None, name: str) -> None:
        self._inner, self._limit, self._name, self._read = inner, limit, name, 0

    def readable(self) -> bool:
        return True

    def readinto(self, buffer) -> int:  # noqa: ANN001 - a writable buffer
        try:
            n = self._inner.readinto(buffer)
        except (gzip.BadGzipFile, EOFError) as exc:
            raise ValueError(f"{self._name} is not a valid gzip file: {exc}") from None
        self._read += n
        if self._limit is not None and self._read > self._limit:
            raise QuotaExceeded(f"{self._name} decompresses to more than {self._limit:,} bytes, the limit "
                                "(max_decompressed_bytes)", "decompressed_bytes")
        return n


class Lines:
    """Lines with one line of look-ahead and 1-based line numbers (for splitters that must see a line before
    deciding whether it belongs to the current record)."""

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


def clip(line: str, width: int = 40) -> str:
    """A line, stripped and shortened to ``width`` characters, quoted: safe to show in an error message."""
    text = line.strip()
    return repr(text if len(text) <= width else text[: width - 3] + "...")


#: How much of a user's input an error message quotes (:func:`quote_input`).
QUOTE_WIDTH = 80


def quote_input(text: str, width: int = QUOTE_WIDTH, *, quoted: bool = True) -> str:
    """User input to show in a message: quoted (``repr``), and past ``width`` characters cut with ``...`` and the
    full length, so that a 20 MB line cannot make a 20 MB error message."""
    if len(text) <= width:
        return repr(text) if quoted else text
    head = text[:width]
    return f"{head!r}... ({len(text):,} characters)" if quoted else f"{head}... ({len(text):,} characters)"
