"""Is a molecule something a lieprop model may predict? Typed errors and the domain checks.

Every reader sends its molecules through :func:`validate`. A molecule outside the model's domain is
either refused with a :class:`MoleculeError` whose ``code`` is one of docs/DESIGN.md's REST error codes, or
(when the caller has widened the limits) accepted with a warning attached, never silently passed.

Geometry rules, in the order they are checked:

* every coordinate is finite;
* no two atoms are closer than ``min_distance`` (0.5 Å: the shortest bond in QM9's domain, H-H in
  H2, is 0.74 Å; anything closer is a duplicated atom or a unit mistake);
* the molecule is one piece: join every pair of atoms closer than ``max_fragment_gap`` (4 Å); the
  resulting graph must be connected. Covalent bonds between H, C, N, O, F are at most ~1.6 Å and
  hydrogen bonds ~2-3 Å, so an atom or a fragment farther than 4 Å from everything else is a stray
  atom, a second molecule or a broken frame. This also catches an isolated atom whose nearest
  neighbour is farther than the gap.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Literal

import numpy as np

from lieprop.data.elements import QM9_ELEMENTS, QM9_MAX_ATOMS, QM9_MAX_HEAVY_ATOMS, symbol
from lieprop.data.molecule import Molecule

#: Error codes that do not belong to one input kind: the domain checks, conformer generation, empty input.
COMMON_CODES: tuple[str, ...] = (
    "unsupported_element",
    "too_many_atoms",
    "embedding_failed",
    "embedding_timeout",
    "charged_molecule",
    "invalid_geometry",
    "empty_input",
    "too_expensive",
)

if TYPE_CHECKING:
    ErrorCode = str  # at run time a Literal of error_codes(), built on access (module __getattr__ below)


#: Each registered input kind's codes (the code of an unreadable record, then the code of a parser that dies), in
#: registration order. The format registry (:mod:`lieprop.data.formats`) keeps this up to date whenever a kind is
#: registered or removed; it imports this module, never the other way round. The package imports the registry
#: (lieprop/data/__init__.py), so the built-in kinds are here before any reader runs.
_KIND_CODES: dict[str, tuple[str, ...]] = {}


def set_kind_codes(codes: dict[str, tuple[str, ...]]) -> None:
    """Replace the registered kinds' codes (called by the format registry only)."""
    global _KIND_CODES
    _KIND_CODES = dict(codes)


def error_codes() -> tuple[str, ...]:
    """The molecule error codes of the REST contract (docs/DESIGN.md), in a fixed order: each registered input
    kind's ``invalid_<kind>`` (:mod:`lieprop.data.formats`), then :data:`COMMON_CODES` (and any other code a kind
    declares). Derived from the format registry, so a new format's code is known as soon as it is registered."""
    kinds = list(_KIND_CODES.values())
    return tuple(dict.fromkeys([*(c[0] for c in kinds), *COMMON_CODES, *(x for c in kinds for x in c[1:])]))


def __getattr__(name: str) -> Any:
    """``ERROR_CODES`` (a tuple) and ``ErrorCode`` (a ``Literal`` for pydantic schemas) of the registry as it is
    when they are imported: computed here rather than at import, as the registry builds on this module."""
    if name == "ERROR_CODES":
        return error_codes()
    if name == "ErrorCode":
        return Literal[error_codes()]  # type: ignore[valid-type]
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


_SUPPORTED = ", ".join(symbol(z) for z in QM9_ELEMENTS)


class MoleculeError(Exception):
    """A molecule that cannot be predicted: ``code`` (a docs/DESIGN.md error code) and a human ``message``.

    Picklable (it crosses process-pool boundaries) and convertible to the REST error object with
    :meth:`to_dict`.
    """

    def __init__(self, code: ErrorCode, message: str) -> None:
        known = error_codes()
        if code not in known:
            raise ValueError(f"unknown error code {code!r}; expected one of {', '.join(known)}")
        super().__init__(message)
        self.code: ErrorCode = code
        self.message = message

    def __reduce__(self):  # Exception pickles self.args only, which would lose the code
        return (type(self), (self.code, self.message))

    def __str__(self) -> str:
        return f"{self.code}: {self.message}"

    def __repr__(self) -> str:
        return f"MoleculeError({self.code!r}, {self.message!r})"

    def __eq__(self, other: object) -> bool:
        return isinstance(other, MoleculeError) and (self.code, self.message) == (other.code, other.message)

    def __hash__(self) -> int:
        return hash((self.code, self.message))

    def to_dict(self) -> dict[str, str]:
        """The REST error object: ``{"code": ..., "message": ...}``."""
        return {"code": self.code, "message": self.message}


@dataclass(frozen=True)
class ValidationLimits:
    """What :func:`validate` accepts. The defaults are QM9's domain (docs/QM9.md).

    ``max_atoms``: more atoms (H included) -> ``too_many_atoms``.
    ``max_heavy_atoms_warn``: more heavy atoms -> accepted with an out-of-domain warning (only reachable
    when ``max_atoms`` is raised or the molecule is hydrogen-poor).
    ``min_distance`` (Å): two atoms closer -> ``invalid_geometry``.
    ``max_fragment_gap`` (Å): parts of the molecule farther apart -> ``invalid_geometry`` (module doc).
    ``allow_charged``: a non-zero total formal charge is refused unless True (then it warns).
    ``embed_timeout`` (s): the time ETKDG may spend per requested conformer of a SMILES or 2D MOL block
    (whole seconds, RDKit's granularity; 0: no limit); past it -> ``embedding_timeout``. A QM9-sized molecule
    embeds in ~10 ms, so only pathological inputs (a large polyyne ring) reach it.
    """

    max_atoms: int = QM9_MAX_ATOMS
    max_heavy_atoms_warn: int = QM9_MAX_HEAVY_ATOMS
    min_distance: float = 0.5
    max_fragment_gap: float = 4.0
    allow_charged: bool = False
    embed_timeout: int = 1

    def __post_init__(self) -> None:
        if self.max_atoms < 1:
            raise ValueError(f"max_atoms must be at least 1, got {self.max_atoms}")
        if not 0 <= self.min_distance < self.max_fragment_gap:
            raise ValueError(
                "need 0 <= min_distance < max_fragment_gap, "
                f"got {self.min_distance} and {self.max_fragment_gap}"
            )
        if self.embed_timeout < 0:
            raise ValueError(f"embed_timeout must be >= 0 (0: no limit), got {self.embed_timeout}")


#: QM9's domain.
DEFAULT_LIMITS = ValidationLimits()


def describe_elements(numbers: Sequence[int] | np.ndarray) -> str:
    """``"Cl (Z=17), Br (Z=35)"`` for the distinct atomic numbers given, in ascending order."""
    parts = []
    for z in sorted({int(z) for z in numbers}):
        name = symbol(z)
        parts.append(name if name.startswith("Z=") else f"{name} (Z={z})")
    return ", ".join(parts)


def check_composition(numbers: np.ndarray, charge: int, limits: ValidationLimits = DEFAULT_LIMITS) -> None:
    """The checks that need no coordinates: empty, elements, size, charge. Raises :class:`MoleculeError`.

    Cheap, so that SMILES readers can refuse a molecule before spending time embedding it.
    """
    numbers = np.asarray(numbers).reshape(-1)
    if numbers.size == 0:
        raise MoleculeError("empty_input", "the molecule has no atoms")
    bad = numbers[~np.isin(numbers, QM9_ELEMENTS)]
    if bad.size:
        noun = "element" if np.unique(bad).size == 1 else "elements"
        verb = "is" if noun == "element" else "are"
        raise MoleculeError(
            "unsupported_element",
            f"{noun} {describe_elements(bad)} {verb} not supported; lieprop models cover {_SUPPORTED}",
        )
    if numbers.size > limits.max_atoms:
        raise MoleculeError(
            "too_many_atoms",
            f"the molecule has {numbers.size} atoms (hydrogens included); the limit is {limits.max_atoms}"
            f" (QM9 molecules have at most {QM9_MAX_ATOMS})",
        )
    if charge != 0 and not limits.allow_charged:
        raise MoleculeError(
            "charged_molecule",
            f"the molecule has total formal charge {charge:+d}; lieprop models were trained on neutral "
            "molecules only",
        )


def check_geometry(numbers: np.ndarray, positions: np.ndarray,
                   limits: ValidationLimits = DEFAULT_LIMITS) -> None:
    """Finite coordinates, no atoms too close, one connected piece. Raises :class:`MoleculeError`."""
    positions = np.asarray(positions, dtype=np.float64).reshape(-1, 3)
    finite = np.isfinite(positions).all(axis=1)
    if not finite.all():
        bad = np.flatnonzero(~finite)
        shown = ", ".join(str(i) for i in bad[:10]) + (", ..." if bad.size > 10 else "")
        raise MoleculeError(
            "invalid_geometry", f"non-finite coordinates (NaN or infinity) for atom(s) {shown}"
        )
    n = positions.shape[0]
    if n < 2:
        return
    dist = np.linalg.norm(positions[:, None, :] - positions[None, :, :], axis=-1)
    np.fill_diagonal(dist, np.inf)
    i, j = np.unravel_index(np.argmin(dist), dist.shape)
    if dist[i, j] < limits.min_distance:
        i, j = sorted((int(i), int(j)))
        raise MoleculeError(
            "invalid_geometry",
            f"atoms {i} ({symbol(int(numbers[i]))}) and {j} ({symbol(int(numbers[j]))}) are "
            f"{dist[i, j]:.3f} Å apart, closer than the minimum {limits.min_distance} Å",
        )
    reached = _reachable_from_first(dist <= limits.max_fragment_gap)
    if not reached.all():
        gap = dist[np.ix_(reached, ~reached)].min()
        pieces = count_components(dist <= limits.max_fragment_gap)
        stray = np.flatnonzero(~reached)
        shown = ", ".join(str(k) for k in stray[:10]) + (", ..." if stray.size > 10 else "")
        raise MoleculeError(
            "invalid_geometry",
            f"the structure falls apart into {pieces} fragments: atom(s) {shown} are {gap:.2f} Å or more "
            f"from the rest, farther than the {limits.max_fragment_gap} Å allowed within one molecule",
        )


def validate(mol: Molecule, limits: ValidationLimits = DEFAULT_LIMITS) -> Molecule:
    """Check ``mol`` against ``limits``; return it (with out-of-domain warnings attached) or raise.

    Raises :class:`MoleculeError` with code ``empty_input``, ``unsupported_element``,
    ``too_many_atoms``, ``charged_molecule`` or ``invalid_geometry`` (checked in that order).
    Warnings (molecule accepted, prediction is an extrapolation): more heavy atoms than
    ``limits.max_heavy_atoms_warn``; a charged molecule when ``limits.allow_charged``.
    """
    check_composition(mol.numbers, mol.charge, limits)
    check_geometry(mol.numbers, mol.positions, limits)
    warnings = []
    if mol.n_heavy > limits.max_heavy_atoms_warn:
        warnings.append(
            f"out of domain: {mol.n_heavy} heavy atoms, QM9 molecules have at most {QM9_MAX_HEAVY_ATOMS}; "
            "the prediction is an extrapolation"
        )
    if mol.charge != 0:
        warnings.append(
            f"out of domain: total formal charge {mol.charge:+d}, QM9 molecules are neutral; "
            "the prediction is an extrapolation"
        )
    warnings = [w for w in warnings if w not in mol.warnings]  # validating twice adds nothing
    return mol.with_warnings(*warnings) if warnings else mol


def _reachable_from_first(adjacency: np.ndarray) -> np.ndarray:
    """Atoms connected to atom 0 through ``adjacency`` (breadth-first, one vectorised step per layer)."""
    reached = np.zeros(adjacency.shape[0], dtype=bool)
    frontier = reached.copy()
    frontier[0] = True
    while frontier.any():
        reached |= frontier
        frontier = adjacency[frontier].any(axis=0) & ~reached
    return reached


def count_components(adjacency: np.ndarray) -> int:
    """The connected pieces of a graph given by its boolean adjacency matrix."""
    remaining = np.arange(adjacency.shape[0])
    count = 0
    while remaining.size:
        sub = adjacency[np.ix_(remaining, remaining)]
        remaining = remaining[~_reachable_from_first(sub)]
        count += 1
    return count
