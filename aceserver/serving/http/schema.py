"""Request and response schema of the HTTP API.

These pydantic models are at once the validation of every request, the OpenAPI document
and the API reference: units are stated in each field's description.
Units: energies eV, lengths Å, forces eV/Å, stress eV/Å³ (ASE Voigt order xx yy zz yz xz xy),
virial eV (W = -V·σ).
"""
from __future__ import annotations

from enum import Enum
from typing import Annotated, Any

from ase.data import atomic_numbers
from pydantic import AfterValidator, BaseModel, BeforeValidator, ConfigDict, Field, WithJsonSchema, model_validator
from pydantic_core import PydanticCustomError

UNITS = {
    "energy": "eV",
    "length": "Å",
    "forces": "eV/Å",
    "stress": "eV/Å³ (ASE Voigt order xx yy zz yz xz xy)",
    "virial": "eV (W = -V·σ)",
    "gamma": "dimensionless (extrapolation grade: ≤ 1 interpolation, 1-5 mild, > 5 unreliable)",
    "descriptors": "aceserver models: dimensionless basis-function values; pacemaker .yace: eV (projections)",
}

# Coordinates (Å): finite (NaN and ±inf rejected) and at most MAX_COORDINATE in magnitude, so that no
# input can overflow the neighbour search; strict so that strings and booleans are not coerced.
MAX_COORDINATE = 1e6
Coordinate = Annotated[float, Field(strict=True, allow_inf_nan=False, ge=-MAX_COORDINATE, le=MAX_COORDINATE)]


def _exactly(n: int, what: str):
    """A before-validator giving a clear shape error instead of pydantic's per-item 'Field required'."""
    def check(value: Any) -> Any:
        if isinstance(value, (list, tuple)) and len(value) != n:
            raise PydanticCustomError("wrong_shape", "expected {n} {what}, got {got}",
                                      {"n": n, "what": what, "got": len(value)})
        return value
    return BeforeValidator(check)


Vec3 = Annotated[tuple[Coordinate, Coordinate, Coordinate], _exactly(3, "Cartesian components (x, y, z)")]
KNOWN_SYMBOLS = {s: z for s, z in atomic_numbers.items() if z > 0}


def field_error(field: str, message: str) -> PydanticCustomError:
    """A validation error of a model-level check that names the sub-field at fault (`ctx.field`)."""
    return PydanticCustomError("invalid_field", "{field}: {problem}", {"field": field, "problem": message})


def _known_symbol(value: str) -> str:
    if value not in KNOWN_SYMBOLS:
        raise PydanticCustomError("unknown_element", "unknown chemical symbol '{symbol}'", {"symbol": value})
    return value


def _pbc_triple(value: Any) -> Any:
    # ASE accepts one flag for all three directions; normalise to three so there is one schema.
    return [value] * 3 if isinstance(value, bool) else value


class Property(str, Enum):
    energy = "energy"
    forces = "forces"
    stress = "stress"
    virial = "virial"
    energies = "energies"
    committee = "committee"
    forces_committee = "forces_committee"
    energies_std = "energies_std"
    forces_std = "forces_std"
    gamma = "gamma"
    max_gamma = "max_gamma"
    descriptors = "descriptors"


COMMITTEE_PROPERTIES = frozenset({Property.committee, Property.forces_committee, Property.energies_std,
                                  Property.forces_std})
GAMMA_PROPERTIES = frozenset({Property.gamma, Property.max_gamma})


DEFAULT_PROPERTIES = (Property.energy, Property.forces, Property.stress, Property.virial, Property.energies)


class Structure(BaseModel):
    """One atomic structure, mirroring `ase.Atoms`: give either `numbers` or `symbols`."""

    model_config = ConfigDict(extra="forbid")

    # fail_fast on the per-atom lists: validation stops at the first bad entry, so a million bad atoms
    # make one error (not a million, each a dict in memory and an entry in the reply).
    numbers: list[Annotated[int, Field(strict=True, ge=1, le=118)]] | None = Field(
        None, fail_fast=True, description="Atomic numbers, one per atom (dimensionless). Give this or `symbols`.",
        examples=[[14, 14]])
    symbols: list[Annotated[str, AfterValidator(_known_symbol)]] | None = Field(
        None, fail_fast=True, description="Chemical symbols, one per atom (e.g. \"Si\"). Give this or `numbers`.",
        examples=[["Si", "Si"]])
    positions: list[Vec3] = Field(
        ..., min_length=1, fail_fast=True, description="Cartesian positions, shape (N, 3), in Å (N ≥ 1; |x| ≤ 1e6 Å).",
        examples=[[[0.0, 0.0, 0.0], [1.3575, 1.3575, 1.3575]]])
    cell: Annotated[tuple[Vec3, Vec3, Vec3], _exactly(3, "cell vectors (rows a, b, c)")] | None = Field(
        None, description="Cell as three row vectors a, b, c, shape (3, 3), in Å (entries ≤ 1e6 Å in "
        "magnitude). Omit (or all zeros) for a finite cluster.",
        examples=[[[0.0, 2.715, 2.715], [2.715, 0.0, 2.715], [2.715, 2.715, 0.0]]])
    pbc: Annotated[tuple[bool, bool, bool], _exactly(3, "flags (a, b, c)"), BeforeValidator(_pbc_triple),
                   WithJsonSchema({"anyOf": [{"type": "boolean"}, {"type": "array", "items": {"type": "boolean"},
                                                                   "minItems": 3, "maxItems": 3}]})] = Field(
        (False, False, False), description="Periodic boundary conditions along a, b, c (dimensionless); "
        "one boolean applies to all three directions.", examples=[[True, True, True]])

    @model_validator(mode="after")
    def _consistent(self) -> "Structure":
        if (self.numbers is None) == (self.symbols is None):
            raise field_error("numbers", "give exactly one of `numbers` (atomic numbers) or `symbols` (chemical symbols)")
        which = "numbers" if self.numbers is not None else "symbols"
        n = len(self.numbers if self.numbers is not None else self.symbols)
        if n != len(self.positions):
            raise field_error("positions", f"{len(self.positions)} rows but {n} atoms in `{which}`; shape must be (N, 3)")
        if any(self.pbc) and self.cell is None:
            raise field_error("cell", "pbc is set but no cell was given")
        return self

    def atomic_numbers(self) -> list[int]:
        if self.numbers is not None:
            return self.numbers
        return [KNOWN_SYMBOLS[s] for s in self.symbols]


class CalculateRequest(BaseModel):
    """Body of `POST /v1/models/{name}/calculate`: one `structure` or a list of `structures`."""

    model_config = ConfigDict(extra="forbid")

    structure: Structure | None = Field(None, description="One structure. Give this or `structures`.")
    structures: list[Structure] | None = Field(
        None, min_length=1, description="A batch of structures, evaluated in order. Give this or `structure`.")
    properties: list[Property] | None = Field(
        None, fail_fast=True, description="Outputs to return. Default: energy, forces, stress, virial, energies, "
        "and committee where the model has a committee. `committee` adds energy_committee and "
        "energy_std; `forces_committee` adds forces_committee and forces_std; `energies_std` and "
        "`forces_std` add only those per-atom spreads (models with a committee). `gamma` (per atom) and "
        "`max_gamma` need a model with an active set (`GET /v1/models/{name}`: `gamma_available`). "
        "`descriptors` returns each atom's basis-function values; atoms × the largest of the "
        "model's `descriptor_sizes`, summed over the request, may not exceed the server's limit "
        "(`--max-descriptor-values`, default 4 000 000): more is a 413 before any work.")

    @model_validator(mode="after")
    def _one_of(self) -> "CalculateRequest":
        if (self.structure is None) == (self.structures is None):
            raise field_error("structure", "give exactly one of `structure` or `structures`")
        return self

    def structure_list(self) -> list[Structure]:
        return [self.structure] if self.structure is not None else self.structures


class PackedRequest(BaseModel):
    """Body of a packed batch (msgpack only): `packed`, the batch as a few arrays, checked by
    `packed.read_packed` (fields, dtypes, shapes and units in `serving/http/packed.py` and
    docs/serving.md), and the optional `properties`."""

    model_config = ConfigDict(extra="forbid")

    packed: dict[str, Any] = Field(..., description="counts (S,), numbers (N,), positions (N, 3) Å, cells "
                                   "(S, 3, 3) Å, pbc (S, 3): msgpack array maps.")
    properties: list[Property] | None = Field(
        None, fail_fast=True, description="As for `structures` (the reply has one array per property).")


class Result(BaseModel):
    """Results for one structure; properties that were not asked for are omitted."""

    energy: float | None = Field(None, description="Total energy in eV (includes the one-body E0 terms).")
    free_energy: float | None = Field(None, description="Equal to `energy` (no electronic entropy), eV.")
    forces: list[list[float]] | None = Field(None, description="Forces, shape (N, 3), eV/Å.")
    stress: list[float] | None = Field(
        None, description="Stress σ = -W/V, shape (6,), Voigt order xx yy zz yz xz xy, eV/Å³ (ASE "
        "convention). Null unless the structure is periodic in all three directions.")
    virial: list[list[float]] | None = Field(None, description="Virial W = -V·σ, shape (3, 3), eV.")
    energies: list[float] | None = Field(None, description="Per-atom site energies, shape (N,), eV; sum to `energy`.")
    energy_committee: list[float] | None = Field(None, description="Energy of each committee member, shape (K,), eV.")
    energy_std: float | None = Field(
        None, description="Committee spread of the energy, eV: the population standard deviation of the K "
        "members' energies, sqrt(Σ_k (E_k - E_mean)² / K) (ddof 0; 0 for K = 1).")
    forces_committee: list[list[list[float]]] | None = Field(
        None, description="Forces of each committee member, shape (K, N, 3), eV/Å.")
    forces_std: list[list[float]] | None = Field(
        None, description="Committee spread of the forces, shape (N, 3), eV/Å: per component, the population "
        "standard deviation over the K members, sqrt(Σ_k (F_k - F_mean)² / K) (ddof 0).")
    energies_std: list[float] | None = Field(
        None, description="Committee spread of each atom's site energy, shape (N,), eV: the population standard "
        "deviation over the K members, sqrt(Σ_k (E_ik - E_i,mean)² / K) (ddof 0).")
    gamma: list[float] | None = Field(
        None, description="Extrapolation grade of each atom, shape (N,), dimensionless: γ_i = max_k |(D_i A⁻¹)_k| "
        "with D_i the atom's descriptors and A⁻¹ its species' active-set inverse (D-optimality, as pacemaker). "
        "γ ≤ 1 interpolates the training data, 1-5 is mild extrapolation, > 5 unreliable.")
    max_gamma: float | None = Field(
        None, description="The largest `gamma` of the structure, dimensionless.")
    descriptors: list[list[float]] | None = Field(
        None, description="Per-atom descriptors, shape (N, L), L = the largest of the model's `descriptor_sizes`: "
        "row i holds the values of the basis functions atom i's site energy is linear in (columns beyond its "
        "species' size are zero). aceserver models: dimensionless basis-function values, with "
        "E = Σ_i descriptors[i]·θ[species(i)] + Σ_i E0 (eV); pacemaker .yace potentials: projections "
        "∂E_i/∂s (eV) per C-tilde function and density.")


class CalculateResponse(BaseModel):
    model: str = Field(..., description="Name of the model that evaluated the structures.")
    sha256: str = Field(..., description="sha256 of the model file content (identifies the parameters).")
    results: list[Result] = Field(..., description="One result per structure, in request order.")


class ModelInfo(BaseModel):
    name: str = Field(..., description="Name the model is addressed by in URLs.")
    species: list[str] = Field(..., description="Chemical symbols the model has parameters for.")
    rcut: float = Field(..., description="Cutoff radius, Å.")
    length_basis: int = Field(..., description="Number of basis functions (length of the parameter vector).")
    sha256: str = Field(..., description="sha256 of the model content; for a pacemaker potential, of the "
                        "original `.yace` file.")
    format: str = Field("aceserver-json", description="Format the potential came from: `aceserver-json` "
                        "(aceserver model file) or `yace` (pacemaker).")
    cutoffs: dict[str, float] | None = Field(
        None, description="Cutoff radius per ordered species pair `A-B` (centre-neighbour), Å.")
    committee_size: int = Field(..., description="Number of committee members (0: no committee).")
    gamma_available: bool = Field(
        False, description="Whether the model carries an active set, so that the properties `gamma` and "
        "`max_gamma` can be asked for (build one with `aceserver activeset MODEL DATA.xyz`).")
    active_set: dict[str, int] | None = Field(
        None, description="Size L (rows = columns of A⁻¹) of the active set of each species; null without one.")
    descriptor_sizes: dict[str, int] | None = Field(
        None, description="Number of descriptor columns per species (the `descriptors` property).")
    fit_errors: dict[str, Any] | None = Field(
        None, description="Fit errors recorded in the model file, e.g. {train|validation: {rmse|mae: "
        "{config type: {E, F, V}}}}; units in `fit_error_units`.")
    fit_error_units: dict[str, str] | None = Field(
        None, description="Units of `fit_errors`, e.g. {E: eV/atom, F: eV/Å, V: eV/atom}.")
    metadata: dict[str, Any] = Field(default_factory=dict, description="Free-form metadata of the model file.")
    units: dict[str, str] = Field(default_factory=lambda: dict(UNITS), description="Units of all quantities.")
    learning: LearningStatus | None = Field(
        None, description="Learning state (`POST /v1/models/{name}/data`): data versions of the served model and of "
        "the pending data; null on the model list and for models served without `--learn`.")


class RefitStatus(BaseModel):
    state: str = Field(..., description="`idle`, `running` or `failed` (the served model stayed; the next post "
                       "tries again).")
    versions: list[int] = Field(default_factory=list, description="Data versions of the running or last refit.")
    error: str | None = Field(None, description="Why the last refit failed.")
    started: str | None = Field(None, description="When the last refit started (ISO-8601 UTC).")
    finished: str | None = Field(None, description="When it finished (ISO-8601 UTC).")
    seconds: float | None = Field(None, description="How long it took, s.")


class LearnedActiveSet(BaseModel):
    available: bool = Field(..., description="Whether the served model has an active set (γ, `max_gamma`): after a "
                            "refit, the previous model's set extended by MaxVol with the posted structures.")
    reason: str | None = Field(None, description="Why not, where it has none (served without one from the start, "
                               "or the last extension failed).")
    seconds: float | None = Field(None, description="Time of the last refit's extension of the active set, s "
                                  "(part of the refit's `seconds`).")
    added: dict[str, int] | None = Field(None, description="Rows of each species' active set that came from the "
                                         "posted structures, after the last refit.")


class ServedVersion(BaseModel):
    sha256: str = Field(..., description="sha256 of a model this server has served (calculate replies name it).")
    data_version: int = Field(..., description="The data version that model was fitted on.")
    since: str = Field(..., description="When it was swapped in (ISO-8601 UTC).")


class RefusedVersion(BaseModel):
    version: int = Field(..., description="A posted data version the fitter refused.")
    reason: str = Field(..., description="Why (e.g. an isolated atom whose energy contradicts the fit's E0).")


class LearningStatus(BaseModel):
    """Learning state of a model served with `--learn` (`POST /v1/models/{name}/data`)."""

    learnable: bool = Field(..., description="Whether the model takes posted data.")
    sha256: str | None = Field(None, description="sha256 of the model now served.")
    data_version: int | None = Field(
        None, description="Data version the served model was fitted on: the batches of its fit (`aceserver fit`) "
        "and every posted batch up to this number.")
    latest_version: int | None = Field(None, description="The last data version in the log.")
    pending: list[int] = Field(default_factory=list, description="Posted data versions not yet in the served "
                               "model (a refit is running or about to).")
    refused: list[RefusedVersion] = Field(default_factory=list, description="Posted versions the fitter refused "
                                          "as input (kept in the log, never pending again; the last 20).")
    refit: RefitStatus | None = None
    active_set: LearnedActiveSet | None = Field(None, description="The served model's active set as the learning "
                                                "keeps it across refits.")
    served: list[ServedVersion] = Field(default_factory=list, description="The models served since the server "
                                        "started (at most 20, newest first) and the data version of each.")
    reason: str | None = Field(None, description="Why the model does not learn, where it does not.")


class ModelList(BaseModel):
    default: str = Field(..., description="Name of the default model (the first one served).")
    models: list[ModelInfo]


class ErrorDetail(BaseModel):
    field: str | None = Field(None, description="The offending input, e.g. `structure.positions[3][1]`.")
    message: str


class ErrorBody(BaseModel):
    """Every 4xx/5xx response carries this JSON body."""

    kind: str = Field(..., description="Machine-readable error kind, e.g. `invalid_input`, `unknown_model`.")
    message: str = Field(..., description="Human-readable description of the problem.")
    field: str | None = Field(None, description="The offending input field, where there is one.")
    details: list[ErrorDetail] = Field(
        default_factory=list, description="The problems found, where several: at most 20 (the first found); "
        "validation stops at the first bad entry of a per-atom list.")
    more_details: int = Field(0, description="How many further problems were found but not listed in `details`.")


class Health(BaseModel):
    status: str = Field(..., description="`ok`, `ready`, `starting`, `draining` or `failed`.")
    message: str | None = None
    models: list[str] = Field(default_factory=list)
