"""The options of a scoring job, declared once.

:class:`JobOptions` is the one place a job option is declared (name, type, default, bounds, description). From it
come the ``lieprop predict`` flags (:func:`lieprop.cli.add_predict`), the parsing of ``POST /v1/jobs`` form fields
and query parameters (:meth:`JobOptions.from_strings`), the OpenAPI schema of the upload's form fields
(:func:`form_fields_schema`, used by :mod:`lieprop.service.routes.jobs`), the options kept in a REST job's record
(:meth:`JobOptions.record`) and the :class:`~lieprop.scoring.pipeline.ScoreOptions` a run scores with
(:meth:`JobOptions.score_options`). Adding an option means adding a field here and using it in
:class:`~lieprop.scoring.pipeline.ScoreOptions`.

Pydantic only (no FastAPI), so the CLI can import it. The two format rules of REST uploads (:func:`canonical_format`,
:func:`input_suffix`) sit at the end and read the format registry.
"""

from __future__ import annotations

import types
import typing
from collections.abc import Iterable, Mapping
from typing import Any, Literal

import annotated_types
from pydantic import BaseModel, ConfigDict, Field, ValidationError
from pydantic.fields import FieldInfo

from lieprop.data import formats
from lieprop.data.records import DEFAULT_CONFORMERS, MAX_CONFORMERS
from lieprop.scoring.pipeline import DEFAULT_CHUNK_SIZE, ScoreOptions

#: The largest ``chunk_size``: a chunk's rows are held in memory until it is committed.
MAX_CHUNK_SIZE = 100_000
#: Options only a REST upload has (``lieprop predict`` reads the file name from its INPUT argument).
REST_ONLY = ("filename", "model")
#: Options kept in a REST job's record under ``options`` (``format`` and ``filename`` have their own columns; the
#: model, by name, is the record's ``model``).
RECORDED = ("smiles_column", "id_column", "properties", "chunk_size", "coverage", "relaxed_with", "conformers")


class JobOptions(BaseModel):
    """What to read from an input file and how to commit its results."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    format: str | None = Field(
        None, description=f"input format: {', '.join(formats.names())} (default: by the file name's extension)")
    smiles_column: str = Field("smiles", description="CSV column with the SMILES (any case)")
    id_column: str | None = Field(
        None, description="CSV column with the row ids (default: the first of id, name, mol_id, molecule_id, "
                          "identifier, title; else the row number)")
    properties: list[str] | None = Field(
        None, description="property names to predict (default: all, with atomization energies)")
    chunk_size: int = Field(DEFAULT_CHUNK_SIZE, ge=1, le=MAX_CHUNK_SIZE,
                            description="rows per committed chunk, the unit of progress and resumption")
    coverage: float | None = Field(
        None, ge=0.5, le=0.99, description="level of the prediction intervals, for models with calibrated uncertainty "
                                           "(default 0.9)")
    relaxed_with: Literal["dft", "forcefield"] = Field(
        "dft", description="how the file's 3D geometries were relaxed: dft (like QM9's) or forcefield (MMFF, UFF, "
                           "RDKit, Open Babel; answered like lieprop's conformers of a SMILES, calibrated as one "
                           "force-field geometry)")
    conformers: int = Field(
        DEFAULT_CONFORMERS, ge=1, le=MAX_CONFORMERS,
        description=f"conformers generated per SMILES or 2D MOL block (default {DEFAULT_CONFORMERS}); the values "
                    "average over them. 1 is several times faster and a few percent less accurate")
    filename: str | None = Field(
        None, description="the upload's file name, when the body does not carry one (its extension tells the format)")
    model: str | None = Field(
        None, max_length=256, description="the served model to score with, by name (GET /v1/models; default: the "
                                          "server's default model)")

    @classmethod
    def parse(cls, values: Mapping[str, Any]) -> JobOptions:
        """Validated options; ``ValueError`` with one readable reason (``chunk_size must be between 1 and ...``)."""
        try:
            return cls.model_validate(dict(values))
        except ValidationError as exc:
            raise ValueError(_reason(cls, exc)) from None

    @classmethod
    def from_strings(cls, values: Mapping[str, list[str]], defaults: Mapping[str, Any] | None = None,
                     ignore: Iterable[str] = ()) -> JobOptions:
        """Options from text values, as form fields and query parameters carry them (``ValueError`` with the reason).

        A name may come several times: the last non-blank value wins; a list option takes every value, each split at
        commas (``properties=homo,gap``). ``defaults`` replace the declared defaults (a server's ``job_chunk_size``);
        names in ``ignore`` (the upload's own field) are skipped; any other unknown name is an error.
        """
        unknown = sorted(set(values) - set(cls.model_fields) - set(ignore))
        if unknown:
            raise ValueError(f"unknown options {unknown}; known: {', '.join(cls.model_fields)}")
        given: dict[str, Any] = dict(defaults or {})
        for name, field in cls.model_fields.items():
            if is_list(field):
                items = [p.strip() for v in values.get(name, []) for p in v.split(",") if p.strip()]
                if items:
                    given[name] = items
            else:
                texts = [v.strip() for v in values.get(name, []) if v.strip()]
                if texts:
                    given[name] = texts[-1]
        if "format" in given:
            given["format"] = canonical_format(given["format"])
        return cls.parse(given)

    def record(self) -> dict[str, Any]:
        """The options a REST job's record keeps (:data:`RECORDED`), as JSON values."""
        return self.model_dump(include=set(RECORDED))

    def score_options(self, **tuning: Any) -> ScoreOptions:
        """The pipeline's options: these, plus ``tuning`` (``model_batch``, ``frame_batch``, ``max_atoms``, ...)."""
        return ScoreOptions(format=self.format, smiles_column=self.smiles_column, id_column=self.id_column,
                            properties=tuple(self.properties) if self.properties is not None else None,
                            chunk_size=self.chunk_size, coverage=self.coverage, relaxed_with=self.relaxed_with,
                            conformers=self.conformers, **tuning)


def scalar_type(field: FieldInfo) -> type:
    """int, float, bool or str: the type of a field's (single) value, ``X | None`` and ``list[X]`` looked through."""
    annotation: Any = field.annotation
    if typing.get_origin(annotation) in (typing.Union, types.UnionType):
        annotation = next(a for a in typing.get_args(annotation) if a is not type(None))
    if typing.get_origin(annotation) is list:
        annotation = typing.get_args(annotation)[0]
    return annotation if annotation in (int, float, bool) else str


def bounds(field: FieldInfo) -> tuple[Any, Any]:
    """A field's declared (minimum, maximum), None where it has none."""
    low = next((m.ge for m in field.metadata if isinstance(m, annotated_types.Ge)), None)
    high = next((m.le for m in field.metadata if isinstance(m, annotated_types.Le)), None)
    return low, high


def is_list(field: FieldInfo) -> bool:
    """Whether a field takes several values (``list[X]`` or ``list[X] | None``)."""
    annotation: Any = field.annotation
    if typing.get_origin(annotation) in (typing.Union, types.UnionType):
        annotation = next(a for a in typing.get_args(annotation) if a is not type(None))
    return typing.get_origin(annotation) is list


def form_fields_schema() -> dict[str, dict[str, Any]]:
    """The OpenAPI schema of every option as a form field (text; a list option is comma-separated)."""
    schemas: dict[str, dict[str, Any]] = {}
    for name, field in JobOptions.model_fields.items():
        kind = scalar_type(field)
        schema: dict[str, Any] = {"type": {int: "integer", float: "number", bool: "boolean"}.get(kind, "string")}
        low, high = bounds(field)
        if low is not None:
            schema["minimum"] = low
        if high is not None:
            schema["maximum"] = high
        if typing.get_origin(field.annotation) is Literal:
            schema["enum"] = list(typing.get_args(field.annotation))
        prefix = "comma-separated " if is_list(field) else ""
        schema["description"] = prefix + (field.description or name)
        schemas[name] = schema
    return schemas


def _reason(model: type[BaseModel], exc: ValidationError) -> str:
    """The first error of ``exc`` in words that name the option (the wording of the REST job API)."""
    error = exc.errors()[0]
    name = ".".join(str(p) for p in error.get("loc", ())) or "options"
    given = error.get("input")
    kind = error.get("type", "")
    if kind == "int_parsing":
        return f"{name} must be an integer, got {given!r}"
    if kind in ("greater_than_equal", "less_than_equal") and name in model.model_fields:
        low, high = bounds(model.model_fields[name])
        return f"{name} must be between {low} and {high}, got {given}"
    if kind == "value_error":
        return str((error.get("ctx") or {}).get("error", error.get("msg", "")))
    return f"{name}: {error.get('msg', 'invalid')}"


# --------------------------------------------------------------------------------------------------
# The format rules of REST uploads: both read the format registry (lieprop.data.formats)


def canonical_format(value: str) -> str:
    """A REST job's ``format`` option as a registered format name (aliases such as ``smiles`` and ``sd`` resolved, a
    leading dot dropped); ``ValueError`` naming the supported formats."""
    fmt = formats.canonical(value)
    if formats.lookup(fmt) is None:
        raise ValueError(f"unknown format {fmt!r}; supported: {', '.join(formats.names())}")
    return fmt


def input_suffix(filename: str | None, fmt: str | None) -> str | None:
    """The stored upload's suffix: the format's first extension, else the uploaded name's (``.csv``, ``.sdf.gz``),
    if its format is known."""
    if fmt:
        return formats.get(fmt).extensions[0]
    return formats.known_suffix(filename) if filename else None


__all__ = ["MAX_CHUNK_SIZE", "RECORDED", "REST_ONLY", "JobOptions", "bounds", "canonical_format",
           "form_fields_schema", "input_suffix", "is_list", "scalar_type"]
