"""Request and response schema of `POST /v1/models/{name}/data` (`routers/learn.py`): labelled
structures for a model served with `--learn`.

Units: positions and cell Å; energy eV (total, the one-body E0 terms included, as the reference
code gives it); forces eV/Å; virial eV (W = -V·σ, 3×3); stress eV/Å³ (ASE Voigt order xx yy zz yz
xz xy, or 3×3), turned into a virial with the cell's volume. Give a virial or a stress, or
neither (no virial row for that structure).
"""
from __future__ import annotations

from typing import Annotated

from pydantic import BaseModel, ConfigDict, Field, model_validator

from .schema import LearningStatus, Structure, _exactly, field_error

# finite and at most MAX_LABEL in magnitude (eV, eV/Å, eV/Å³): a label beyond it is a unit or sign error,
# and it would swamp (or overflow) the least-squares system of every later refit
MAX_LABEL = 1e9
Label = Annotated[float, Field(strict=True, allow_inf_nan=False, ge=-MAX_LABEL, le=MAX_LABEL)]
Row3 = Annotated[tuple[Label, Label, Label], _exactly(3, "components (x, y, z)")]
Matrix3 = Annotated[tuple[Row3, Row3, Row3], _exactly(3, "rows")]
LABEL_KEYS = ("energy", "forces", "virial", "stress", "config_type")
STRUCTURE_KEYS = ("numbers", "symbols", "positions", "cell", "pbc") + LABEL_KEYS   # for `compute.check_document`
REQUEST_KEYS = ("structure", "structures")


class LabelledStructure(Structure):
    """A structure and its reference labels (e.g. from DFT)."""

    model_config = ConfigDict(extra="forbid")

    energy: Label = Field(..., description="Total energy, eV (the one-body E0 terms included).")
    forces: list[Row3] = Field(..., fail_fast=True, description="Forces, shape (N, 3), eV/Å.")
    virial: Matrix3 | None = Field(None, description="Virial W = -V·σ, shape (3, 3), eV (optional).")
    stress: list[Label] | list[Row3] | None = Field(
        None, description="Stress σ, eV/Å³, 6 numbers in ASE Voigt order xx yy zz yz xz xy or (3, 3) (optional; "
        "not with `virial`; needs a cell periodic in all three directions).")
    config_type: str = Field("default", min_length=1, max_length=100,
                             description="The weight group of the fit this structure belongs to.")

    @model_validator(mode="after")
    def _labels(self) -> "LabelledStructure":
        if len(self.forces) != len(self.positions):
            raise field_error("forces", f"{len(self.forces)} rows but {len(self.positions)} atoms; shape must be (N, 3)")
        if self.stress is not None and len(self.stress) not in (3, 6):
            raise field_error("stress", f"6 numbers (Voigt) or 3 rows (3×3) expected, got {len(self.stress)}")
        if self.stress is not None and self.virial is not None:
            raise field_error("stress", "give a virial or a stress, not both")
        return self


class DataRequest(BaseModel):
    """Body of `POST /v1/models/{name}/data`: one `structure` or a list of `structures`, all appended as one
    batch (one data version), or none if any is refused."""

    model_config = ConfigDict(extra="forbid")

    structure: LabelledStructure | None = Field(None, description="One labelled structure. Give this or `structures`.")
    structures: list[LabelledStructure] | None = Field(
        None, min_length=1, description="Several labelled structures. Give this or `structure`.")

    @model_validator(mode="after")
    def _one_of(self) -> "DataRequest":
        if (self.structure is None) == (self.structures is None):
            raise field_error("structure", "give exactly one of `structure` or `structures`")
        return self

    def named(self) -> list[tuple[str, LabelledStructure]]:
        if self.structure is not None:
            return [("structure", self.structure)]
        return [(f"structures[{i}]", s) for i, s in enumerate(self.structures)]


class DataPosted(BaseModel):
    model: str = Field(..., description="Name of the model the data were posted to.")
    version: int = Field(..., description="The data version this batch got (the log's numbering, one per post).")
    sha256: str = Field(..., description="sha256 of the batch as logged.")
    configs: int = Field(..., description="Structures in the batch.")
    atoms: int = Field(..., description="Atoms in the batch.")
    added: str = Field(..., description="When it was logged (ISO-8601 UTC); durable on disk when this reply is sent.")
    learning: LearningStatus

