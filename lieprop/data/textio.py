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
def open_text(source: Path | str, newline: str | None = None) -> Iterator[TextIO]:
    """A text handle on a file (``.gz`` decompressed, BOM dropped) or on a string's contents."""
    if isinstance(source, str):
        yield io.StringIO(source, newline=newline)
        return
    opener = gzip.open if source.suffix == ".gz" else open
    with opener(source, "rt", encoding="utf-8-sig", errors="replace", newline=newline) as handle:
        yield handle


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
