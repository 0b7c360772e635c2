"""REST items and library inputs -> validated molecules: the input half of the REST contract (docs/DESIGN.md).

An input is a SMILES string, a :class:`Molecule`, ASE ``Atoms``, or a dict shaped like a REST item: ``{"id", one
of the text keys (``smiles``, ``xyz``, ``sdf``: the registered kinds' ``item_key``) | "numbers" + "positions"
(+ "charge")}``. The text keys come from the format registry (:mod:`lieprop.data.formats`), so a kind registered
with an ``item_key`` is a REST input without a change here.

:func:`parse_items` is a process-pool task (the service's embedding pool unpickles it by name): this module imports
neither torch nor RDKit at import time, so those workers stay small.
"""

from __future__ import annotations

import dataclasses
import itertools
import time
from collections.abc import Mapping, Sequence
from typing import Any, NamedTuple

from lieprop.data import formats
from lieprop.data.atoms import from_arrays, from_atoms
from lieprop.data.formats import Kind
from lieprop.data.molecule import Molecule
from lieprop.data.readers import read_records
from lieprop.data.records import DEFAULT_CONFORMERS, ParseOptions
from lieprop.data.smiles import from_smiles
from lieprop.data.validation import DEFAULT_LIMITS, MoleculeError, ValidationLimits, validate
from lieprop.data.views import LiveMapping, LiveSet

#: How a REST item's text is parsed unless told otherwise.
DEFAULT_OPTIONS = ParseOptions()
#: The REST key of the array kind: atomic numbers, with ``positions`` (and optionally ``charge``) beside it.
ARRAY_KEY = "numbers"
#: Input kinds of a REST item (its key) and the provenance ``source`` each produces; a view of the registry.
INPUT_KINDS: LiveMapping[str, str] = LiveMapping(
    lambda: {**{k.item_key: k.name for k in formats.item_kinds()}, ARRAY_KEY: "atoms"})
#: Item keys whose parsing may embed a conformer (RDKit, tens of ms): the service sends them to its process pool.
EMBEDDING_KINDS: LiveSet[str] = LiveSet(
    lambda: [k.item_key for k in formats.item_kinds() if k.embeds])


def _item_keys() -> frozenset[str]:
    return frozenset({*formats.RESERVED_ITEM_KEYS, *(k.item_key for k in formats.item_kinds())})


def _choices() -> str:
    """``'smiles', 'xyz', 'sdf' or 'numbers' + 'positions'``: the inputs an item may hold, for messages."""
    return ", ".join(repr(k.item_key) for k in formats.item_kinds()) + f" or {ARRAY_KEY!r} + 'positions'"


def _labels() -> str:
    """``SMILES, XYZ and SDF``: the text kinds, for messages."""
    labels = [k.label for k in formats.item_kinds()]
    return labels[0] if len(labels) == 1 else ", ".join(labels[:-1]) + " and " + labels[-1]


def input_kind(item: Mapping[str, Any]) -> str:
    """Which of the text keys (``smiles``, ``xyz``, ``sdf``) or ``numbers`` (with ``positions``) a REST item holds.

    Raises ``ValueError`` unless exactly one is given (``numbers`` and ``positions`` together), or for unknown keys.
    """
    unknown = sorted(set(item) - _item_keys())
    if unknown:
        raise ValueError(f"unknown keys {unknown}; an item has 'id' and one of {_choices()} (+ optional 'charge')")
    given = [k for k in INPUT_KINDS if item.get(k) is not None]
    if (item.get(ARRAY_KEY) is None) != (item.get("positions") is None):
        raise ValueError(f"{ARRAY_KEY!r} and 'positions' go together")
    if len(given) != 1:
        what = "none" if not given else ", ".join(repr(k) for k in given)
        raise ValueError(f"an item needs exactly one of {_choices()}; got {what}")
    if item.get("charge") is not None and given[0] != ARRAY_KEY:
        raise ValueError(f"'charge' goes with {ARRAY_KEY!r} + 'positions' ({_labels()} carry their own)")
    return given[0]


def read_one(kind: Kind, text: str, ident: str, options: ParseOptions = DEFAULT_OPTIONS) -> Molecule:
    """The one molecule of a REST item's text of ``kind``, with id ``ident``: the kind's ``from_text`` when it has
    one, else its splitter and parser, refusing a text of several records with the kind's error code (a request
    maps items to results one to one). Raises :class:`MoleculeError`."""
    if kind.from_text is not None:
        return kind.from_text(text, ident, options)
    found = list(itertools.islice(read_records(kind, text, options=options, text=True), 2))
    if len(found) > 1:
        raise MoleculeError(kind.error_code, f"the {kind.item_key} text holds more than one molecule "
                            f"({kind.record}s); send one molecule per item")
    if found[0].error is not None:
        raise found[0].error
    return dataclasses.replace(found[0].molecule, id=ident)


def parse_item(item: Any, index: int, limits: ValidationLimits = DEFAULT_LIMITS,
               n_conformers: int = DEFAULT_CONFORMERS) -> Molecule:
    """One input (SMILES string, :class:`Molecule`, ASE ``Atoms`` or REST item dict) as a validated molecule.

    A SMILES or 2D MOL block is embedded in ``n_conformers`` conformers (:func:`lieprop.data.smiles.from_smiles`).
    The molecule's id is the item's own (dict ``id``, ``Molecule.id``, ``atoms.info["id"]``), else ``str(index)``.
    Raises :class:`MoleculeError` for molecules that cannot be predicted, ``TypeError`` / ``ValueError`` for inputs
    that are no molecule description at all.
    """
    if isinstance(item, str):
        return from_smiles(item, str(index), n_conformers=n_conformers, limits=limits)
    if isinstance(item, Molecule):
        molecule = validate(item, limits)
        return molecule if molecule.id is not None else dataclasses.replace(molecule, id=str(index))
    if isinstance(item, Mapping):
        key = input_kind(item)
        ident = str(item["id"]) if item.get("id") is not None else str(index)
        if key == ARRAY_KEY:
            return from_arrays(item[ARRAY_KEY], item["positions"], id=ident,
                               charge=int(item.get("charge") or 0), limits=limits)
        kind = formats.by_item_key(key)
        assert kind is not None  # input_kind returns registered keys only
        return read_one(kind, item[key], ident, ParseOptions(limits, n_conformers=n_conformers))
    if hasattr(item, "numbers") and hasattr(item, "get_positions"):  # ASE Atoms, without importing ASE
        molecule = from_atoms(item, limits=limits)
        return molecule if molecule.id is not None else dataclasses.replace(molecule, id=str(index))
    raise TypeError(f"molecule {index}: cannot predict a {type(item).__name__}; give a SMILES string, a Molecule, "
                    "ASE Atoms or a dict like the REST items")


def item_kind(item: Any) -> str:
    """``smiles``, ``xyz``, ``sdf`` (a text key), ``numbers``, ``atoms`` or ``molecule``: what :func:`parse_item`
    will do with ``item``."""
    if isinstance(item, str):
        return "smiles"
    if isinstance(item, Mapping):
        return input_kind(item)
    return "molecule" if isinstance(item, Molecule) else "atoms"


class Parsed(NamedTuple):
    """:func:`parse_items`' answer for one input: its index, the molecule or its error, and the seconds it took."""

    index: int
    outcome: Molecule | MoleculeError
    seconds: float


def parse_items(items: Sequence[tuple[int, Any]], limits: ValidationLimits = DEFAULT_LIMITS,
                n_conformers: int = DEFAULT_CONFORMERS) -> list[Parsed]:
    """Parse ``(index, input)`` pairs (SMILES and 2D MOL blocks in ``n_conformers`` conformers); a process-pool
    task (picklable arguments and results, never raises for a bad molecule). Unforeseen reader failures become the
    kind's ``failure_code``, so one input cannot fail the rest."""
    out = []
    for index, item in items:
        start = time.perf_counter()
        try:
            outcome: Molecule | MoleculeError = parse_item(item, index, limits, n_conformers)
        except MoleculeError as exc:
            outcome = exc
        except Exception as exc:  # RDKit/ASE surprises; TypeError for non-molecules is the library caller's
            if isinstance(exc, TypeError) and not isinstance(item, Mapping | str):
                raise
            outcome = MoleculeError(_failure_code(item), f"cannot read molecule {index}: {type(exc).__name__}: {exc}")
        out.append(Parsed(index, outcome, time.perf_counter() - start))
    return out


def _failure_code(item: Any) -> str:
    """The code of an input whose reading failed unexpectedly: its kind's, else ``invalid_geometry``."""
    try:
        kind = formats.by_item_key(item_kind(item))
    except ValueError:
        kind = None
    return kind.failure_code if kind is not None else "invalid_geometry"


def fallback_id(item: Any, index: int) -> str:
    """The id a result gets when its input could not be read: the item's own, else its position."""
    if isinstance(item, Mapping) and item.get("id") is not None:
        return str(item["id"])
    own = getattr(item, "id", None)
    if isinstance(own, str):
        return own
    info = getattr(item, "info", None)
    if isinstance(info, Mapping):
        for key in ("id", "name"):
            if info.get(key) is not None:
                return str(info[key])
    return str(index)
