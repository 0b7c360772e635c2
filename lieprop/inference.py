"""Predict properties from Python: ``lieprop.predict(molecules, properties=None, model=None)``.

This is the library face of the REST contract (docs/DESIGN.md): the same inputs (SMILES strings, :class:`Molecule`
records, ASE ``Atoms``, or dicts shaped like the REST items ``{"id", "smiles" | "xyz" | "sdf" | "numbers" +
"positions"}``) and the same result structure, built by the same functions, so the library and ``POST
/v1/predict`` give identical values for the same input::

    >>> import lieprop
    >>> out = lieprop.predict(["CCO", {"id": "w", "numbers": [8, 1, 1], "positions": [[0, 0, 0.12], ...]}],
    ...                       properties=["homo", "u0_atomization"])
    >>> out["results"][0]["properties"]["homo"]
    {'value': -7.1..., 'unit': 'eV'}

Every result carries ``ok``; a molecule that cannot be predicted gets ``{"ok": false, "error": {"code", "message"}}``
and never stops the others. The service imports the parsing and formatting helpers from here; reading the inputs
(:func:`parse_items`, :func:`input_kind`, ...) lives in :mod:`lieprop.data.items` and is re-exported. This module
imports neither torch nor RDKit at import time, so embedding worker processes that unpickle :func:`parse_items` stay
small.
"""

from __future__ import annotations

import functools
import importlib.resources
import math
import os
from collections.abc import Iterable, Mapping, Sequence
from concurrent.futures import Executor
from pathlib import Path
from typing import TYPE_CHECKING, Any, NamedTuple

import numpy as np

from lieprop.data.elements import ELEMENT_INDEX
from lieprop.data.items import (  # noqa: F401 - REST item parsing lives in the data layer; re-exported here
    EMBEDDING_KINDS,
    INPUT_KINDS,
    Parsed,
    fallback_id,
    input_kind,
    item_kind,
    parse_item,
    parse_items,
)
from lieprop.data.molecule import Molecule
from lieprop.data.properties import BY_NAME, ENERGY_NAMES, PROPERTIES, atomref_matrix, resolve
from lieprop.data.qm9 import size_bin
from lieprop.data.validation import DEFAULT_LIMITS, MoleculeError, ValidationLimits
from lieprop.model.prediction import Prediction, as_prediction

if TYPE_CHECKING:
    from lieprop.model.bundle import Bundle

#: File name of the bundled model inside ``lieprop/models``.
DEFAULT_MODEL = "lieprop-qm9.pt"
#: Item error code of a molecule that was read but the model could not predict (not a docs/DESIGN.md input code).
PREDICTION_FAILED = "prediction_failed"


class ModelNotFoundError(FileNotFoundError):
    """The model bundle to serve or to predict with does not exist."""


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


# --------------------------------------------------------------------------------------------------
# Models


def default_model_path() -> Path:
    """Where the bundled model lives: ``lieprop/models/lieprop-qm9.pt`` inside the installed package."""
    return Path(str(importlib.resources.files("lieprop").joinpath("models", DEFAULT_MODEL)))


def load_model(path: str | os.PathLike | None = None) -> Bundle:
    """Load and verify a bundle (default: the bundled model), cached until the file changes.

    Raises :class:`ModelNotFoundError` when the file is missing and :class:`~lieprop.model.bundle.BundleError`
    when it is not a usable bundle.
    """
    resolved = Path(path) if path is not None else default_model_path()
    try:
        stat = resolved.resolve().stat()
    except OSError:
        hint = ("the bundled model is not installed yet: train one (lieprop train) or point at a bundle with "
                "--model PATH / LIEPROP_MODEL" if path is None or resolved == default_model_path()
                else "check the path given with --model / LIEPROP_MODEL")
        raise ModelNotFoundError(f"model bundle {resolved} does not exist; {hint}") from None
    return _load_cached(str(resolved.resolve()), stat.st_mtime_ns, stat.st_size)


@functools.lru_cache(maxsize=4)
def _load_cached(path: str, mtime_ns: int, size: int) -> Bundle:
    from lieprop.model.bundle import load_bundle

    return load_bundle(path)


def model_info(bundle: Bundle) -> dict[str, str]:
    """``{"name", "version", "sha256"}``: which model made a prediction."""
    return {"name": bundle.name, "version": bundle.version, "sha256": bundle.sha256}


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


def model_card(bundle: Bundle) -> dict[str, Any]:
    """What a bundle is and how good it is: name, version, sha256, architecture (and ensemble size), targets, every
    output property (unit, description, test MAE when the bundle records one) and the training facts
    (``GET /v1/models``, ``lieprop info``).
    """
    test_mae = bundle.meta.get("test_mae")
    test_mae = test_mae if isinstance(test_mae, Mapping) else {}
    props = []
    for col in select_properties(bundle.model.targets):
        base = col.name.removesuffix("_atomization")
        mae = test_mae.get(base)  # an atomization energy differs from the total by a constant per formula
        props.append({
            "name": col.name, "unit": col.unit, "atomization": col.atomization,
            "description": BY_NAME[base].description + (" minus the atom references" if col.atomization else ""),
            "test_mae": float(mae) if isinstance(mae, int | float) and math.isfinite(mae) else None,
        })
    small = bundle.meta.get("small_evaluation")
    return {**model_info(bundle), "architecture": bundle.architecture,
            "network": bundle.model.arch.summary(bundle.model.cfg), "members": bundle.n_members,
            "uncertainty": "std of the ensemble members" if bundle.n_members > 1 else None,
            "targets": list(bundle.model.targets), "properties": props,
            "training": _json_safe(bundle.meta.get("training")),
            "test_mae_by_size": _json_safe(bundle.meta.get("test_mae_by_size")),
            "small_mae_by_size": _json_safe(small.get("by_size")) if isinstance(small, Mapping) else None,
            "size_warnings": size_warnings(bundle.meta)}


def _json_safe(value: Any) -> Any:
    """A copy that strict JSON can carry: non-finite floats become None, tuples lists, keys strings."""
    if isinstance(value, float):
        return value if math.isfinite(value) else None
    if isinstance(value, Mapping):
        return {str(k): _json_safe(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_json_safe(v) for v in value]
    return value


def _known_property(name: str) -> bool:
    try:
        resolve([name])
        return True
    except ValueError:
        return False


# --------------------------------------------------------------------------------------------------
# Results


@functools.lru_cache(maxsize=1)
def _atomref_by_z() -> np.ndarray:
    """(n_Z, 12): per-atom reference of every property (zeros outside H, C, N, O, F)."""
    table = np.zeros((ELEMENT_INDEX.shape[0], len(PROPERTIES)))
    rows = ELEMENT_INDEX >= 0
    table[rows] = atomref_matrix()[ELEMENT_INDEX[rows]]
    return table


def atom_reference(numbers: np.ndarray, target: str) -> float:
    """Sum over the atoms of ``target``'s atom reference (eV for energies): total - this = atomization."""
    j = next(k for k, p in enumerate(PROPERTIES) if p.name == target)
    return float(_atomref_by_z()[np.asarray(numbers, dtype=np.int64), j].sum())


#: A size bin whose recorded MAE on some target exceeds this many times the target's overall test MAE is one the model
#: is known to fail on: its molecules' results carry a warning.
WEAK_SIZE_FACTOR = 3.0
#: Bins with fewer test molecules than this take their MAE from the small-molecule sanity set instead, when recorded.
MIN_BIN_MOLECULES = 20


def _number(v: float) -> str:
    return f"{v:.0f}" if abs(v) >= 100 else f"{v:.3g}"


def size_warnings(meta: Mapping[str, Any]) -> dict[str, str]:
    """{size bin label: warning} for the atom-count bins on which a bundle is known to do much worse than its
    model card says (from ``lieprop evaluate --record`` on the test split and the ``small`` set)."""
    overall = meta.get("test_mae")
    if not isinstance(overall, Mapping):
        return {}
    small = meta.get("small_evaluation")
    bins: dict[str, Mapping[str, Any]] = dict((small.get("by_size") if isinstance(small, Mapping) else None) or {})
    for label, row in (meta.get("test_mae_by_size") or {}).items():
        if label not in bins or row.get("n", 0) >= MIN_BIN_MOLECULES:  # the test split's bin, unless it is too thin
            bins[label] = row
    out = {}
    for label, row in bins.items():
        worst = None
        for target, mae in (row.get("mae") or {}).items():
            prop = BY_NAME.get(target)
            ref = overall.get(target)
            if prop is None or not isinstance(ref, int | float) or ref <= 0:
                continue
            ratio = mae / (ref * prop.to_paper)
            if ratio > WEAK_SIZE_FACTOR and (worst is None or ratio > worst[0]):
                worst = (ratio, target, mae, ref * prop.to_paper, prop.paper_unit or prop.unit)
        if worst:
            ratio, target, mae, ref, unit = worst
            out[label] = (f"the model is unreliable for molecules of {label} atoms: its {target} error there is "
                          f"{_number(mae)} {unit}, {ratio:.0f}x its {_number(ref)} {unit} average (see lieprop info)")
    return out


def property_entry(prediction: Prediction, col: Column, shift: float) -> dict[str, Any] | None:
    """One property of a result: ``{"value", "unit"}``, with ``"std"`` and ``"interval"`` (``[lower, upper]``) when
    the model gives them; ``shift`` (the atom references of an ``*_atomization`` column) moves the
    value and the interval, not the spread. None when a number is not finite."""
    j = col.target
    entry: dict[str, Any] = {"value": float(prediction.value[j]) - shift, "unit": col.unit}
    if prediction.std is not None:
        entry["std"] = float(prediction.std[j])
    if prediction.lower is not None and prediction.upper is not None:
        entry["interval"] = [float(prediction.lower[j]) - shift, float(prediction.upper[j]) - shift]
    numbers = [entry["value"], entry.get("std", 0.0), *entry.get("interval", ())]
    return entry if all(math.isfinite(v) for v in numbers) else None


def ok_result(molecule: Molecule, row: Prediction | np.ndarray, columns: Sequence[Column], targets: Sequence[str],
              warnings_by_size: Mapping[str, str] | None = None) -> dict:
    """The REST result of a predicted molecule (or a ``prediction_failed`` error when a number is not finite).
    ``row`` is the molecule's :class:`~lieprop.model.prediction.Prediction` (a bare row of values is accepted);
    ``warnings_by_size`` (from :func:`size_warnings`) adds a warning to molecules of a size the model fails on."""
    prediction = as_prediction(row)
    props: dict[str, dict[str, Any]] = {}
    for col in columns:
        shift = atom_reference(molecule.numbers, targets[col.target]) if col.atomization else 0.0
        entry = property_entry(prediction, col, shift)
        if entry is None:
            return error_result(molecule.id, {"code": PREDICTION_FAILED,
                                              "message": f"the model produced a non-finite {col.name}"})
        props[col.name] = entry
    provenance = dict(molecule.provenance)
    provenance.setdefault("source", "atoms")
    provenance.setdefault("conformer", None)
    warnings = list(molecule.warnings)
    if warnings_by_size:
        extra = warnings_by_size.get(size_bin(len(molecule.numbers)))
        warnings += [extra] if extra else []
    return {"id": molecule.id, "ok": True, "properties": props, "provenance": provenance, "warnings": warnings}


def error_result(ident: str | None, error: MoleculeError | Mapping[str, str]) -> dict:
    """The REST result of a molecule that could not be predicted."""
    body = error.to_dict() if isinstance(error, MoleculeError) else dict(error)
    return {"id": ident, "ok": False, "error": body}


def failure_result(ident: str | None, exc: BaseException) -> dict:
    """The result of a molecule whose model batch failed (see :class:`~lieprop.service.batcher.DynamicBatcher`)."""
    return error_result(ident, {"code": PREDICTION_FAILED, "message": f"the model failed on this molecule: "
                                f"{type(exc).__name__}: {exc}"})


def build_results(outcomes: Sequence[Molecule | MoleculeError], ids: Sequence[str],
                  predictions: Sequence[Prediction | np.ndarray | BaseException], columns: Sequence[Column],
                  targets: Sequence[str], warnings_by_size: Mapping[str, str] | None = None) -> list[dict]:
    """One result per input, in order: ``predictions`` holds one :class:`~lieprop.model.prediction.Prediction` (or
    the exception the model met) per molecule in ``outcomes``. The one builder of results: the library, REST, file
    scoring and REST jobs all call it."""
    rows = iter(predictions)
    results = []
    for outcome, ident in zip(outcomes, ids, strict=True):
        if isinstance(outcome, MoleculeError):
            results.append(error_result(ident, outcome))
            continue
        row = next(rows)
        results.append(failure_result(outcome.id, row) if isinstance(row, BaseException)
                       else ok_result(outcome, row, columns, targets, warnings_by_size))
    return results


# --------------------------------------------------------------------------------------------------
# The library call


def predict(
    molecules: Any,
    properties: Sequence[str] | None = None,
    model: Bundle | str | os.PathLike | None = None,
    *,
    limits: ValidationLimits | None = None,
    workers: int = 1,
    executor: Executor | None = None,
) -> dict[str, Any]:
    """Predict ``properties`` (default: all the model has, plus atomization energies) for ``molecules``.

    ``molecules``: one input or an iterable of inputs, each a SMILES string, a :class:`Molecule`, ASE ``Atoms`` or
    a REST item dict. ``model``: a loaded bundle, a bundle path, or None for the bundled model. ``limits``: the
    validation limits (default: QM9's domain, as the service). ``workers`` > 1 embeds SMILES in that many processes
    (or pass a long-lived ``executor``, e.g. :func:`lieprop.data.readers.embedding_pool`).

    Returns the REST response: ``{"model": {"name", "version", "sha256"}, "results": [...]}``, one result per
    input in order. Raises :class:`UnknownPropertyError` for unknown properties, ``TypeError`` / ``ValueError`` for
    inputs that describe no molecule at all, :class:`ModelNotFoundError` / ``BundleError`` for an unusable model.
    """
    from lieprop.model.bundle import Bundle

    bundle = model if isinstance(model, Bundle) else load_model(model)
    targets = bundle.model.targets
    columns = select_properties(targets, properties)
    items = _as_items(molecules)
    for i, item in enumerate(items):  # malformed inputs fail the call, as a 422 fails the REST request
        try:
            item_kind(item)
        except ValueError as exc:
            raise ValueError(f"molecule {i}: {exc}") from None
    limits = limits or DEFAULT_LIMITS
    indexed = list(enumerate(items))
    if (workers > 1 or executor is not None) and len(indexed) > 1:
        parsed = _parse_in_pool(indexed, limits, workers, executor)
    else:
        parsed = parse_items(indexed, limits)
    outcomes = [p.outcome for p in parsed]
    valid = [m for m in outcomes if isinstance(m, Molecule)]
    predictions = bundle.model.predictions([m.numbers for m in valid], [m.positions for m in valid])
    ids = [fallback_id(item, i) for i, item in indexed]
    return {"model": model_info(bundle), "results": build_results(outcomes, ids, list(predictions), columns,
                                                                  targets, size_warnings(bundle.meta))}


def _as_items(molecules: Any) -> list[Any]:
    if isinstance(molecules, str | Mapping | Molecule) or hasattr(molecules, "get_positions"):
        return [molecules]
    if isinstance(molecules, Iterable):
        return list(molecules)
    raise TypeError(f"cannot predict a {type(molecules).__name__}; give a SMILES string, a Molecule, ASE Atoms, a "
                    "dict like the REST items, or a list of them")


def _parse_in_pool(indexed: list[tuple[int, Any]], limits: ValidationLimits, workers: int,
                   executor: Executor | None) -> list[Parsed]:
    from lieprop.data.readers import embedding_pool

    pool = executor or embedding_pool(workers)
    try:
        n = max(1, workers)
        chunks = [indexed[k::n] for k in range(n) if indexed[k::n]]
        futures = [pool.submit(parse_items, chunk, limits) for chunk in chunks]
        parsed = [p for f in futures for p in f.result()]
    finally:
        if executor is None:
            pool.shutdown(wait=True)
    return sorted(parsed, key=lambda p: p.index)
