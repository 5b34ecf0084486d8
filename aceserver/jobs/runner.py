"""Run one job: an ASE optimiser or MD integrator on an `ACECalculator` (the one evaluation path),
a frame handed to the sink every `write_every` steps, the halt conditions checked every
`check_every` steps, the cancel event looked at after every step. Knows nothing of storage or HTTP.

Steps are ASE's `nsteps`: step 0 is the given structure; the first and the last step (converged,
halted, cancelled or the last of the run) are always written.
"""
from __future__ import annotations

import threading
from dataclasses import dataclass
from typing import Any, Protocol

import numpy as np
from ase import Atoms, units
from ase.filters import FrechetCellFilter
from ase.md.langevin import Langevin
from ase.md.nose_hoover_chain import IsotropicMTKNPT
from ase.md.velocitydistribution import MaxwellBoltzmannDistribution, Stationary
from ase.md.verlet import VelocityVerlet
from ase.optimize import BFGS, FIRE, LBFGS

from aceserver.calculator import ACECalculator
from aceserver.errors import ACEInputError, TooManyPairsError
from aceserver.evaluation.site_potential import SitePotential
from aceserver.evaluation.verlet import DEFAULT_SKIN

from . import frames
from .spec import Halt, MDJob, MDParameters, RelaxJob, RelaxParameters

try:                    # ASE >= 3.29; before it the same draw was MaxwellBoltzmannDistribution (deprecated since)
    from ase.md.velocitydistribution import thermalize_momenta
except ImportError:     # pragma: no cover
    def thermalize_momenta(atoms: Atoms, temperature_K: float, *, rng=None) -> None:
        MaxwellBoltzmannDistribution(atoms, temperature_K=temperature_K, rng=rng)

OPTIMIZERS = {"FIRE": FIRE, "BFGS": BFGS, "LBFGS": LBFGS}
UNITS = {"max_gamma": "", "max_energy_std": " eV", "max_force": " eV/Å"}


class Sink(Protocol):
    def frame(self, frame: dict) -> None: ...       # a frame to keep (in order of `index`)
    def step(self, step: int) -> None: ...          # progress: the step just done


@dataclass
class Outcome:
    state: str                          # done, halted or cancelled
    step: int                           # the last step done
    reason: str | None = None           # why it halted
    halt: dict | None = None            # {condition, value, threshold, step}
    converged: bool | None = None       # relaxations: fmax reached
    frames: int = 0                     # frames written


def initial_velocities(atoms: Atoms, p: MDParameters) -> None:
    """Seeded Maxwell-Boltzmann velocities at `temperature_K`, zero total momentum (as MDParameters says)."""
    thermalize_momenta(atoms, p.temperature_K, rng=np.random.default_rng(p.seed))
    Stationary(atoms)


def integrator(atoms: Atoms, p: MDParameters):
    dt = p.timestep_fs * units.fs
    if p.ensemble == "nve":
        return VelocityVerlet(atoms, timestep=dt)
    if p.ensemble == "nvt":
        # the noise has its own stream of the same seed (the velocities used default_rng(seed))
        return Langevin(atoms, timestep=dt, temperature_K=p.temperature_K, friction=p.friction_per_fs / units.fs,
                        fixcm=False, rng=np.random.default_rng([p.seed, 1]))
    return IsotropicMTKNPT(atoms, timestep=dt, temperature_K=p.temperature_K, pressure_au=p.pressure_GPa * units.GPa,
                           tdamp=(p.tdamp_fs or 100 * p.timestep_fs) * units.fs,
                           pdamp=(p.pdamp_fs or 1000 * p.timestep_fs) * units.fs)


def optimizer(atoms: Atoms, p: RelaxParameters):
    """The ASE optimiser a relaxation runs on atoms: on a `FrechetCellFilter` (at the scalar
    pressure, GPa) when the cell relaxes too; no log."""
    target = FrechetCellFilter(atoms, scalar_pressure=p.pressure_GPa * units.GPa) if p.cell_filter else atoms
    return OPTIMIZERS[p.optimizer](target, logfile=None)


def halt_reason(halt: Halt, frame: dict) -> dict | None:
    """The first condition of `halt` that the frame's values exceed, as {condition, value, threshold}."""
    values = {"max_gamma": frame.get("max_gamma"), "max_energy_std": frame.get("energy_std"),
              "max_force": frame.get("max_force")}
    for name, threshold in halt.active().items():
        value = values[name]
        if value is not None and value > threshold:
            return {"condition": name, "value": value, "threshold": threshold, "step": frame["step"]}
    return None


def halt_message(halt: dict) -> str:
    """A halt (`halt_reason`) in words, with units."""
    unit = UNITS[halt["condition"]]
    return (f"{halt['condition']}: {halt['value']:.6g}{unit} > {halt['threshold']:.6g}{unit} "
            f"at step {halt['step']}")


def run(model: SitePotential, atoms: Atoms, spec: RelaxJob | MDJob, sink: Sink,
        cancel: threading.Event | None = None, skin: float = DEFAULT_SKIN) -> Outcome:
    """Run `spec` on a copy of `atoms` with `model`; frames go to `sink`. Raises what the evaluator
    raises on bad geometry (`aceserver.errors.ACEInputError`). skin: the calculator's Verlet skin, Å
    (0: a fresh neighbour search every step, whose forces are those of `evaluate_many` bit for bit;
    a reused search orders the pairs differently, ~1e-16 relative)."""
    atoms = atoms.copy()
    atoms.calc = calc = ACECalculator(model, committee=needs_committee(spec), gamma=needs_gamma(spec), skin=skin)
    md = isinstance(spec, MDJob)
    if md:
        p = spec.parameters
        initial_velocities(atoms, p)
        dyn = integrator(atoms, p)
        loop, last, dt_fs = dyn.irun(p.steps), p.steps, p.timestep_fs
    else:
        p = spec.parameters
        dyn = optimizer(atoms, p)
        loop, last, dt_fs = dyn.irun(fmax=p.fmax, steps=p.max_steps), p.max_steps, None
    written, step, converged = 0, 0, False
    checks = spec.halt.active()
    # γ only for the steps that check it, unless every frame records it (it does not change the forces)
    gamma_every = spec.check_every if spec.halt.max_gamma is not None and "gamma" not in spec.record else None
    for converged in loop:
        step = dyn.nsteps
        final = step >= last or (converged and not md)
        write = step % spec.write_every == 0 or final
        check = bool(checks) and step % spec.check_every == 0
        cancelled = cancel is not None and cancel.is_set()
        frame = None
        if write or check or cancelled:
            frame = frames.make(atoms, calc.results, written, step, None if dt_fs is None else step * dt_fs, md,
                                calc.results.get("gamma"))
        halt = halt_reason(spec.halt, frame) if check else None
        stop = halt is not None or cancelled
        if write or stop:
            sink.frame(frame)
            written += 1
        sink.step(step)
        if gamma_every is not None:          # for the evaluation of the next step, made inside irun
            calc.gamma = (step + 1) % gamma_every == 0
        if halt is not None:
            return Outcome("halted", step, halt_message(halt), halt, None if md else bool(converged), written)
        if stop:
            return Outcome("cancelled", step, None, None, None if md else bool(converged), written)
    return Outcome("done", step, None, None, None if md else bool(converged), written)


def needs_committee(spec: RelaxJob | MDJob) -> bool:
    return spec.halt.max_energy_std is not None or "energy_std" in spec.record


def needs_gamma(spec: RelaxJob | MDJob) -> bool:
    return spec.halt.max_gamma is not None or "gamma" in spec.record


def error_document(ex: BaseException, where: str = "structure") -> dict[str, Any]:
    """A failed job's error, in the shape of the API's error documents (kind, message, field);
    where: the request's field of the structure (`structures[3]` in a batch)."""
    if isinstance(ex, TooManyPairsError):
        return {"kind": "too_large", "message": str(ex), "field": where}
    if isinstance(ex, ACEInputError):
        field = f"{where}.{ex.field}" if ex.field else where
        return {"kind": "invalid_input", "message": f"{field}: {ex}", "field": field}
    return {"kind": "internal", "message": f"internal error ({type(ex).__name__}); see the server log",
            "field": None}
