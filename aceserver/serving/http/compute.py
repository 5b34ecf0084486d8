"""Turn a validated request into results by calling `model.evaluate` (runs in a worker thread).

`evaluate_request` looks at its `cancel` event before every structure and raises `Abandoned` once
it is set (the client went away, or the drain deadline passed: `lifecycle.py`). One structure is
one call of the compiled site kernel, which cannot be interrupted from Python; the request limits
bound what that call costs.

The results are read from the `Evaluation` as it defines them (`aceserver.evaluation`): the stress
only where `postprocess.has_stress` says it exists, the committee spread as `energy_std` and
`forces_std` (population standard deviation, ddof 0); nothing is recomputed here.
"""
from __future__ import annotations

import logging
import threading
from typing import Any

import numpy as np
from ase.data import chemical_symbols

from aceserver.errors import ACEInputError

from .error_replies import APIError
from .schema import DEFAULT_PROPERTIES, CalculateRequest, Property, Structure

log = logging.getLogger("aceserver.http")


class Abandoned(Exception):
    """The request was given up before this structure; no one waits for its results."""


def properties_for(request: CalculateRequest, has_committee: bool) -> set[Property]:
    if request.properties is None:
        props = set(DEFAULT_PROPERTIES)
        if has_committee:
            props.add(Property.committee)
        return props
    props = set(request.properties)
    if not has_committee and props & {Property.committee, Property.forces_committee}:
        raise APIError(422, "invalid_input", "properties: this model has no committee; "
                       "`committee` and `forces_committee` are not available", "properties")
    return props


def check_limits(request: CalculateRequest, max_atoms: int, max_structures: int) -> None:
    structures = request.structure_list()
    if len(structures) > max_structures:
        raise APIError(413, "too_large", f"structures: {len(structures)} structures in one request "
                       f"(limit {max_structures})", "structures")
    for i, s in enumerate(structures):
        if len(s.positions) > max_atoms:
            field = "structure.positions" if request.structure is not None else f"structures[{i}].positions"
            raise APIError(413, "too_large", f"{field}: {len(s.positions)} atoms (limit {max_atoms} per structure)",
                           field)


def evaluate_structure(model: Any, s: Structure, props: set[Property], prefix: str, threads: int | None) -> dict:
    numbers = np.asarray(s.atomic_numbers(), dtype=np.int64)
    species = set(model.elements)
    for k, z in enumerate(numbers):
        if chemical_symbols[z] not in species:
            which = "numbers" if s.numbers is not None else "symbols"
            raise APIError(422, "unknown_element",
                           f"{prefix}.{which}[{k}]: element {chemical_symbols[z]} (Z={z}) is not in this model "
                           f"(species: {', '.join(model.elements)})", f"{prefix}.{which}[{k}]")
    positions = np.asarray(s.positions, dtype=np.float64).reshape(-1, 3)
    cell = np.asarray(s.cell, dtype=np.float64) if s.cell is not None else np.zeros((3, 3))
    pbc = np.asarray(s.pbc, dtype=bool)
    committee = bool(props & {Property.committee, Property.forces_committee})
    try:
        ev = model.evaluate(numbers, positions, cell, pbc, committee=committee,
                            committee_forces=Property.forces_committee in props, threads=threads)
    except ACEInputError as ex:
        field = f"{prefix}.{ex.field}" if ex.field else prefix
        raise APIError(422, "unknown_element" if type(ex).__name__ == "UnknownElementError" else "invalid_input",
                       f"{field}: {ex}", field) from None
    except (OverflowError, ZeroDivisionError, FloatingPointError) as ex:
        # numerically extreme geometry that the evaluator did not name; still the user's input, not a 5xx
        log.warning("evaluator arithmetic error on %s: %r", prefix, ex)
        raise APIError(422, "invalid_input", f"{prefix}: geometry too extreme to evaluate "
                       f"({type(ex).__name__}: {ex})", prefix) from None
    out: dict[str, Any] = {}
    if Property.energy in props:
        out["energy"] = float(ev.energy)
        out["free_energy"] = float(ev.energy)
    if Property.forces in props:
        out["forces"] = np.asarray(ev.forces)
    if Property.stress in props:
        # as ACECalculator: stress only for cells periodic in all three directions (else null)
        out["stress"] = ev.periodic_stress(cell, pbc)
    if Property.virial in props:
        out["virial"] = np.asarray(ev.virial)
    if Property.energies in props:
        out["energies"] = np.asarray(ev.energies)
    if committee and ev.energy_committee is not None:
        out["energy_committee"] = np.asarray(ev.energy_committee)
        out["energy_std"] = ev.energy_std
    if Property.forces_committee in props and ev.forces_committee is not None:
        out["forces_committee"] = np.asarray(ev.forces_committee)
        out["forces_std"] = ev.forces_std
    return out


def evaluate_request(model: Any, request: CalculateRequest, has_committee: bool, threads: int | None = 1,
                     cancel: threading.Event | None = None) -> list[dict]:
    """Results of every structure; `threads` goes to `model.evaluate` (1: serial kernel); once
    `cancel` is set, `Abandoned` is raised before the next structure."""
    props = properties_for(request, has_committee)
    named = ([("structure", request.structure)] if request.structure is not None else
             [(f"structures[{i}]", s) for i, s in enumerate(request.structures)])
    results = []
    for prefix, s in named:
        if cancel is not None and cancel.is_set():
            raise Abandoned(f"stopped before {prefix}")
        results.append(evaluate_structure(model, s, props, prefix, threads))
    return results
