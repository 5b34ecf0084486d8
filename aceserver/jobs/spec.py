"""What a job is asked to do: the parameters of a relaxation or an MD run, how often frames are
written and halt conditions checked, and the halt conditions themselves (pydantic models: the
validation, and the schema the HTTP API documents). Units: eV, Å, eV/Å, fs, K, GPa.

A job spec is `RelaxJob`, `MDJob` or `RelaxManyJob` (many structures relaxed together, each step
of all of them one batched evaluation), told apart by `kind` (`JobSpec`, a discriminated union).
"""
from __future__ import annotations

from typing import Annotated, Literal, Union

from pydantic import BaseModel, ConfigDict, Field

Positive = Annotated[float, Field(gt=0, allow_inf_nan=False)]
MAX_STEPS = 10_000_000           # a step count above this is a typo, not a run (limits.py bounds the work)


class Halt(BaseModel):
    """Stop a job (state `halted`, with the reason and step) as soon as a check finds a value above
    its threshold. Checked on the structure of every `check_every`-th step (step 0 included)."""

    model_config = ConfigDict(extra="forbid")

    max_gamma: Positive | None = Field(
        None, description="Largest extrapolation grade γ of any atom (dimensionless; pacemaker's convention: "
        "γ ≤ 1 interpolation, γ > 5 unreliable). Needs a model with an active set.")
    max_energy_std: Positive | None = Field(
        None, description="Committee spread of the total energy, eV (population standard deviation over "
        "the members, ddof 0). Needs a model with a committee.")
    max_force: Positive | None = Field(
        None, description="Largest force on any atom, |F_i| in eV/Å.")

    def active(self) -> dict[str, float]:
        return {k: v for k, v in self.model_dump().items() if v is not None}


class _Common(BaseModel):
    model_config = ConfigDict(extra="forbid")

    write_every: int = Field(1, ge=1, le=MAX_STEPS, description="Write a frame every this many steps "
                             "(the first and the last step are always written).")
    check_every: int = Field(1, ge=1, le=MAX_STEPS, description="Check the halt conditions every this many "
                             "steps.")
    halt: Halt = Field(default_factory=Halt, description="Halt conditions; none by default.")
    record: list[Literal["energy_std", "gamma"]] = Field(
        default_factory=list, max_length=2, description="Extra per-frame quantities: `energy_std` (committee "
        "spread of the energy, eV; needs a committee), `gamma` (per-atom extrapolation grade; needs an "
        "active set). Those a halt condition needs are recorded anyway.")


class RelaxParameters(BaseModel):
    """A relaxation with an ASE optimiser, until the largest force is at most `fmax`."""

    model_config = ConfigDict(extra="forbid")

    optimizer: Literal["FIRE", "BFGS", "LBFGS"] = Field("BFGS", description="ASE optimiser.")
    fmax: Positive = Field(0.05, description="Converged when every atom's force is at most this, eV/Å "
                           "(with `cell_filter`, the filter's generalised forces, stress × volume included).")
    max_steps: int = Field(1000, ge=1, le=MAX_STEPS, description="Most optimiser steps; a job that has not "
                           "converged by then ends `done` with `converged: false`.")
    cell_filter: bool = Field(False, description="Relax the cell too (ASE's `FrechetCellFilter`); needs a "
                              "cell periodic in all three directions.")
    pressure_GPa: Annotated[float, Field(ge=-1000, le=1000, allow_inf_nan=False)] = Field(
        0.0, description="External (scalar) pressure for the cell relaxation, GPa.")


class RelaxJob(_Common):
    kind: Literal["relax"] = Field(description="`relax`: a geometry optimisation.")
    parameters: RelaxParameters = Field(default_factory=RelaxParameters)

    @property
    def steps(self) -> int:
        return self.parameters.max_steps


class MDParameters(BaseModel):
    """Molecular dynamics with an ASE integrator. Initial momenta: ASE's Maxwell-Boltzmann draw
    `thermalize_momenta(atoms, temperature_K, rng=numpy.random.default_rng(seed))` (before ASE 3.29
    `MaxwellBoltzmannDistribution`, the same draw), then `Stationary(atoms)` (zero total momentum,
    temperature kept): the same seed gives the same run. Langevin noise: `default_rng([seed, 1])`."""

    model_config = ConfigDict(extra="forbid")

    ensemble: Literal["nve", "nvt", "npt"] = Field(
        "nve", description="`nve`: VelocityVerlet; `nvt`: Langevin (seeded); `npt`: IsotropicMTKNPT "
        "(Martyna-Tobias-Klein, isotropic cell; needs a 3-D periodic cell).")
    timestep_fs: Annotated[float, Field(gt=0, le=20, allow_inf_nan=False)] = Field(
        1.0, description="Time step, fs.")
    steps: int = Field(..., ge=1, le=MAX_STEPS, description="Number of MD steps.")
    temperature_K: Annotated[float, Field(ge=0, le=100_000, allow_inf_nan=False)] = Field(
        300.0, description="Temperature of the initial velocities and the thermostat's target, K.")
    pressure_GPa: Annotated[float, Field(ge=-1000, le=1000, allow_inf_nan=False)] = Field(
        0.0, description="External pressure (npt), GPa.")
    seed: int = Field(0, ge=0, le=2**63 - 1, description="Seed of the initial velocities and of the "
                      "Langevin noise (numpy `default_rng`).")
    friction_per_fs: Annotated[float, Field(gt=0, le=10, allow_inf_nan=False)] = Field(
        0.01, description="Langevin friction (nvt), 1/fs.")
    tdamp_fs: Positive | None = Field(None, description="Thermostat time constant (npt), fs; default 100 × "
                                      "timestep.")
    pdamp_fs: Positive | None = Field(None, description="Barostat time constant (npt), fs; default 1000 × "
                                      "timestep.")


class MDJob(_Common):
    kind: Literal["md"] = Field(description="`md`: molecular dynamics.")
    parameters: MDParameters

    @property
    def steps(self) -> int:
        return self.parameters.steps


class RelaxManyJob(_Common):
    """Many structures relaxed in one job, each by its own optimiser with the same parameters; every
    step of the structures still running is one batched evaluation (`batch_relax.py`). The halt
    conditions, `write_every`, `check_every` and `record` apply to each structure on its own: a
    structure that trips a halt condition stops (`halted`), the others go on."""

    kind: Literal["relax_many"] = Field(description="`relax_many`: many geometry optimisations in one job "
                                        "(give `structures`).")
    parameters: RelaxParameters = Field(default_factory=RelaxParameters)

    @property
    def steps(self) -> int:
        return self.parameters.max_steps


JobSpec = Annotated[Union[RelaxJob, MDJob, RelaxManyJob], Field(discriminator="kind")]
