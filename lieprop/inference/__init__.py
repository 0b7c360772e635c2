"""Predictions for users: the library call, the result builder, output columns and the model card.

``lieprop.predict`` (:mod:`~lieprop.inference.library`) is the library face of the REST contract; its results
are built by :mod:`~lieprop.inference.results`, the one builder every face of lieprop uses;
:mod:`~lieprop.inference.columns` chooses the output properties and :mod:`~lieprop.inference.card` describes a
model. Loading models is
:mod:`lieprop.model.loading` and reading inputs :mod:`lieprop.data.items`; both are re-exported here, as is every
name this module had before it became a package. Importing it loads neither RDKit nor ASE.
"""

from __future__ import annotations

from lieprop.data.items import (
    EMBEDDING_KINDS,
    INPUT_KINDS,
    Parsed,
    fallback_id,
    input_kind,
    item_kind,
    parse_item,
    parse_items,
)
from lieprop.inference.card import model_card, model_info
from lieprop.inference.columns import Column, UnknownPropertyError, select_properties
from lieprop.inference.library import predict
from lieprop.inference.results import (
    MIN_BIN_MOLECULES,
    PREDICTION_FAILED,
    UNCERTAIN_FACTOR,
    WEAK_SIZE_FACTOR,
    ResultContext,
    atom_reference,
    build_results,
    error_result,
    failure_result,
    geometry_entry,
    ok_result,
    property_entry,
    size_warnings,
    uncertainty_warning,
)
from lieprop.model.loading import DEFAULT_MODEL, ModelNotFoundError, default_model_path, load_model

__all__ = [
    "DEFAULT_MODEL", "EMBEDDING_KINDS", "INPUT_KINDS", "MIN_BIN_MOLECULES", "PREDICTION_FAILED", "UNCERTAIN_FACTOR",
    "WEAK_SIZE_FACTOR", "ResultContext",
    "Column", "ModelNotFoundError", "Parsed", "UnknownPropertyError", "atom_reference", "build_results",
    "default_model_path", "error_result", "failure_result", "fallback_id", "geometry_entry", "input_kind",
    "item_kind", "load_model", "model_card", "model_info", "ok_result", "parse_item", "parse_items", "predict",
    "property_entry",
    "select_properties", "size_warnings", "uncertainty_warning",
]
