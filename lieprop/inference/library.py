"""Predict properties from Python: ``lieprop.predict(molecules, properties=None, model=None)``.

This is the library face of the REST contract (docs/DESIGN.md): the same inputs (SMILES strings, :class:`Molecule`
records, ASE ``Atoms``, or dicts shaped like the REST items ``{"id", "smiles" | "xyz" | "sdf" | "numbers" +
"positions"}``) and the same result structure, built by the same functions, so the library and ``POST
/v1/predict`` give identical values for the same input.
"""

from __future__ import annotations

import os
from collections.abc import Iterable, Mapping, Sequence
from concurrent.futures import Executor
from typing import TYPE_CHECKING, Any

from lieprop.data.items import Parsed, fallback_id, item_kind, parse_items
from lieprop.data.molecule import Molecule
from lieprop.data.pool import embedding_pool
from lieprop.data.records import DEFAULT_CONFORMERS, MAX_CONFORMERS
from lieprop.data.validation import DEFAULT_LIMITS, ValidationLimits
from lieprop.inference.card import model_info
from lieprop.inference.columns import select_properties
from lieprop.inference.results import ResultContext, build_results
from lieprop.model.loading import as_bundle
from lieprop.model.prediction import predict_molecules

if TYPE_CHECKING:
    from lieprop.model.bundle import Bundle


def predict(
    molecules: Any,
    properties: Sequence[str] | None = None,
    model: Bundle | str | os.PathLike | None = None,
    *,
    limits: ValidationLimits | None = None,
    workers: int = 1,
    executor: Executor | None = None,
    coverage: float | None = None,
    relaxed_with: str = "dft",
    return_geometry: bool = False,
    conformers: int = DEFAULT_CONFORMERS,
) -> dict[str, Any]:
    """Predict ``properties`` (default: all the model has, plus atomization energies) for ``molecules``.

    ``molecules``: one input or an iterable of inputs, each a SMILES string, a :class:`Molecule`, ASE ``Atoms`` or
    a REST item dict. ``model``: a loaded bundle, a bundle path, or None for the bundled model. ``limits``: the
    validation limits (default: QM9's domain, as the service). ``workers`` > 1 embeds SMILES in that many processes
    (or pass a long-lived ``executor``, e.g. :func:`lieprop.data.readers.embedding_pool`). ``coverage``: the level
    of the prediction intervals (default 0.9; a model with calibrated uncertainty only). ``relaxed_with``: how the 3D
    geometries you give were relaxed, ``"dft"`` (default) or ``"forcefield"`` (MMFF, UFF, RDKit or Open Babel: they
    are then answered like lieprop's own conformers of a SMILES and calibrated as one force-field geometry).
    ``return_geometry``: each ok result also carries ``"geometry": {"numbers", "positions"}``, the geometry the
    model saw (as the REST field).
    ``conformers``: how many conformers a SMILES or 2D MOL block gets; the values average over them (as the REST
    option).

    Returns the REST response: ``{"model": {"name", "version", "sha256"}, "results": [...]}``, one result per
    input in order. Raises :class:`UnknownPropertyError` for unknown properties, ``TypeError`` / ``ValueError`` for
    inputs that describe no molecule at all, :class:`ModelNotFoundError` / ``BundleError`` for an unusable model.
    """
    if not 1 <= conformers <= MAX_CONFORMERS:
        raise ValueError(f"conformers must be between 1 and {MAX_CONFORMERS}, got {conformers}")
    bundle = as_bundle(model)
    targets = bundle.model.targets
    columns = select_properties(targets, properties)
    context = ResultContext.of(bundle, coverage, relaxed_with)
    items = _as_items(molecules)
    for i, item in enumerate(items):  # malformed inputs fail the call, as a 422 fails the REST request
        try:
            item_kind(item)
        except ValueError as exc:
            raise ValueError(f"molecule {i}: {exc}") from None
    limits = limits or DEFAULT_LIMITS
    indexed = list(enumerate(items))
    if (workers > 1 or executor is not None) and len(indexed) > 1:
        parsed = _parse_in_pool(indexed, limits, workers, executor, conformers)
    else:
        parsed = parse_items(indexed, limits, conformers)
    outcomes = [p.outcome for p in parsed]
    valid = [m for m in outcomes if isinstance(m, Molecule)]
    predictions = predict_molecules(bundle.model, valid)  # each averaged over its conformers
    ids = [fallback_id(item, i) for i, item in indexed]
    return {"model": model_info(bundle), "results": build_results(outcomes, ids, list(predictions), columns,
                                                                  targets, context, geometry=return_geometry)}


def _as_items(molecules: Any) -> list[Any]:
    if isinstance(molecules, str | Mapping | Molecule) or hasattr(molecules, "get_positions"):
        return [molecules]
    if isinstance(molecules, Iterable):
        return list(molecules)
    raise TypeError(f"cannot predict a {type(molecules).__name__}; give a SMILES string, a Molecule, ASE Atoms, a "
                    "dict like the REST items, or a list of them")


def _parse_in_pool(indexed: list[tuple[int, Any]], limits: ValidationLimits, workers: int,
                   executor: Executor | None, conformers: int) -> list[Parsed]:
    pool = executor or embedding_pool(workers)
    try:
        n = max(1, workers)
        chunks = [indexed[k::n] for k in range(n) if indexed[k::n]]
        futures = [pool.submit(parse_items, chunk, limits, conformers) for chunk in chunks]
        parsed = [p for f in futures for p in f.result()]
    finally:
        if executor is None:
            pool.shutdown(wait=True)
    return sorted(parsed, key=lambda p: p.index)
