"""Read-only views computed at every use: tables that other modules used to hold as constants (``readers.FORMATS``,
``jobs.records.KINDS``, ...) are now views of the format registry (:mod:`lieprop.data.formats`), so they never miss
a format registered after their module was imported.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator, Mapping, Set
from typing import Generic, TypeVar

K = TypeVar("K")
V = TypeVar("V")


class LiveMapping(Mapping[K, V], Generic[K, V]):
    """A read-only mapping computed from the registry at every use, so that it never misses a format."""

    def __init__(self, compute: Callable[[], Mapping[K, V]]) -> None:
        self._compute = compute

    def __getitem__(self, key: K) -> V:
        return self._compute()[key]

    def __iter__(self) -> Iterator[K]:
        return iter(self._compute())

    def __len__(self) -> int:
        return len(self._compute())

    def __repr__(self) -> str:
        return repr(dict(self._compute()))


class LiveSet(Set[K], Generic[K]):
    """A read-only set computed from the registry at every use."""

    def __init__(self, compute: Callable[[], Iterable[K]]) -> None:
        self._compute = compute

    def __contains__(self, value: object) -> bool:
        return value in set(self._compute())

    def __iter__(self) -> Iterator[K]:
        return iter(tuple(self._compute()))

    def __len__(self) -> int:
        return len(tuple(self._compute()))

    def __repr__(self) -> str:
        return repr(frozenset(self._compute()))
