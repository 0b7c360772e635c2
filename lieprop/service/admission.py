"""Cost-based admission: which molecules of a request the model thread takes, decided before any model work.

Every valid molecule gets its estimated model time (:mod:`lieprop.model.cost`, reference milliseconds: frames x
evaluations x the cost of a frame of its size), computed where the molecule was read (:func:`read_items`: on a
thread for XYZ and arrays, in the embedding pool for SMILES and MOL blocks), so the estimate costs no extra hop; a
SMILES or 2D MOL block has one estimate per conformer, each predicted apart, and nothing for a conformer that
copies another (it gets no model pass: :mod:`lieprop.data.duplicates`). A molecule with a geometry over
``max_molecule_cost_ms`` is refused with the item error ``too_expensive``; so are the molecules that would take the
request's total (every distinct conformer counted) past ``max_request_cost_ms`` (in request order)
(:func:`admit`). The rest of the request is served. The defaults refuse no QM9 molecule and admit a full request of
ordinary ones (docs/API.md, "Cost of a molecule").
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from lieprop.data.duplicates import copy_of
from lieprop.data.items import Parsed, parse_items
from lieprop.data.molecule import Molecule
from lieprop.data.records import DEFAULT_CONFORMERS
from lieprop.data.validation import MoleculeError, ValidationLimits
from lieprop.model.cost import Cost, CostModel

#: A forward pass of a heavy molecule's frames costs about ``max_batch_cost_ms / FORWARD_SHARE`` (8 frames at least):
#: about the longest a light request waits for heavy work to let it in.
FORWARD_SHARE = 10


@dataclass(frozen=True)
class CostLimits:
    """The limits of :func:`admit`, in reference milliseconds (None: no limit)."""

    molecule: float | None = None
    request: float | None = None


@dataclass(frozen=True)
class Estimated:
    """One read item: :func:`parse_items`' answer, and the molecule's cost (None when it is an error): one
    :class:`Cost` per geometry its prediction averages over (a SMILES: one per conformer), or a single one; and,
    when they were looked for, which earlier geometry each one copies (:func:`~lieprop.data.duplicates.copy_of`)."""

    parsed: Parsed
    cost: Cost | tuple[Cost, ...] | None
    copies: tuple[int, ...] | None = None

    @property
    def geometry_costs(self) -> tuple[Cost, ...]:
        """The cost of each geometry (none for an error)."""
        return () if self.cost is None else self.cost if isinstance(self.cost, tuple) else (self.cost,)


def read_items(items: Sequence[tuple[int, Any]], limits: ValidationLimits, costs: CostModel,
               conformers: int = DEFAULT_CONFORMERS) -> list[Estimated]:
    """Read ``(index, item)`` pairs (:func:`~lieprop.data.items.parse_items`, ``conformers`` per SMILES or 2D MOL
    block) and estimate each molecule's cost: one task for a thread or a pool worker (picklable arguments and
    results). A molecule's copied conformers are found here, once: its estimate leaves them out and the batcher
    reuses them (:attr:`Admitted.copies`)."""
    out = []
    for p in parse_items(items, limits, conformers):
        if not isinstance(p.outcome, Molecule):
            out.append(Estimated(p, None))
            continue
        copies = tuple(copy_of(p.outcome.numbers, p.outcome.geometries))
        out.append(Estimated(p, geometry_costs(costs, p.outcome, copies), copies))
    return out


def geometry_costs(costs: CostModel, molecule: Molecule, copies: Sequence[int] | None = None) -> tuple[Cost, ...]:
    """The estimated model time of each geometry a molecule's prediction averages over (its conformers); a conformer
    that copies an earlier one costs nothing (it gets no model pass: ``copies``, found with
    :func:`lieprop.data.duplicates.copy_of` when not given)."""
    geometries = molecule.geometries
    copies = copy_of(molecule.numbers, geometries) if copies is None else copies
    return tuple(costs.estimate(molecule.numbers, x) if c == k else Cost(0, 0.0)
                 for k, (x, c) in enumerate(zip(geometries, copies, strict=True)))


@dataclass(frozen=True)
class Admitted:
    """Each item's outcome after admission (a :class:`Molecule` or the error it met, ``too_expensive`` included),
    and the estimated cost of each admitted molecule, in the order of the admitted molecules."""

    outcomes: list[Any]
    costs: list[tuple[float, ...]]  # per admitted molecule, each geometry's (conformer's) estimate
    copies: list[tuple[int, ...] | None]  # per admitted molecule, Estimated.copies


def admit(estimated: Sequence[Estimated], limits: CostLimits) -> Admitted:
    """Refuse the molecules over ``limits`` (see the module doc); errors pass through. ``estimated`` in request
    order. Cheap: no molecule is looked at again."""
    out: list[Any] = []
    costs: list[tuple[float, ...]] = []
    copies: list[tuple[int, ...] | None] = []
    total = 0.0
    for e in estimated:
        outcome, parts = e.parsed.outcome, e.geometry_costs
        if not parts or not isinstance(outcome, Molecule):
            out.append(outcome)
            continue
        # the molecule limit bounds one forward pass's worth (each conformer is predicted apart); the request's
        # budget counts every distinct conformer
        peak, ms = max(parts, key=lambda c: c.ms), sum(c.ms for c in parts)
        if limits.molecule is not None and peak.ms > limits.molecule:
            out.append(MoleculeError("too_expensive", f"this molecule would take an estimated {peak.ms:,.0f} ms of "
                                     f"model time ({peak.frames} frames of {outcome.n_atoms} atoms: a symmetric "
                                     f"molecule is seen in many frames); the limit per molecule is "
                                     f"{limits.molecule:,.0f} ms"))
            continue
        if limits.request is not None and total + ms > limits.request:
            out.append(MoleculeError("too_expensive", f"the molecules before this one use the request's budget of "
                                     f"model time ({total:,.0f} of {limits.request:,.0f} ms; this one needs "
                                     f"{ms:,.0f} ms{_over_conformers(outcome, parts)}): send it in another request"))
            continue
        total += ms
        out.append(outcome)
        costs.append(tuple(c.ms for c in parts))
        copies.append(e.copies)
    return Admitted(out, costs, copies)


def _over_conformers(molecule: Molecule, parts: Sequence[Cost]) -> str:
    k, distinct = len(molecule.geometries), sum(c.frames > 0 for c in parts)
    if k == 1:
        return ""
    return f" for its {k} conformers" + (f", {distinct} of them distinct" if distinct < k else "")


def forward_frames(costs: CostModel, n_atoms: int, max_frames: int, forward_ms: float) -> int:
    """Frames per forward pass for molecules of up to ``n_atoms`` atoms: as many as cost ``forward_ms`` per network
    evaluation, between 8 and ``max_frames``. Small molecules get full chunks; a heavy molecule's frames are cut
    into short passes, so the work waiting between them (:meth:`DynamicBatcher.between_chunks`) waits little."""
    return int(np.clip(forward_ms // max(costs.frame_cost(n_atoms), 1e-9), min(8, max_frames), max_frames))


def networks_per_pass(model: Any) -> int:
    """Networks one forward pass of ``model`` evaluates: all of an ensemble's members when they are evaluated jointly
    (``EnsembleModel.joint``: one model process for all of them), else one. A pass that should take about as long
    as one network on F frames holds F / this."""
    return len(model.members) if getattr(model, "joint", False) else 1


def chunked_predict(model: Any, costs: CostModel, max_frames: int, forward_ms: float
                    ) -> Callable[..., Any]:
    """``model.predictions`` taking ``between_chunks``: the model thread's predict function. A heavy batch runs in
    forward passes of :func:`forward_frames` frames, so that light work can go in between; a ``light`` one (the
    batcher's word: within ``max_batch_cost_ms``, so nothing goes in between anyway) in passes of ``max_frames``,
    as few as possible (a typical batch of 32 QM9 molecules in one). An ensemble evaluated jointly
    (``EnsembleModel.joint``) runs every member in each pass, so its heavy passes hold fewer frames."""
    def predict(numbers: list[np.ndarray], positions: list[np.ndarray], between_chunks: Any = None,
                light: bool = False) -> Any:
        frames = max_frames if light else forward_frames(costs, max((len(z) for z in numbers), default=1),
                                                         max_frames, forward_ms / networks_per_pass(model))
        return model.predictions(numbers, positions, batch_size=frames, between_chunks=between_chunks)

    return predict
