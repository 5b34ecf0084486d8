"""Request and response schema of the jobs API (`routers/jobs.py`): a job request is a job spec of
`aceserver.jobs.spec` (relax or md, told apart by `kind`) plus the model and the structure(s).
Units: eV, Å, eV/Å, fs, K, GPa; stress eV/Å³ (ASE Voigt order xx yy zz yz xz xy).
"""
from __future__ import annotations

from typing import Annotated, Any, Literal, Union

from pydantic import BaseModel, Field, TypeAdapter, ValidationError, model_validator

from aceserver.jobs.spec import MDJob, RelaxJob, RelaxManyJob

from .error_replies import APIError, from_validation_error
from .schema import Structure, field_error

TAGS = ("relax", "md", "relax_many")


class _Target(BaseModel):
    model: str | None = Field(None, description="Name of a served model (default: the server's default model).")
    structure: Structure | None = Field(None, description="The starting structure. Give this or `structures`.")
    structures: list[Structure] | None = Field(
        None, min_length=1, description="Several starting structures: one independent job each, same parameters.")

    @model_validator(mode="after")
    def _one_of(self):
        if (self.structure is None) == (self.structures is None):
            raise field_error("structure", "give exactly one of `structure` or `structures`")
        return self

    def named_structures(self) -> list[tuple[str, Structure]]:
        if self.structure is not None:
            return [("structure", self.structure)]
        return [(f"structures[{i}]", s) for i, s in enumerate(self.structures)]


class RelaxJobRequest(RelaxJob, _Target):
    """A relaxation job: `kind: relax`."""


class MDJobRequest(MDJob, _Target):
    """A molecular dynamics job: `kind: md`."""


class RelaxManyJobRequest(RelaxManyJob, _Target):
    """Many relaxations in ONE job: `kind: relax_many` with `structures`. Each structure gets its own
    optimiser (same parameters) and every step of all those still running is one batched evaluation;
    the status's `structures` gives each one's outcome, its frames carry `structure` (its index)."""

    @model_validator(mode="after")
    def _many(self):
        if self.structures is None:
            raise field_error("structures", "a relax_many job takes `structures` (a list), not `structure`")
        return self


JobRequest = Annotated[Union[RelaxJobRequest, MDJobRequest, RelaxManyJobRequest], Field(discriminator="kind")]
_ADAPTER = TypeAdapter(JobRequest)


def validate_request(doc: Any) -> RelaxJobRequest | MDJobRequest:
    """The validated request, or a 422 naming the field (`parameters.steps`, `kind`, ...)."""
    try:
        return _ADAPTER.validate_python(doc)
    except ValidationError as ex:
        errors = []
        for e in ex.errors(include_url=False):
            loc = tuple(e.get("loc", ()))
            if e.get("type", "").startswith("union_tag"):
                e = {**e, "loc": ("kind",), "msg": "`kind` must be `relax`, `md` or `relax_many`"}
            elif loc and loc[0] in TAGS:           # the discriminated union's tag is not a field of the body
                e = {**e, "loc": loc[1:]}
            errors.append(e)
        raise from_validation_error(errors) from None


def job_spec(request: RelaxJobRequest | MDJobRequest | RelaxManyJobRequest) -> RelaxJob | MDJob | RelaxManyJob:
    """The request's job spec, without the model and structures (what the jobs layer runs)."""
    cls = {"relax": RelaxJob, "md": MDJob, "relax_many": RelaxManyJob}[request.kind]
    return cls.model_validate(request.model_dump(include=set(cls.model_fields)))


def not_found(job_id: str) -> APIError:
    return APIError(404, "unknown_job", f"no job with id {job_id[:80]!r} (finished jobs expire; see GET /v1/jobs)",
                    "id")


State = Literal["queued", "running", "done", "halted", "failed", "cancelled", "interrupted"]


class JobHalt(BaseModel):
    condition: str = Field(..., description="`max_gamma`, `max_energy_std` or `max_force`.")
    value: float = Field(..., description="The value found (dimensionless γ, eV, eV/Å).")
    threshold: float = Field(..., description="The threshold it exceeded (same unit).")
    step: int = Field(..., description="The step at which it was found.")


class JobError(BaseModel):
    kind: str = Field(..., description="`invalid_input` (e.g. atoms too close during the run), `too_large`, "
                      "`internal`.")
    message: str
    field: str | None = None


class StructureOutcome(BaseModel):
    """How one structure of a relax_many job ended. Its final positions (Å), cell (Å), forces (eV/Å),
    per-atom energies (eV) and stress (eV/Å³, Voigt xx yy zz yz xz xy; 3-D periodic cells) are in its
    last frame, `frame` (GET .../frames?start=frame)."""
    index: int = Field(..., description="The structure's index in `structures`.")
    state: Literal["converged", "not_converged", "halted", "failed", "cancelled", "interrupted"] = Field(
        ..., description="converged (fmax reached), not_converged (max_steps done), halted (see `halt`), "
        "failed (see `error`), cancelled (the job was cancelled or the server stopped), interrupted (the "
        "server was killed while it ran: `steps` and `frame` are those of its last stored frame).")
    steps: int = Field(..., description="Optimiser steps done (its last step; interrupted: its last stored "
                       "frame's).")
    reason: str | None = Field(None, description="Why it halted.")
    halt: JobHalt | None = Field(None, description="The halt condition that stopped it.")
    error: JobError | None = Field(None, description="Why it failed (`field` names it: `structures[i]...`).")
    frame: int | None = Field(None, description="Index of its last frame (the final structure), if written.")
    energy: float | None = Field(None, description="Potential energy at its last step, eV.")
    max_force: float | None = Field(None, description="Largest atomic force at its last step, eV/Å.")


class JobStatus(BaseModel):
    id: str
    kind: Literal["relax", "md", "relax_many"]
    model: str = Field(..., description="Name of the model the job runs on.")
    model_sha256: str = Field(..., description="sha256 of the model (identifies its parameters).")
    state: State = Field(..., description="queued, running, done, halted (see `halt`), failed (see `error`), "
                         "cancelled, interrupted (the server stopped while it was queued or running).")
    reason: str | None = Field(None, description="Why it halted, was cancelled or interrupted.")
    halt: JobHalt | None = Field(None, description="The halt condition that stopped the job.")
    error: JobError | None = Field(None, description="Why it failed, as an error document.")
    converged: bool | None = Field(None, description="Relaxations: whether `fmax` was reached (relax_many: by "
                                   "every structure).")
    structures: list[StructureOutcome] | None = Field(
        None, description="relax_many, once it has ended (also when the server was killed): each structure's "
        "outcome, in request order (GET /v1/jobs/{id} only; null in lists).")
    n_atoms: int = Field(..., description="Atoms of the job (relax_many: of all its structures).")
    steps: int = Field(..., description="Steps asked for (`steps`, or `max_steps` of a relaxation).")
    step: int = Field(..., description="The last step done.")
    frames: int = Field(..., description="Frames written so far (GET .../frames).")
    progress: float = Field(..., description="step / steps (1 when done).")
    created: float = Field(..., description="When the job was submitted, Unix time, s.")
    started: float | None = Field(None, description="When it started running, Unix time, s.")
    finished: float | None = Field(None, description="When it ended, Unix time, s.")
    seconds: float | None = Field(None, description="Wall time running so far (or in all), s.")
    seconds_per_step: float | None = Field(None, description="seconds / step, s.")
    parameters: dict[str, Any] = Field(..., description="The job spec as run (kind, parameters, write_every, "
                                       "check_every, halt, record).")


class JobSubmitted(BaseModel):
    ids: list[str] = Field(..., description="The new jobs' ids, one per structure, in request order.")
    jobs: list[JobStatus]


class JobList(BaseModel):
    jobs: list[JobStatus] = Field(..., description="Newest first.")
    enabled: bool = Field(..., description="Whether this server runs jobs (started with --jobs-dir).")


FRAME_DOC = (
    "One frame per step written (every `write_every` steps, plus the first and the last): `index`, `step`, "
    "`time_fs` (fs; null for a relaxation), `numbers`, `positions` (N, 3) Å, `momenta` (N, 3) amu·Å/(ASE time "
    "unit) = ASE's `get_momenta()` (null for a relaxation), `cell` (3, 3) Å, `pbc`, `energy` (potential, eV), "
    "`kinetic_energy` eV, `temperature_K` K, `forces` (N, 3) eV/Å, `energies` (N,) eV per atom, `stress` (6,) "
    "eV/Å³ Voigt xx yy zz yz xz xy (null unless 3-D periodic), `max_force` eV/Å, `energy_std` eV, `gamma` (N,) "
    "and `max_gamma` (dimensionless), null where not recorded. relax_many: the frames of all structures in one "
    "stream, each with `structure` (its index in `structures`), written every `write_every` steps of that "
    "structure plus its first and last.")
