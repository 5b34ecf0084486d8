"""Turn a validated request into results by calling `model.evaluate` (runs in a worker thread),
within the request's limits: `check_document` counts structures and atoms in the decoded document
before pydantic builds anything per atom; `check_limits` repeats it on the validated request; the
work budget (neighbour pairs summed over the request, `--max-pairs`) is passed down to each
structure's neighbour search, which counts its pairs before allocating them (413 `too_large`).

`evaluate_request` looks at its `cancel` event before every structure and raises `Abandoned` once
it is set (the client went away, or the drain deadline passed: `lifecycle.py`); inside a structure
the evaluator looks at it every `CANCEL_BLOCK_ATOMS` atoms (`SitePotential.evaluate(cancel=...)`,
serial kernel), so a large structure stops at its next block of atoms too.

The results are read from the `Evaluation` as it defines them (`aceserver.evaluation`): the stress
only where `postprocess.has_stress` says it exists, the committee spreads `energy_std`,
`energies_std` and `forces_std` (population standard deviation, ddof 0), the extrapolation grade
`gamma` and `max_gamma`; nothing is recomputed here. `descriptors` come from `model.descriptors`
(one structure) or `Evaluation.descriptors` (a batch: `evaluate_many(descriptors=True)`, the same
rows), after `check_descriptors` has checked that atoms × descriptor columns, summed over the
request, stay within `max_descriptor_values` (413 before any structure is evaluated).
"""
from __future__ import annotations

import logging
import threading
from typing import Any

import numpy as np
from ase.data import chemical_symbols

from aceserver.evaluation import postprocess
from aceserver.errors import ACEInputError, BatchError, EvaluationCancelled, TooManyPairsError

from . import packed
from .error_replies import APIError
from .registry import without_paths
from .schema import (COMMITTEE_PROPERTIES, DEFAULT_PROPERTIES, GAMMA_PROPERTIES, CalculateRequest, PackedRequest,
                     Property, Structure)

log = logging.getLogger("aceserver.http")


class Abandoned(Exception):
    """The request was given up before this structure; no one waits for its results."""


def properties_for(request: CalculateRequest, has_committee: bool, has_active_set: bool = False,
                   name: str = "this model", problem: str | None = None) -> set[Property]:
    """The properties to compute; 422 for those the model cannot give (no committee, no active set:
    `problem` says why none is attached, where the model knows)."""
    if request.properties is None:
        props = set(DEFAULT_PROPERTIES)
        if has_committee:
            props.add(Property.committee)
        return props
    props = set(request.properties)
    if not has_committee and props & COMMITTEE_PROPERTIES:
        asked = ", ".join(f"`{p.value}`" for p in sorted(props & COMMITTEE_PROPERTIES, key=lambda p: p.value))
        raise APIError(422, "invalid_input", f"properties: model {name!r} has no committee; {asked} "
                       "need one (`committee`, `forces_committee`, `energies_std`, `forces_std`)", "properties")
    if not has_active_set and props & GAMMA_PROPERTIES:
        why = f" ({problem})" if problem else ""
        raise APIError(422, "no_active_set", f"properties: model {name!r} has no active set{why}, so `gamma` and "
                       "`max_gamma` are not available; build one with `aceserver activeset MODEL DATA.xyz` "
                       "(the model's training data, extended XYZ; it writes the sidecar <model stem>.activeset.npz "
                       "beside the model file) and reload the server", "properties")
    return props


def check_descriptors(model: Any, request: CalculateRequest | None, props: set[Property], limit: int,
                      atoms: int | None = None) -> None:
    """Descriptors cost atoms × L values (L: the model's largest descriptor size) in memory and in the
    reply: a request over `limit` of them, summed over its structures, is a 413 before any work.
    atoms: the request's atoms, where it is not a `CalculateRequest` (a packed batch)."""
    if Property.descriptors not in props:
        return
    sizes = getattr(model, "descriptor_sizes", None)
    if not sizes:
        raise APIError(422, "invalid_input", "properties: this model has no per-atom descriptors", "properties")
    width = max(sizes.values())
    if atoms is None:
        atoms = sum(len(s.positions) for s in request.structure_list())
    if atoms * width > limit:
        raise _too_large("properties", f"`descriptors` of {atoms} atoms × {width} columns = {atoms * width} "
                         f"values; a request may ask for at most {limit} (--max-descriptor-values)")


def _too_large(field: str, what: str) -> APIError:
    return APIError(413, "too_large", f"{field}: {what}", field)


STRUCTURE_KEYS = ("numbers", "symbols", "positions", "cell", "pbc")
REQUEST_KEYS = ("structure", "structures", "properties")


def _check_keys(obj: dict, known: tuple[str, ...], where: str) -> None:
    # unknown keys are refused by the schema one error each: a million of them would be a million errors
    if len(obj) > len(known):
        extra = next(k for k in obj if k not in known)
        raise APIError(422, "invalid_input", f"{where}: {len(obj)} fields; only {', '.join(known)} are allowed "
                       f"(unknown: {str(extra)[:80]!r})", where)


def check_document(doc: Any, max_atoms: int, max_structures: int, request_keys: tuple[str, ...] = REQUEST_KEYS,
                   structure_keys: tuple[str, ...] = STRUCTURE_KEYS) -> None:
    """The structure and atom limits on the decoded document, before schema validation (which
    builds a model per atom): list lengths only, so the check costs microseconds. The keys a body
    and a structure may have: a calculate request's unless told (the data route's add labels)."""
    if not isinstance(doc, dict):
        return                                  # the schema names the problem
    _check_keys(doc, request_keys, "body")
    structures = doc.get("structures")
    if isinstance(structures, list):
        if len(structures) > max_structures:
            raise _too_large("structures", f"{len(structures)} structures in one request (limit {max_structures})")
        items = [(f"structures[{i}]", s) for i, s in enumerate(structures)]
    else:
        items = [("structure", doc.get("structure"))]
    for where, s in items:
        if not isinstance(s, dict):
            continue
        _check_keys(s, structure_keys, where)
        for key in ("positions", "numbers", "symbols", "forces"):
            value = s.get(key)
            if isinstance(value, (list, tuple)) and len(value) > max_atoms:
                raise _too_large(f"{where}.{key}", f"{len(value)} atoms (limit {max_atoms} per structure)")


def check_limits(request: CalculateRequest, max_atoms: int, max_structures: int) -> None:
    """The same limits on the validated request (arrays sent as msgpack buffers are counted here)."""
    structures = request.structure_list()
    if len(structures) > max_structures:
        raise _too_large("structures", f"{len(structures)} structures in one request (limit {max_structures})")
    for i, s in enumerate(structures):
        if len(s.positions) > max_atoms:
            field = "structure.positions" if request.structure is not None else f"structures[{i}].positions"
            raise _too_large(field, f"{len(s.positions)} atoms (limit {max_atoms} per structure)")


class PairBudget:
    """Neighbour pairs a request may still use (`Settings.max_pairs`, summed over its structures)."""

    def __init__(self, limit: int):
        self.limit = self.remaining = int(limit)

    def spend(self, pairs: int) -> None:
        self.remaining -= pairs


def _known(model: Any) -> np.ndarray:
    """known[Z]: whether the model has parameters for atomic number Z."""
    species = set(model.elements)
    return np.array([sym in species for sym in chemical_symbols])


def _arrays(model: Any, s: Structure, prefix: str, known: np.ndarray | None = None):
    """(numbers, positions, cell, pbc) of a validated structure, after the element check that
    names the offending atom (422 unknown_element); known: `_known(model)`, if at hand."""
    numbers = np.asarray(s.atomic_numbers(), dtype=np.int64)
    known = _known(model) if known is None else known
    bad = np.flatnonzero(~known[numbers])
    if len(bad):
        k = int(bad[0])
        z = int(numbers[k])
        which = "numbers" if s.numbers is not None else "symbols"
        raise APIError(422, "unknown_element",
                       f"{prefix}.{which}[{k}]: element {chemical_symbols[z]} (Z={z}) is not in this model "
                       f"(species: {', '.join(model.elements)})", f"{prefix}.{which}[{k}]")
    positions = np.asarray(s.positions, dtype=np.float64).reshape(-1, 3)
    cell = np.asarray(s.cell, dtype=np.float64) if s.cell is not None else np.zeros((3, 3))
    pbc = np.asarray(s.pbc, dtype=bool)
    return numbers, positions, cell, pbc


def _as_api_error(ex: Exception, prefix: str, budget: PairBudget | None, used: int) -> Exception:
    """The reply to an evaluator error of one structure (`used`: pairs of the structures before it)."""
    if isinstance(ex, EvaluationCancelled):
        return Abandoned(f"stopped inside {prefix}")
    if isinstance(ex, TooManyPairsError) and budget is not None:
        spent = f" ({used} used by the structures before it)" if used else ""
        return APIError(413, "too_large", f"{prefix}: {ex.pairs} neighbour pairs within the cutoff; a request may "
                        f"use at most {budget.limit} (--max-pairs){spent}", prefix)
    if isinstance(ex, ACEInputError) and not isinstance(ex, TooManyPairsError):
        field = f"{prefix}.{ex.field}" if ex.field else prefix
        return APIError(422, "unknown_element" if type(ex).__name__ == "UnknownElementError" else "invalid_input",
                        f"{field}: {ex}", field)
    if isinstance(ex, (OverflowError, ZeroDivisionError, FloatingPointError)):
        # numerically extreme geometry that the evaluator did not name; still the user's input, not a 5xx
        log.warning("evaluator arithmetic error on %s: %r", prefix, ex)
        return APIError(422, "invalid_input", f"{prefix}: geometry too extreme to evaluate "
                        f"({type(ex).__name__}: {ex})", prefix)
    return ex


_UNSET = object()


def _reply(ev, props: set[Property], cell, pbc, committee: bool, stress: Any = _UNSET,
           descriptors: np.ndarray | None = None) -> dict:
    """The result document of one structure (stress: already computed, None where undefined)."""
    out: dict[str, Any] = {}
    if Property.energy in props:
        out["energy"] = float(ev.energy)
        out["free_energy"] = float(ev.energy)
    if Property.forces in props:
        out["forces"] = np.asarray(ev.forces)
    if Property.stress in props:
        # as ACECalculator: stress only for cells periodic in all three directions (else null)
        out["stress"] = ev.periodic_stress(cell, pbc) if stress is _UNSET else stress
    if Property.virial in props:
        out["virial"] = np.asarray(ev.virial)
    if Property.energies in props:
        out["energies"] = np.asarray(ev.energies)
    if committee and ev.energy_committee is not None:
        out["energy_committee"] = np.asarray(ev.energy_committee)
        out["energy_std"] = ev.energy_std
    if Property.forces_committee in props and ev.forces_committee is not None:
        out["forces_committee"] = np.asarray(ev.forces_committee)
    if props & {Property.forces_committee, Property.forces_std} and ev.forces_committee is not None:
        out["forces_std"] = ev.forces_std
    if Property.energies_std in props and ev.energies_committee is not None:
        out["energies_std"] = ev.energies_std
    if Property.gamma in props:
        out["gamma"] = np.asarray(ev.gamma)
    if props & GAMMA_PROPERTIES:
        out["max_gamma"] = ev.max_gamma
    if descriptors is not None:
        out["descriptors"] = descriptors
    return out


def evaluate_structure(model: Any, s: Structure, props: set[Property], prefix: str, threads: int | None,
                       budget: PairBudget | None = None, cancel: threading.Event | None = None) -> dict:
    numbers, positions, cell, pbc = _arrays(model, s, prefix)
    ev, descriptors = _evaluate_arrays(model, (numbers, positions, cell, pbc), props, prefix, threads, budget,
                                       cancel)
    committee = bool(props & {Property.committee, Property.forces_committee})
    return _reply(ev, props, cell, pbc, committee, descriptors=descriptors)


def _evaluate_arrays(model: Any, arrays: tuple, props: set[Property], prefix: str, threads: int | None,
                     budget: PairBudget | None, cancel: threading.Event | None):
    """(Evaluation, descriptors or None) of one structure's checked arrays; errors as replies."""
    numbers, positions, cell, pbc = arrays
    committee = bool(props & {Property.committee, Property.forces_committee})
    limit = {} if budget is None else {"max_pairs": budget.remaining}
    try:
        ev = model.evaluate(numbers, positions, cell, pbc, committee=committee,
                            committee_forces=bool(props & {Property.forces_committee, Property.forces_std}),
                            energies_committee=Property.energies_std in props,
                            gamma=bool(props & GAMMA_PROPERTIES), threads=threads, cancel=cancel, **limit)
        # the same structure again, so the same pairs: the budget was checked (and is spent) once
        descriptors = (model.descriptors(numbers, positions, cell, pbc, threads=threads, max_pairs=ev.pairs)
                       if Property.descriptors in props else None)
    except TooManyPairsError as ex:
        if budget is None:
            raise
        raise _as_api_error(ex, prefix, budget, budget.limit - budget.remaining) from None
    except (EvaluationCancelled, ACEInputError, OverflowError, ZeroDivisionError, FloatingPointError) as ex:
        raise _as_api_error(ex, prefix, budget, 0) from None
    if budget is not None:
        budget.spend(ev.pairs)
    return ev, descriptors


def evaluate_batch(model: Any, structures: list[Structure], props: set[Property], threads: int | None,
                   max_pairs: int, cancel: threading.Event | None = None) -> list[dict]:
    """`structures[i]` in one `model.evaluate_many` call: the same replies, and the same error
    document (the first failing structure's, with the budget the structures before it left) as
    evaluating them one by one with `evaluate_structure`."""
    inputs = []
    first_error = None
    known = _known(model)
    for i, s in enumerate(structures):
        try:
            inputs.append(_arrays(model, s, f"structures[{i}]", known))
        except APIError as ex:       # nothing after it matters: the reply is this error or an earlier one
            first_error = ex
            break
    committee = bool(props & {Property.committee, Property.forces_committee})
    results = _evaluate_many(lambda **options: model.evaluate_many(inputs, **options), props, threads, max_pairs,
                             cancel, lambda budget: [evaluate_structure(model, s, props, f"structures[{i}]", threads,
                                                                budget, cancel)
                                             for i, s in enumerate(structures)])
    if first_error is not None:
        raise first_error
    if isinstance(results[0], dict):        # the one-by-one replies
        return results
    stress = _stresses(results, inputs, props)
    rows = Property.descriptors in props
    return [_reply(ev, props, cell, pbc, committee, None if stress is None else stress[k],
                   ev.descriptors if rows else None)
            for k, (ev, (_, _, cell, pbc)) in enumerate(zip(results, inputs))]


def _stresses(results, inputs, props) -> list | None:
    if Property.stress not in props:
        return None
    return postprocess.stresses(np.array([ev.virial for ev in results]),
                                np.array([i[2] for i in inputs]), np.array([i[3] for i in inputs]))


def _evaluate_many(evaluate_many, props: set[Property], threads: int | None, max_pairs: int | None,
                   cancel: threading.Event | None, one_by_one) -> list:
    """evaluate_many(**options) (`model.evaluate_many` of the structures, or `model.evaluate_packed`),
    its errors as the reply of the first failing structure; an arithmetic error it cannot tie to a
    structure: one_by_one(budget)."""
    committee = bool(props & {Property.committee, Property.forces_committee})
    try:
        return evaluate_many(committee=committee,
                             committee_forces=bool(props & {Property.forces_committee, Property.forces_std}),
                             energies_committee=Property.energies_std in props, gamma=bool(props & GAMMA_PROPERTIES),
                             descriptors=Property.descriptors in props,
                             threads=threads, cancel=cancel, max_pairs=max_pairs)
    except EvaluationCancelled:
        raise Abandoned("stopped inside the batch") from None
    except BatchError as ex:
        k = min(ex.errors)
        used = sum(r.pairs for r in ex.results[:k])
        budget = None if max_pairs is None else PairBudget(max_pairs)
        error = ex.errors[k]
        if isinstance(error, TooManyPairsError) and budget is None:     # the evaluator's own limit
            raise _too_large(f"structures[{k}]", str(error)) from None
        raise _as_api_error(error, f"structures[{k}]", budget, used) from None
    except (OverflowError, ZeroDivisionError, FloatingPointError):
        # not tied to a structure by the evaluator: one by one, to name it
        return one_by_one(None if max_pairs is None else PairBudget(max_pairs))


def evaluate_packed(model: Any, request: PackedRequest, batch: packed.Packed, has_committee: bool,
                    threads: int | None = 1,
                    max_pairs: int | None = None, cancel: threading.Event | None = None, *,
                    name: str = "this model", max_descriptor_values: int = 4_000_000) -> dict:
    """The reply's `packed` map of a checked packed batch (`packed.py`): one `model.evaluate_packed`
    call (`evaluate_many` without a Python object per structure on the way in), the numbers of the
    same structures sent as `structures` (γ and the committee spreads within the rounding of their
    BLAS products: `evaluation.many_uncertainty`), and the same error document (the first failing
    structure's, by index); `max_descriptor_values`: `check_descriptors`."""
    props = properties_for(request, has_committee, getattr(model, "active_set", None) is not None, name,
                           without_paths(getattr(model, "active_set_problem", None) or "") or None)
    check_descriptors(model, None, props, max_descriptor_values, int(batch.offsets[-1]))
    if cancel is not None and cancel.is_set():
        raise Abandoned("stopped before the first structure")
    unknown = packed.first_unknown_element(batch, _known(model), model.elements)
    stop = len(batch) if unknown is None else unknown[0]
    a = int(batch.offsets[stop])

    def one_by_one(budget):
        return [_evaluate_arrays(model, batch.structure(k), props, f"structures[{k}]", threads, budget, cancel)
                for k in range(stop)]

    def evaluate_many(**options):
        return model.evaluate_packed(batch.counts[:stop], batch.numbers[:a], batch.positions[:a],
                                     batch.cells[:stop], batch.pbc[:stop], **options)

    results = _evaluate_many(evaluate_many, props, threads, max_pairs, cancel, one_by_one)
    if unknown is not None:
        raise unknown[1]
    if results and isinstance(results[0], tuple):     # one by one: (Evaluation, descriptors)
        for ev, rows in results:
            ev.descriptors = rows
        results = [ev for ev, _ in results]
    committee = bool(props & {Property.committee, Property.forces_committee})
    stress = None
    if Property.stress in props:
        stress = postprocess.stresses(np.array([ev.virial for ev in results]), batch.cells, batch.pbc)
    return packed.packed_reply(batch, results, stress, props, committee,
                               bool(props & {Property.forces_committee, Property.forces_std}))


def evaluate_request(model: Any, request: CalculateRequest, has_committee: bool, threads: int | None = 1,
                     max_pairs: int | None = None, cancel: threading.Event | None = None, *,
                     name: str = "this model", max_descriptor_values: int = 4_000_000) -> list[dict]:
    """Results of every structure; `threads` goes to the evaluator (1: serial kernel);
    `max_pairs` bounds the neighbour pairs summed over the request (None: only the evaluator's own
    per-structure limit); once `cancel` is set, `Abandoned` is raised (before the next structure,
    or the next chunk of a batch). A `structures` list under a pair budget is evaluated in one
    `evaluate_many` call (the per-structure limit of a request without a budget stays per structure),
    γ, committee spreads and descriptors included. `name` (the served model's) is quoted in errors;
    `max_descriptor_values`: `check_descriptors`."""
    props = properties_for(request, has_committee, getattr(model, "active_set", None) is not None, name,
                           without_paths(getattr(model, "active_set_problem", None) or "") or None)
    check_descriptors(model, request, props, max_descriptor_values)
    if cancel is not None and cancel.is_set():
        raise Abandoned("stopped before the first structure")
    if request.structure is None and len(request.structures) > 1 and max_pairs is not None:
        return evaluate_batch(model, request.structures, props, threads, max_pairs, cancel)
    budget = None if max_pairs is None else PairBudget(max_pairs)
    named = ([("structure", request.structure)] if request.structure is not None else
             [(f"structures[{i}]", s) for i, s in enumerate(request.structures)])
    results = []
    for prefix, s in named:
        if cancel is not None and cancel.is_set():
            raise Abandoned(f"stopped before {prefix}")
        results.append(evaluate_structure(model, s, props, prefix, threads, budget, cancel))
    return results
