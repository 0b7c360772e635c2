"""The one result builder: a molecule (or its error) and its :class:`~lieprop.model.prediction.Prediction` ->
the REST result ``{"id", "ok", "properties": {name: {"value", "unit"[, "std", "interval"]}}, "provenance",
"warnings"[, "geometry"]}`` or ``{"id", "ok": false, "error": {"code", "message"}}``. The library, REST, file scoring
and REST jobs all build their results here."""

from __future__ import annotations

import functools
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from lieprop.data.elements import ELEMENT_INDEX
from lieprop.data.molecule import Molecule
from lieprop.data.properties import BY_NAME, PROPERTIES, atomref_matrix
from lieprop.data.qm9 import size_bin
from lieprop.data.validation import MoleculeError
from lieprop.inference.columns import Column
from lieprop.model.calibration import DEFAULT_LEVEL, Calibration, geometry_path, path_calibration, ring_group
from lieprop.model.prediction import Prediction, as_prediction

#: Item error code of a molecule that was read but the model could not predict (not a docs/DESIGN.md input code).
PREDICTION_FAILED = "prediction_failed"


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


#: A molecule whose std on some property exceeds this many times that property's typical std (the median over the
#: calibration set) gets a warning: the model knows it much less well than the molecules its card describes.
UNCERTAIN_FACTOR = 4.0


@dataclass(frozen=True)
class ResultContext:
    """What a result needs from its model besides the prediction (picklable, so file-scoring workers carry it):

    * ``warnings_by_size``: (size bin, warning) for the atom-count bins the model is known to fail on
      (:func:`size_warnings`);
    * ``calibrations``: (geometry path, calibration) of an ensemble's spread (:mod:`lieprop.model.calibration`):
      results then carry the calibrated value, std and an interval at ``level``, and a molecule whose std is more
      than :data:`UNCERTAIN_FACTOR` times its path's typical std gets a warning;
    * ``relaxed_with``: how the 3D geometries the user gave were relaxed (``dft`` or ``forcefield``,
      :data:`lieprop.model.calibration.RELAXED_WITH`), which picks their calibration; lieprop's own conformers are
      force-field geometries whatever it says.
    """

    warnings_by_size: tuple[tuple[str, str], ...] = ()
    calibrations: tuple[tuple[str, Calibration], ...] = ()
    level: float = DEFAULT_LEVEL
    relaxed_with: str = "dft"

    @classmethod
    def of(cls, bundle: Any, coverage: float | None = None, relaxed_with: str = "dft") -> ResultContext:
        """The context of a bundle's results; ``coverage`` (e.g. 0.95) asks for intervals at that level, which
        needs a calibrated model (``ValueError`` otherwise, or for a level outside the calibrated range);
        ``relaxed_with``: see the class doc (``ValueError`` for other words)."""
        calibrations = getattr(bundle, "calibration", None) or {}
        if coverage is not None:
            if not calibrations:
                raise ValueError(f"coverage needs a model with calibrated intervals; {bundle.name} has none (see "
                                 "lieprop calibrate)")
            next(iter(calibrations.values())).quantile(coverage)  # ValueError outside the calibrated levels
        geometry_path({}, relaxed_with)  # ValueError for an unknown word
        return cls(tuple(sorted(size_warnings(bundle.meta).items())), tuple(calibrations.items()),
                   DEFAULT_LEVEL if coverage is None else coverage, relaxed_with)

    @functools.cached_property
    def _by_path(self) -> dict[str, tuple[Calibration, np.ndarray]]:
        return {path: (cal, cal.quantile_table(self.level)) for path, cal in self.calibrations}

    def calibrate(self, prediction: Prediction, molecule: Molecule) -> tuple[Prediction, Calibration | None]:
        """The prediction with its spread calibrated for the molecule's geometry path and, when that path's
        calibration is grouped by rings, for the ring group of the geometry the model saw (as it is without a
        calibration or a spread), and the calibration used."""
        if not self.calibrations or prediction.std is None:
            return prediction, None
        cal, table = path_calibration(self._by_path, geometry_path(molecule.provenance, self.relaxed_with))
        if not cal.grouped:
            return cal.apply(prediction, self.level, table[0]), cal
        group = ring_group(molecule.numbers, molecule.positions)
        return cal.apply(prediction, self.level, table[group], groups=group), cal


def property_entry(prediction: Prediction, col: Column, shift: float) -> dict[str, Any] | None:
    """One property of a result: ``{"value", "unit"}``, with ``"std"`` and ``"interval"`` (``[lower, upper]``) when
    the prediction has them; ``shift`` (the atom references of an ``*_atomization`` column) moves the value and the
    interval, not the spread. None when a number is not finite."""
    j = col.target
    entry: dict[str, Any] = {"value": float(prediction.value[j]) - shift, "unit": col.unit}
    if prediction.std is not None:
        entry["std"] = float(prediction.std[j])
    if prediction.lower is not None and prediction.upper is not None:
        entry["interval"] = [float(prediction.lower[j]) - shift, float(prediction.upper[j]) - shift]
    numbers = [entry["value"], entry.get("std", 0.0), *entry.get("interval", ())]
    return entry if all(math.isfinite(v) for v in numbers) else None


def uncertainty_warning(prediction: Prediction, targets: Sequence[str], typical: Sequence[float],
                        conformers: int = 1) -> str | None:
    """A warning when the molecule's std on some target is more than :data:`UNCERTAIN_FACTOR` times the typical
    one (the worst such target is named), else None. With ``conformers`` > 1 (a SMILES's prediction averaged over
    them) it says that their disagreement counts too: a flexible QM9-like molecule gets such a std on r2 or mu."""
    if prediction.std is None:
        return None
    ratios = np.asarray(prediction.std, dtype=float) / np.maximum(np.asarray(typical, dtype=float), 1e-300)
    j = int(np.argmax(ratios))
    if not ratios[j] > UNCERTAIN_FACTOR:
        return None
    prop = BY_NAME[targets[j]]
    unit = prop.paper_unit or prop.unit
    std, usual = _number(prediction.std[j] * prop.to_paper), _number(typical[j] * prop.to_paper)
    why = "molecules unlike QM9's (size, elements, bonding, geometry) get such spreads"
    if conformers > 1:
        why += f", and so do flexible ones whose {conformers} conformers disagree (r2 and mu depend on the conformer)"
    return (f"the model is unsure about this molecule: its {targets[j]} std, {std} {unit}, is {ratios[j]:.0f}x the "
            f"typical {usual} {unit}; {why}")


def geometry_entry(molecule: Molecule) -> dict[str, list]:
    """The geometry the model saw: ``{"numbers": [Z, ...], "positions": [[x, y, z], ...]}`` (Å), the given one or
    lieprop's conformer (``provenance.conformer`` says how it was made)."""
    return {"numbers": [int(z) for z in molecule.numbers],
            "positions": [[float(c) for c in row] for row in np.asarray(molecule.positions, dtype=float)]}


def ok_result(molecule: Molecule, row: Prediction | np.ndarray, columns: Sequence[Column], targets: Sequence[str],
              context: ResultContext | Mapping[str, str] | None = None, *, geometry: bool = False) -> dict:
    """The REST result of a predicted molecule (or a ``prediction_failed`` error when a number is not finite).
    ``row`` is the molecule's :class:`~lieprop.model.prediction.Prediction` (a bare row of values is accepted);
    ``context`` (:class:`ResultContext`; a mapping is taken as its ``warnings_by_size``) calibrates its spread,
    sets the interval's coverage and adds warnings; ``geometry`` adds the molecule's ``"geometry"``
    (:func:`geometry_entry`), off by default."""
    context = _as_context(context)
    prediction, calibration = context.calibrate(as_prediction(row), molecule)
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
    if context.relaxed_with != "dft" and not provenance["conformer"]:
        provenance["relaxed_with"] = context.relaxed_with  # what the user said about their geometry
    warnings = list(molecule.warnings)
    if context.warnings_by_size:
        extra = dict(context.warnings_by_size).get(size_bin(len(molecule.numbers)))
        warnings += [extra] if extra else []
    if calibration is not None:
        unsure = uncertainty_warning(prediction, targets, calibration.typical, len(molecule.geometries))
        warnings += [unsure] if unsure else []
    result = {"id": molecule.id, "ok": True, "properties": props, "provenance": provenance, "warnings": warnings}
    if geometry:
        result["geometry"] = geometry_entry(molecule)
    return result


def _as_context(context: ResultContext | Mapping[str, str] | None) -> ResultContext:
    if context is None:
        return ResultContext()
    if isinstance(context, ResultContext):
        return context
    return ResultContext(warnings_by_size=tuple(sorted(context.items())))


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
                  targets: Sequence[str], context: ResultContext | Mapping[str, str] | None = None, *,
                  geometry: bool = False) -> list[dict]:
    """One result per input, in order: ``predictions`` holds one :class:`~lieprop.model.prediction.Prediction` (or
    the exception the model met) per molecule in ``outcomes``; ``context`` and ``geometry`` as in :func:`ok_result`.
    The one builder of results: the library, REST, file scoring and REST jobs all call it."""
    context = _as_context(context)
    rows = iter(predictions)
    results = []
    for outcome, ident in zip(outcomes, ids, strict=True):
        if isinstance(outcome, MoleculeError):
            results.append(error_result(ident, outcome))
            continue
        row = next(rows)
        results.append(failure_result(outcome.id, row) if isinstance(row, BaseException)
                       else ok_result(outcome, row, columns, targets, context, geometry=geometry))
    return results
