"""The model card: what a bundle is and how good it is (``GET /v1/models``, ``lieprop info``)."""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import TYPE_CHECKING, Any

from lieprop.data.properties import BY_NAME
from lieprop.inference.columns import select_properties
from lieprop.inference.results import size_warnings
from lieprop.model.calibration import FORCEFIELD, LONE_CONFORMER

if TYPE_CHECKING:
    from lieprop.model.bundle import Bundle


def model_info(bundle: Bundle) -> dict[str, str]:
    """``{"name", "version", "sha256"}``: which model made a prediction."""
    return {"name": bundle.name, "version": bundle.version, "sha256": bundle.sha256}


def model_card(bundle: Bundle) -> dict[str, Any]:
    """What a bundle is and how good it is: name, version, sha256, architecture (and ensemble size), targets, every
    output property (unit, description, test MAE when the bundle records one, on DFT geometries and on the SMILES
    path, ``test_mae_forcefield``) and the training facts
    (``GET /v1/models``, ``lieprop info``).
    """
    tables = {key: bundle.meta.get(key) for key in ("test_mae", "test_mae_forcefield")}
    tables = {key: t if isinstance(t, Mapping) else {} for key, t in tables.items()}
    props = []
    for col in select_properties(bundle.model.targets):
        base = col.name.removesuffix("_atomization")  # an atomization energy differs from the total by a constant
        props.append({
            "name": col.name, "unit": col.unit, "atomization": col.atomization,
            "description": BY_NAME[base].description + (" minus the atom references" if col.atomization else ""),
            **{key: _finite(table.get(base)) for key, table in tables.items()},
        })
    small = bundle.meta.get("small_evaluation")
    return {**model_info(bundle), "architecture": bundle.architecture,
            "network": bundle.model.arch.summary(bundle.model.cfg), "members": bundle.n_members,
            "uncertainty": uncertainty_description(bundle),
            "targets": list(bundle.model.targets), "properties": props,
            "training": _json_safe(bundle.meta.get("training")),
            "test_mae_by_size": _json_safe(bundle.meta.get("test_mae_by_size")),
            "small_mae_by_size": _json_safe(small.get("by_size")) if isinstance(small, Mapping) else None,
            "size_warnings": size_warnings(bundle.meta)}


def _finite(value: Any) -> float | None:
    return float(value) if isinstance(value, int | float) and math.isfinite(value) else None


def _json_safe(value: Any) -> Any:
    """A copy that strict JSON can carry: non-finite floats become None, tuples lists, keys strings."""
    if isinstance(value, float):
        return value if math.isfinite(value) else None
    if isinstance(value, Mapping):
        return {str(k): _json_safe(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_json_safe(v) for v in value]
    return value


def uncertainty_description(bundle: Bundle) -> str | None:
    """What the ``std`` (and ``interval``) of a bundle's results are, in words; None without a spread."""
    if not bundle.has_spread:
        return None
    poses = bundle.model.spread_poses
    who = f"{bundle.n_members} ensemble members" if bundle.n_members > 1 else "the model"
    spread = f"the spread of {who}" + (f" in {poses} fixed poses" if poses > 1 else "")
    conformers = "; for a SMILES or 2D MOL block, averaged over its conformers, whose disagreement adds to it"
    if bundle.calibration is None:
        return f"{spread}, uncalibrated (no interval){conformers}"
    paths = {"given": "given 3D geometries", "generated": "conformers lieprop generates, averaged",
             FORCEFIELD: "one force-field geometry (relaxed_with=forcefield, or conformers: 1)",
             LONE_CONFORMER: "a SMILES left with one conformer of several"}
    calibrated = "; ".join(paths.get(path, path) for path in bundle.calibration)
    text = (f"{spread}, calibrated on the validation split per geometry path ({calibrated}), with split-conformal "
            "intervals (90% unless coverage says otherwise)")
    if any(cal.grouped for cal in bundle.calibration.values()):
        text += (", within each path by the molecule's ring count (0, 1, 2, 3, 4+), so that each ring group's "
                 "intervals hold")
    weighted = [path for path, cal in bundle.calibration.items() if cal.weights is not None]
    if weighted:
        text += (f"; the value is the members' mean weighted per target for each path ({', '.join(weighted)}), "
                 "fitted on the validation split")
    return text + conformers
