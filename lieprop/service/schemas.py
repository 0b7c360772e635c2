"""Request and response bodies of REST contract v1 (docs/DESIGN.md), as pydantic models for validation and OpenAPI."""

from __future__ import annotations

from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, StrictInt, model_validator

from lieprop.data.records import DEFAULT_CONFORMERS, MAX_CONFORMERS
from lieprop.data.validation import ErrorCode
from lieprop.inference import PREDICTION_FAILED, input_kind

#: Longest ``numbers`` / ``positions`` array a request may carry (molecules above ``max_atoms`` are refused per
#: item anyway; this only bounds the work of reading the request).
MAX_ARRAY_ATOMS = 10_000

AtomicNumber = Annotated[StrictInt, Field(ge=0, le=255)]  # strict: ``true`` is no atomic number
Position = Annotated[list[float], Field(min_length=3, max_length=3, description="x, y, z in Å")]


class MoleculeInput(BaseModel):
    """One molecule: exactly one of ``smiles``, ``xyz``, ``sdf``, or ``numbers`` + ``positions``."""

    model_config = ConfigDict(extra="forbid", json_schema_extra={"oneOf": [
        {"required": ["smiles"]}, {"required": ["xyz"]}, {"required": ["sdf"]}, {"required": ["numbers", "positions"]},
    ]})

    id: str | None = Field(None, max_length=256, description="echoed in the result; default: the item's position")
    smiles: str | None = Field(None, description="SMILES; a 3D conformer is generated (ETKDGv3 + MMFF94, seeded)")
    xyz: str | None = Field(None, description="XYZ / extended-XYZ text of one molecule (Å)")
    sdf: str | None = Field(None, description="MOL block / one SDF record; 2D blocks are embedded in 3D")
    numbers: list[AtomicNumber] | None = Field(None, max_length=MAX_ARRAY_ATOMS, description="atomic numbers")
    positions: list[Position] | None = Field(None, max_length=MAX_ARRAY_ATOMS, description="positions in Å")
    charge: int | None = Field(None, ge=-100, le=100, description="total charge, with numbers + positions only")

    @model_validator(mode="after")
    def _one_kind(self) -> MoleculeInput:
        input_kind(self.model_dump(exclude_none=True))  # ValueError -> 422 naming the problem
        return self


class PredictRequest(BaseModel):
    model_config = ConfigDict(extra="forbid")

    molecules: list[MoleculeInput] = Field(min_length=1, description="molecules to predict, answered in order")
    properties: list[Annotated[str, Field(max_length=64)]] | None = Field(
        None, max_length=64,
        description="property names (e.g. homo, u0, u0_atomization); default: all, with atomization energies")
    model: str | None = Field(None, max_length=256,
                              description="the name of a served model (GET /v1/models); default: the default model")
    coverage: float | None = Field(
        None, ge=0.5, le=0.99, description="level of each property's prediction `interval` (default 0.9); only for "
                                           "a model with calibrated uncertainty (see GET /v1/models)")
    relaxed_with: Literal["dft", "forcefield"] = Field(
        "dft", description="how the 3D geometries you send (numbers + positions, XYZ, 3D SDF) were relaxed: `dft` "
                           "(default; like QM9's own) or `forcefield` (MMFF, UFF, RDKit, Open Babel): then answered "
                           "and calibrated as one force-field geometry (wider intervals on average). "
                           "Geometries lieprop makes are force-field ones whatever this says; a model without "
                           "calibrated uncertainty answers both alike")
    return_geometry: bool = Field(
        False, description="add each ok result's `geometry` (the atoms and positions the model saw: the given "
                           "geometry or lieprop's conformer); off by default")
    conformers: int = Field(
        DEFAULT_CONFORMERS, ge=1, le=MAX_CONFORMERS,
        description=f"conformers generated for each SMILES or 2D MOL block (default {DEFAULT_CONFORMERS}); the "
                    "values average over them. 1 is several times faster and a few percent less accurate "
                    "(docs/BENCHMARKS.md); 3D geometries you send are answered as they are")


class PropertyValue(BaseModel):
    value: float
    unit: str
    std: float | None = Field(None, description="the model's spread for this value (ensembles: the members' sample "
                                                "standard deviation), in `unit`; absent when the model has none")
    interval: list[float] | None = Field(None, min_length=2, max_length=2,
                                         description="a prediction interval [lower, upper] in `unit`, when the "
                                                     "model has a calibrated one")


class ItemError(BaseModel):
    code: ErrorCode | Literal["prediction_failed"] = Field(
        description=f"a docs/DESIGN.md error code, or {PREDICTION_FAILED!r} when the model failed on a valid molecule")
    message: str


class Geometry(BaseModel):
    numbers: list[int] = Field(description="atomic numbers")
    positions: list[Position] = Field(description="positions in Å, one per atom")


class ResultOk(BaseModel):
    id: str | None
    ok: Literal[True]
    properties: dict[str, PropertyValue]
    provenance: dict[str, Any] = Field(description='{"source": "smiles|xyz|sdf|atoms", "conformer": {...} | null, ...}')
    warnings: list[str]
    geometry: Geometry | None = Field(None, description="only with `return_geometry`: the geometry the model saw "
                                                        "(`provenance.conformer` says how a generated one was made)")


class ResultError(BaseModel):
    id: str | None
    ok: Literal[False]
    error: ItemError


class ModelRef(BaseModel):
    name: str
    version: str
    sha256: str


class PredictResponse(BaseModel):
    model: ModelRef
    results: list[ResultOk | ResultError]


class PropertyInfo(BaseModel):
    name: str
    description: str
    unit: str
    atomization: bool = Field(description="total energy minus the QM9 atom references")
    test_mae: float | None = Field(description="mean absolute error on the test split, in `unit`, if known")
    test_mae_forcefield: float | None = Field(
        None, description="the same in the conformers lieprop makes from each test molecule's SMILES (what a SMILES "
                          "user gets), if known")


class SizeBin(BaseModel):
    n: int = Field(description="molecules in the bin")
    mae: dict[str, float] = Field(description="MAE per target in the paper unit (meV for energies, D, a0^3, ...)")


class ModelCard(ModelRef):
    default: bool
    architecture: str = Field(description="the network family (lieprop.model.architectures), e.g. lieconv")
    network: str = Field(description="the network in one line, e.g. 'LieResNet T3, width 256, depth 6'")
    members: int = Field(1, description="1 for a single model; the number of members of an ensemble")
    uncertainty: str | None = Field(None, description="what the `std` of each predicted property is, when the "
                                                      "model gives one (ensembles: the members' spread)")
    targets: list[str]
    properties: list[PropertyInfo]
    training: dict[str, Any] | None = None
    test_mae_by_size: dict[str, SizeBin] | None = Field(
        None, description="test-split MAE per atom-count bin ('3-8', '9-10', ...), if recorded")
    small_mae_by_size: dict[str, SizeBin] | None = Field(
        None, description="MAE per bin on every QM9 molecule with at most 10 atoms (a sanity set, not held out)")
    size_warnings: dict[str, str] = Field(
        default_factory=dict, description="atom-count bins the model is known to fail on: their results carry this "
                                          "warning")


class ModelsResponse(BaseModel):
    models: list[ModelCard]


class PropertiesResponse(BaseModel):
    model: ModelRef
    properties: list[PropertyInfo]


class ErrorBody(BaseModel):
    code: str = Field(description="invalid_json, invalid_request, unknown_property, unknown_model, body_too_large, "
                                  "too_many_molecules, unauthorized, not_found, method_not_allowed, overloaded, "
                                  "shutting_down, timeout, internal_error; jobs: invalid_job, invalid_upload, "
                                  "not_ready, job_not_succeeded, gone, results_damaged")
    message: str
    details: list[dict[str, Any]] | None = None


class ErrorResponse(BaseModel):
    error: ErrorBody
    request_id: str | None = None


class JobRunnerHealth(BaseModel):
    status: str = Field(description="up or down")
    detail: str | None = Field(None, description="why the job runner is down")


class Health(BaseModel):
    status: str
    model: ModelRef | None = None
    detail: str | None = None
    jobs: JobRunnerHealth | None = None


ETHANOL_XYZ = """9
ethanol
C      0.877051     0.180808     0.125786
C     -0.469183    -0.508067     0.041336
O     -1.335208     0.222451    -0.814962
H      0.768618     1.194844     0.524455
H      1.561723    -0.378815     0.769151
H      1.324183     0.276044    -0.869158
H     -0.933904    -0.584030     1.029036
H     -0.358002    -1.517088    -0.366169
H     -1.435277     1.113853    -0.439474
"""
METHANAL_SDF = """methanal
     RDKit          3D

  4  3  0  0  0  0  0  0  0  0999 V2000
   -0.5297    0.0000    0.0000 C   0  0  0  0  0  0  0  0  0  0  0  0
    0.6806    0.0000    0.0000 O   0  0  0  0  0  0  0  0  0  0  0  0
   -1.0848    0.9440    0.0000 H   0  0  0  0  0  0  0  0  0  0  0  0
   -1.0848   -0.9440    0.0000 H   0  0  0  0  0  0  0  0  0  0  0  0
  1  2  2  0
  1  3  1  0
  1  4  1  0
M  END
$$$$
"""
WATER = {"numbers": [8, 1, 1], "positions": [[0.0, 0.0, 0.1173], [0.0, 0.7572, -0.4692], [0.0, -0.7572, -0.4692]]}

#: OpenAPI examples of POST /v1/predict, one per input kind and a mixed batch.
PREDICT_EXAMPLES: dict[str, dict[str, Any]] = {
    "smiles": {"summary": "SMILES (a conformer is generated)",
               "value": {"molecules": [{"id": "ethanol", "smiles": "CCO"}], "properties": ["homo", "lumo", "gap"]}},
    "xyz": {"summary": "XYZ text", "value": {"molecules": [{"id": "ethanol", "xyz": ETHANOL_XYZ}]}},
    "sdf": {"summary": "MOL block / SDF record", "value": {"molecules": [{"sdf": METHANAL_SDF}],
                                                          "properties": ["u0", "u0_atomization"]}},
    "atoms": {"summary": "atomic numbers and positions (Å)",
              "value": {"molecules": [{"id": "water", **WATER}], "properties": ["mu", "alpha"]}},
    "mixed": {"summary": "several kinds at once; bad molecules get per-item errors",
              "value": {"molecules": [{"id": "ok", "smiles": "CC(=O)O"}, {"id": "bad", "smiles": "C1CC"},
                                      {"id": "chlorine", "smiles": "CCl"}, {"id": "ion", "smiles": "[NH4+]"}]}},
}
