"""What a job may ask for, checked before it is queued: the model can evaluate the structure and
the halt conditions, the ensemble or cell filter has the cell it needs, and the work and the disk
it will take are bounded (atoms × steps, atoms × frames). A relax_many job (`check_many`) is
bounded as a whole (structures, atoms, atoms × steps, atoms × frames, BFGS Hessians; its steps' pairs by
`max_batch_pairs`), and a structure that cannot run is reported by its index, not refused.

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
from .spec import MDJob, RelaxJob, RelaxManyJob


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
    max_batch_structures: int = 10_000  # structures of one relax_many job
    max_batch_atoms: int = 200_000      # atoms of one relax_many job, all structures together
    max_batch_pairs: int = 20_000_000   # neighbour pairs of one relax_many step, summed (~50 bytes each: ~1 GB)
    max_hessian_bytes: int = 1 << 31    # BFGS's dense Hessians of one relax_many job, (3N [+9])² float64 each


def frame_count(spec: RelaxJob | MDJob | RelaxManyJob) -> int:
    """The most frames a job can write: every write_every-th step, plus the first and the last."""
    return spec.steps // spec.write_every + 2


def _check_elements(model: SitePotential, atoms: Atoms, where: str) -> None:
    species = set(model.elements)
    for k, symbol in enumerate(atoms.get_chemical_symbols()):
        if symbol not in species:
            raise JobInputError(f"{where}.numbers[{k}]: element {symbol} is not in this model (species: "
                                f"{', '.join(model.elements)})", f"{where}.numbers[{k}]")


def _periodic(atoms: Atoms) -> bool:
    return bool(np.all(atoms.pbc)) and abs(np.linalg.det(atoms.cell.array)) > 1e-9


def check(model: SitePotential, atoms: Atoms, spec: RelaxJob | MDJob, limits: JobLimits,
          where: str = "structure") -> None:
    _check_elements(model, atoms, where)
    periodic = _periodic(atoms)
    if isinstance(spec, RelaxJob) and spec.parameters.cell_filter and not periodic:
        raise JobInputError("parameters.cell_filter: a cell relaxation needs a cell periodic in all three "
                            "directions with a non-zero volume", "parameters.cell_filter")
    if isinstance(spec, MDJob) and spec.parameters.ensemble == "npt" and not periodic:
        raise JobInputError("parameters.ensemble: npt needs a cell periodic in all three directions with a "
                            "non-zero volume", "parameters.ensemble")
    _check_model(model, spec)
    _check_work(len(atoms), spec, limits)


def _check_model(model: SitePotential, spec: RelaxJob | MDJob | RelaxManyJob) -> None:
    """The model has what the halt conditions and `record` need."""
    if needs_committee(spec) and model.committee is None:
        field = "halt.max_energy_std" if spec.halt.max_energy_std is not None else "record"
        raise JobInputError(f"{field}: the energy spread needs a model with a committee; this one has none", field)
    if needs_gamma(spec) and model.active_set is None:
        field = "halt.max_gamma" if spec.halt.max_gamma is not None else "record"
        why = f" ({model.active_set_problem})" if model.active_set_problem else ""
        raise JobInputError(f"{field}: the extrapolation grade γ needs a model with an active set; this one has "
                            f"none{why}", field)


def _check_work(n: int, spec: RelaxJob | MDJob | RelaxManyJob, limits: JobLimits) -> None:
    """Atoms × steps and atoms × frames (n: the atoms of the job, all structures together)."""
    if n * spec.steps > limits.max_atom_steps:
        field = "parameters.steps" if isinstance(spec, MDJob) else "parameters.max_steps"
        raise JobTooLarge(f"{field}: {spec.steps} steps of {n} atoms is {n * spec.steps} atom-steps; a job may "
                          f"take at most {limits.max_atom_steps} (--jobs-max-atom-steps)", field)
    frames = frame_count(spec)
    if n * frames > limits.max_frame_atoms:
        raise JobTooLarge(f"write_every: up to {frames} frames of {n} atoms (~{n * frames * BYTES_PER_ATOM / 1e6:.0f} "
                          f"MB) is {n * frames} atom-frames; a job may keep at most {limits.max_frame_atoms} "
                          "(--jobs-max-frame-atoms): write less often", "write_every")


def check_many(model: SitePotential, structures: list[Atoms], spec: RelaxManyJob, limits: JobLimits,
               where: str = "structures") -> dict[int, dict]:
    """What a relax_many job is checked for before it is queued. Raises `JobTooLarge` for the job's
    size (structure count, total atoms, atoms × max_steps, atoms × frames) and `JobInputError` for
    what the model lacks; returns the structures that cannot run (index -> error document naming
    `structures[i]...`): the others run without them."""
    if len(structures) > limits.max_batch_structures:
        raise JobTooLarge(f"{where}: {len(structures)} structures; a relax_many job may hold at most "
                          f"{limits.max_batch_structures}", where)
    sizes = [len(a) for a in structures]
    total = sum(sizes)
    if total > limits.max_batch_atoms:
        raise JobTooLarge(f"{where}: {total} atoms in all; a relax_many job may hold at most {limits.max_batch_atoms}",
                          where)
    if spec.parameters.optimizer == "BFGS":     # ASE's BFGS keeps a dense (3N, 3N) Hessian per structure
        dims = [3 * n + (9 if spec.parameters.cell_filter else 0) for n in sizes]
        hessians = 8 * sum(d * d for d in dims)
        if hessians > limits.max_hessian_bytes:
            big = int(np.argmax(dims))
            raise JobTooLarge(f"parameters.optimizer: BFGS would keep {hessians / 1e6:.0f} MB of Hessians (the largest "
                              f"{dims[big]}² for structures[{big}]); a relax_many job may keep at most "
                              f"{limits.max_hessian_bytes / 1e6:.0f} MB: use FIRE or LBFGS", "parameters.optimizer")
    _check_model(model, spec)
    _check_work(total, spec, limits)
    bad = {}
    for i, atoms in enumerate(structures):
        at = f"{where}[{i}]"
        try:
            if not sizes[i]:
                raise JobInputError(f"{at}.numbers: a structure to relax needs at least one atom", f"{at}.numbers")
            _check_elements(model, atoms, at)
            if spec.parameters.cell_filter and not _periodic(atoms):
                raise JobInputError(f"{at}.cell: a cell relaxation (parameters.cell_filter) needs a cell periodic "
                                    "in all three directions with a non-zero volume", f"{at}.cell")
        except JobInputError as ex:
            bad[i] = {"kind": "invalid_input", "message": str(ex), "field": ex.field}
    if len(bad) == len(structures):
        first = bad[0]
        raise JobInputError(f"no structure of {where} can run; the first: {first['message']}", first["field"])
    return bad
