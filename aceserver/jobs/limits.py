"""What a job may ask for, checked before it is queued: the model can evaluate the structure and
the halt conditions, the ensemble or cell filter has the cell it needs, and the work and the disk
it will take are bounded (atoms × steps, atoms × frames).

Errors name the offending field of the job request (`structure.numbers[3]`, `parameters.steps`,
`halt.max_energy_std`): `JobInputError` is bad input, `JobTooLarge` a limit, `JobQueueFull` a
server that has too many jobs waiting.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from ase import Atoms

from aceserver.errors import ACEInputError
from aceserver.evaluation.site_potential import SitePotential

from .frames import BYTES_PER_ATOM
from .runner import needs_committee, needs_gamma
from .spec import MDJob, RelaxJob


class JobInputError(ACEInputError):
    """The job cannot run as asked (`field` names the input)."""


class JobTooLarge(ACEInputError):
    """The job would take more work or disk than the server allows (`field` names the input)."""


class JobQueueFull(RuntimeError):
    """Too many jobs are waiting; try later."""


@dataclass
class JobLimits:
    max_atom_steps: int = 100_000_000   # atoms × steps of one job: ~30 min of a 64-atom Si MD at 20 µs/atom-step
    max_frame_atoms: int = 2_000_000    # atoms × frames of one job: ~88 bytes each, so ≤ ~180 MB of frames
    max_queued: int = 1_000             # jobs queued at once (beyond: JobQueueFull)


def frame_count(spec: RelaxJob | MDJob) -> int:
    """The most frames a job can write: every write_every-th step, plus the first and the last."""
    return spec.steps // spec.write_every + 2


def check(model: SitePotential, atoms: Atoms, spec: RelaxJob | MDJob, limits: JobLimits,
          where: str = "structure") -> None:
    species = set(model.elements)
    which = "numbers"
    for k, symbol in enumerate(atoms.get_chemical_symbols()):
        if symbol not in species:
            raise JobInputError(f"{where}.{which}[{k}]: element {symbol} is not in this model (species: "
                                f"{', '.join(model.elements)})", f"{where}.{which}[{k}]")
    periodic = bool(np.all(atoms.pbc)) and abs(np.linalg.det(atoms.cell.array)) > 1e-9
    if isinstance(spec, RelaxJob) and spec.parameters.cell_filter and not periodic:
        raise JobInputError("parameters.cell_filter: a cell relaxation needs a cell periodic in all three "
                            "directions with a non-zero volume", "parameters.cell_filter")
    if isinstance(spec, MDJob) and spec.parameters.ensemble == "npt" and not periodic:
        raise JobInputError("parameters.ensemble: npt needs a cell periodic in all three directions with a "
                            "non-zero volume", "parameters.ensemble")
    if needs_committee(spec) and model.committee is None:
        field = "halt.max_energy_std" if spec.halt.max_energy_std is not None else "record"
        raise JobInputError(f"{field}: the energy spread needs a model with a committee; this one has none", field)
    if needs_gamma(spec) and model.active_set is None:
        field = "halt.max_gamma" if spec.halt.max_gamma is not None else "record"
        why = f" ({model.active_set_problem})" if model.active_set_problem else ""
        raise JobInputError(f"{field}: the extrapolation grade γ needs a model with an active set; this one has "
                            f"none{why}", field)
    n = len(atoms)
    if n * spec.steps > limits.max_atom_steps:
        field = "parameters.steps" if isinstance(spec, MDJob) else "parameters.max_steps"
        raise JobTooLarge(f"{field}: {spec.steps} steps of {n} atoms is {n * spec.steps} atom-steps; a job may "
                          f"take at most {limits.max_atom_steps} (--jobs-max-atom-steps)", field)
    frames = frame_count(spec)
    if n * frames > limits.max_frame_atoms:
        raise JobTooLarge(f"write_every: up to {frames} frames of {n} atoms (~{n * frames * BYTES_PER_ATOM / 1e6:.0f} "
                          f"MB) is {n * frames} atom-frames; a job may keep at most {limits.max_frame_atoms} "
                          "(--jobs-max-frame-atoms): write less often", "write_every")
