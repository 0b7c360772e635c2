"""Output columns: which properties a result carries, with units, from which model output."""

from __future__ import annotations

from collections.abc import Sequence
from typing import NamedTuple

from lieprop.data.properties import BY_NAME, ENERGY_NAMES, resolve


class UnknownPropertyError(ValueError):
    """Property names that are not known, or not predicted by the model; ``names`` lists them."""

    def __init__(self, message: str, names: Sequence[str]) -> None:
        super().__init__(message)
        self.names = list(names)


class Column(NamedTuple):
    """One output property: its name, unit, the model output it comes from, and whether the atom references are
    subtracted (``*_atomization``)."""

    name: str
    unit: str
    target: int
    atomization: bool


def select_properties(targets: Sequence[str], names: Sequence[str] | None = None) -> list[Column]:
    """The output columns for ``names`` (None: every target of the model, then the atomization energies of its
    energy targets). Raises :class:`UnknownPropertyError` naming unknown properties or ones the model lacks."""
    index = {t: i for i, t in enumerate(targets)}
    if names is None:
        chosen = list(targets) + [f"{e}_atomization" for e in ENERGY_NAMES if e in index]
    else:
        names = list(names)
        try:
            resolve(names)
        except ValueError as exc:
            unknown = [n for n in names if not _known_property(n)]
            raise UnknownPropertyError(str(exc), unknown) from None
        missing = [n for n in names if n.removesuffix("_atomization") not in index]
        if missing:
            raise UnknownPropertyError(
                f"the model does not predict {missing}; it predicts {list(targets)} (and the atomization energies "
                "of its energy targets)", missing,
            )
        chosen = list(dict.fromkeys(names))  # duplicates asked for once
    return [Column(n, BY_NAME[n.removesuffix("_atomization")].unit, index[n.removesuffix("_atomization")],
                   n.endswith("_atomization")) for n in chosen]


def _known_property(name: str) -> bool:
    try:
        resolve([name])
        return True
    except ValueError:
        return False
