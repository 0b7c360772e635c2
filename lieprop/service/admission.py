"""Cost-based admission: which molecules of a request the model thread takes, decided before any model work.

Every valid molecule gets its estimated model time (:func:`lieprop.model.cost.molecule_cost`, reference
milliseconds: frames x evaluations x the cost of a frame of its size). A molecule over ``max_molecule_cost_ms``
is refused with the item error ``too_expensive``; so are the molecules that would take the request's total past
``max_request_cost_ms`` (counted in request order). The rest of the request is served. The defaults refuse no QM9
molecule and admit a full request of them (docs/API.md, "Limits").
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from lieprop.data.molecule import Molecule
from lieprop.data.validation import MoleculeError
from lieprop.model.cost import molecule_cost


@dataclass(frozen=True)
class CostLimits:
    """The limits of :func:`admit`, in reference milliseconds (None: no limit)."""

    molecule: float | None = None
    request: float | None = None


@dataclass(frozen=True)
class Admitted:
    """Each item's outcome after admission (a :class:`Molecule` or the error it met, ``too_expensive`` included),
    and the estimated cost of each admitted molecule, in the order of the admitted molecules."""

    outcomes: list[Any]
    costs: list[float]


def admit(outcomes: list[Any], model: Any, limits: CostLimits) -> Admitted:
    """Estimate each molecule's cost for ``model`` and refuse those over ``limits`` (see the module doc). Items that
    are not molecules (errors already) pass through. CPU work (the frames of every molecule): call it off the event
    loop."""
    out: list[Any] = []
    costs: list[float] = []
    total = 0.0
    for outcome in outcomes:
        if not isinstance(outcome, Molecule):
            out.append(outcome)
            continue
        estimate = molecule_cost(model, outcome.numbers, outcome.positions)
        cost = estimate.ms
        if limits.molecule is not None and cost > limits.molecule:
            out.append(MoleculeError("too_expensive", f"this molecule would take an estimated {cost:,.0f} ms of "
                                     f"model time ({estimate.frames} frames of {outcome.n_atoms} atoms: a "
                                     f"symmetric molecule is seen in many frames); the limit per molecule is "
                                     f"{limits.molecule:,.0f} ms"))
            continue
        if limits.request is not None and total + cost > limits.request:
            out.append(MoleculeError("too_expensive", f"the request's molecules before this one use its budget of "
                                     f"model time ({total:,.0f} of {limits.request:,.0f} ms; this one needs "
                                     f"{cost:,.0f} ms): send it in another request"))
            continue
        total += cost
        out.append(outcome)
        costs.append(cost)
    return Admitted(out, costs)
