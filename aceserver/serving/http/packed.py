"""The packed (columnar) form of a batch: many structures as a few arrays, msgpack only.

Request (`Content-Type` and `Accept: application/msgpack`; arrays as msgpack array maps
``{"dtype", "shape", "data"}`` whose ``data`` is the raw little-endian C-order buffer)::

    {"packed": {"counts":    (S,)       <i8 or <i4   atoms of each structure, in order (each >= 1)
                "numbers":   (N,)       <i8 or <i4   atomic numbers, N = sum(counts)
                "positions": (N, 3)     <f8          Å
                "cells":     (S, 3, 3)  <f8          Å, rows a, b, c (optional: zeros, clusters)
                "pbc":       (S, 3)     |b1          (optional: all False)},
     "properties": [...]}       # optional, as for `structures`: energy, forces, stress, virial,
                                # energies, committee, forces_committee, forces_std, energies_std,
                                # gamma, max_gamma, descriptors

Reply ``{"model", "sha256", "packed": {...}}`` with the arrays of what was asked for (the default:
energy, forces, stress, virial, energies, and the committee where the model has one):
``counts`` (S,) <i8; ``energy`` (S,) eV; ``forces`` (N, 3) eV/Å; ``stress`` (S, 6) eV/Å³ in ASE's
Voigt order xx yy zz yz xz xy, NaN rows where a structure has none (not periodic in all three
directions); ``virial`` (S, 3, 3) eV (W = -V·σ); ``energies`` (N,) eV; ``energy_committee`` (S, K)
eV and ``energy_std`` (S,) eV; ``forces_committee`` (K, N, 3) eV/Å and ``forces_std`` (N, 3) eV/Å;
``energies_std`` (N,) eV; ``gamma`` (N,) and ``max_gamma`` (S,) (dimensionless); ``descriptors``
(N, L) (L: the model's largest descriptor size; ace1 dimensionless, pacemaker eV).
The numbers are those of the same structures sent as `structures`, bit for bit (γ and
``energies_std`` within the rounding of their BLAS products: `evaluation.many_uncertainty`).

Checks, before anything is built per structure (nothing is allocated per atom but the arrays
themselves, which the body already holds): the fields, dtypes and shapes (422 ``packed.<field>``),
at most `max_structures` structures and `max_atoms` atoms in each (413), counts that add up to the
rows of numbers and positions; then, vectorised, the schema's value checks (atomic numbers 1-118,
finite coordinates within ±1e6 Å) and the model's elements, reported as the `structures` form
reports them: by index (``structures[k].positions[i][j]``), the first failing structure first.
"""
from __future__ import annotations

from typing import Any

import numpy as np
from ase.data import chemical_symbols

from .error_replies import APIError
from .schema import MAX_COORDINATE, Property

FIELDS = ("counts", "numbers", "positions", "cells", "pbc")
REQUIRED = ("counts", "numbers", "positions")
INTEGER_DTYPES = (np.dtype("<i8"), np.dtype("<i4"))
MAX_DETAILS = 20


def _invalid(field: str, problem: str, status: int = 422, kind: str = "invalid_input") -> APIError:
    return APIError(status, kind, f"{field}: {problem}", field)


class Packed:
    """A checked packed batch: counts (S,), offsets (S+1,), numbers (N,) int64, positions (N, 3),
    cells (S, 3, 3), pbc (S, 3); `structure(k)` is structure k's arrays (views)."""

    def __init__(self, counts, numbers, positions, cells, pbc):
        self.counts, self.numbers, self.positions, self.cells, self.pbc = counts, numbers, positions, cells, pbc
        self.offsets = np.zeros(len(counts) + 1, dtype=np.int64)
        np.cumsum(counts, out=self.offsets[1:])

    def __len__(self) -> int:
        return len(self.counts)

    def structure(self, k: int):
        a, b = self.offsets[k], self.offsets[k + 1]
        return self.numbers[a:b], self.positions[a:b], self.cells[k], self.pbc[k]

    def owner(self, atom: int) -> int:
        return int(np.searchsorted(self.offsets, atom, side="right") - 1)


def _array(packed: dict, name: str, dtypes, shape: tuple) -> np.ndarray:
    """packed[name] as sent (an array map: a numpy array here), its dtype and shape checked
    (None in `shape`: any length)."""
    a = packed.get(name)
    if not isinstance(a, np.ndarray):
        raise _invalid(f"packed.{name}", "must be a msgpack array map {dtype, shape, data} (packed batches "
                       "carry raw arrays, not lists)")
    if a.dtype not in dtypes:
        raise _invalid(f"packed.{name}", f"dtype must be {' or '.join(d.str for d in dtypes)}, got {a.dtype.str}")
    if a.ndim != len(shape) or any(want is not None and got != want for got, want in zip(a.shape, shape)):
        want = "(" + ", ".join("n" if d is None else str(d) for d in shape) + ("," if len(shape) == 1 else "") + ")"
        raise _invalid(f"packed.{name}", f"shape must be {want}, got {tuple(a.shape)}")
    return a


def read_packed(packed: Any, max_atoms: int, max_structures: int) -> Packed:
    """The checked batch of a request's `packed` map (module docstring), or the APIError."""
    if not isinstance(packed, dict):
        raise _invalid("packed", "must be a map of the arrays " + ", ".join(FIELDS))
    unknown = [k for k in packed if k not in FIELDS]
    if unknown:
        raise _invalid("packed", f"unknown field {str(unknown[0])[:80]!r}; the fields are {', '.join(FIELDS)}")
    missing = [k for k in REQUIRED if k not in packed]
    if missing:
        raise _invalid(f"packed.{missing[0]}", "missing")
    counts = _array(packed, "counts", INTEGER_DTYPES, (None,)).astype(np.int64)
    S = len(counts)
    if S == 0:
        raise _invalid("packed.counts", "no structures (at least 1)")
    if S > max_structures:
        raise _invalid("packed.counts", f"{S} structures in one request (limit {max_structures})", 413, "too_large")
    if counts.min() < 1:
        k = int(np.flatnonzero(counts < 1)[0])
        raise _invalid(f"structures[{k}].positions", f"{int(counts[k])} atoms; a structure has at least 1")
    if counts.max() > max_atoms:
        k = int(np.flatnonzero(counts > max_atoms)[0])     # the first, as `structures` reports it
        raise _invalid(f"structures[{k}].positions", f"{int(counts[k])} atoms (limit {max_atoms} per structure)",
                       413, "too_large")
    numbers = _array(packed, "numbers", INTEGER_DTYPES, (None,))
    positions = _array(packed, "positions", (np.dtype("<f8"),), (None, 3))
    n = int(counts.sum())                      # at most max_structures × max_atoms: no overflow
    if len(numbers) != n or len(positions) != n:
        raise _invalid("packed.counts", f"the counts add up to {n} atoms, but numbers has {len(numbers)} and "
                       f"positions {len(positions)} rows")
    cells = (_array(packed, "cells", (np.dtype("<f8"),), (S, 3, 3)) if "cells" in packed
             else np.zeros((S, 3, 3)))
    pbc = _array(packed, "pbc", (np.dtype("?"),), (S, 3)) if "pbc" in packed else np.zeros((S, 3), dtype=bool)
    # own, writable copies (a few bytes per atom): the decoded arrays are read-only views of the
    # body, which numba would compile its kernels for once more
    batch = Packed(counts, numbers.astype(np.int64), positions.copy(), cells.copy(), pbc.copy())
    _check_values(batch)
    return batch


def _check_values(batch: Packed) -> None:
    """The schema's per-value checks, vectorised; errors as the `structures` form names them."""
    problems = []                               # (structure, field, message)
    bad = np.flatnonzero((batch.numbers < 1) | (batch.numbers > 118))
    for atom in bad[:MAX_DETAILS].tolist():
        k = batch.owner(atom)
        problems.append((k, f"structures[{k}].numbers[{atom - batch.offsets[k]}]",
                         f"atomic number {int(batch.numbers[atom])}: must be 1-118"))
    for name, values, per in (("positions", batch.positions.reshape(-1, 3), None),
                              ("cell", batch.cells.reshape(-1, 3), 3)):
        bad = np.flatnonzero(~(np.abs(values) <= MAX_COORDINATE).all(axis=1))    # NaN compares false
        for row in bad[:MAX_DETAILS].tolist():
            k, i = (batch.owner(row), row - batch.offsets[batch.owner(row)]) if per is None else divmod(row, per)
            j = int(np.flatnonzero(~(np.abs(values[row]) <= MAX_COORDINATE))[0])
            v = float(values[row, j])
            what = "NaN or inf" if not np.isfinite(v) else f"{v:g} Å, beyond ±{MAX_COORDINATE:g} Å"
            problems.append((k, f"structures[{k}].{name}[{i}][{j}]", f"{what} (finite values within "
                             f"±{MAX_COORDINATE:g} Å)"))
    if problems:
        problems.sort(key=lambda p: p[0])
        details = [{"field": f, "message": m} for _, f, m in problems[:MAX_DETAILS]]
        first = details[0]
        message = f"{first['field']}: {first['message']}"
        if len(problems) > 1:
            message += f" (and {len(problems) - 1} more problem{'s' if len(problems) > 2 else ''})"
        raise APIError(422, "invalid_input", message, first["field"], details)


def first_unknown_element(batch: Packed, known: np.ndarray, species) -> tuple[int, APIError] | None:
    """(k, the 422 unknown_element of structure k) for the first structure with an element the
    model lacks (the error `structures` requests get), or None. known[Z]: the model has Z."""
    bad = np.flatnonzero(~known[batch.numbers])
    if not len(bad):
        return None
    atom = int(bad[0])
    k = batch.owner(atom)
    z = int(batch.numbers[atom])
    field = f"structures[{k}].numbers[{atom - batch.offsets[k]}]"
    return k, APIError(422, "unknown_element", f"{field}: element {chemical_symbols[z]} (Z={z}) is not in this "
                       f"model (species: {', '.join(species)})", field)


# The packed form for the OpenAPI document (`openapi_components`): field -> (dtypes, shape, unit and meaning).
REQUEST_ARRAYS = {
    "counts": (("<i8", "<i4"), "(S,)", "atoms of each structure, in order (each >= 1)"),
    "numbers": (("<i8", "<i4"), "(N,), N = sum(counts)", "atomic numbers, structure after structure"),
    "positions": (("<f8",), "(N, 3)", "Å"),
    "cells": (("<f8",), "(S, 3, 3)", "Å, rows a, b, c (optional: zeros, clusters)"),
    "pbc": (("|b1",), "(S, 3)", "periodic along a, b, c (optional: all false)"),
}
REPLY_ARRAYS = {
    "counts": (("<i8",), "(S,)", "atoms of each structure, as sent"),
    "energy": (("<f8",), "(S,)", "eV, total energy (includes the one-body E0 terms)"),
    "forces": (("<f8",), "(N, 3)", "eV/Å"),
    "stress": (("<f8",), "(S, 6)", "eV/Å³, ASE Voigt order xx yy zz yz xz xy; NaN rows where a structure has "
               "none (not periodic in all three directions)"),
    "virial": (("<f8",), "(S, 3, 3)", "eV, W = -V·σ"),
    "energies": (("<f8",), "(N,)", "eV, per-atom site energies"),
    "energy_committee": (("<f8",), "(S, K)", "eV, the energy of every committee member"),
    "energy_std": (("<f8",), "(S,)", "eV, committee spread of the energy (population std)"),
    "forces_committee": (("<f8",), "(K, N, 3)", "eV/Å, the forces of every committee member"),
    "forces_std": (("<f8",), "(N, 3)", "eV/Å, committee spread of the forces"),
    "energies_std": (("<f8",), "(N,)", "eV, committee spread of each site energy"),
    "gamma": (("<f8",), "(N,)", "dimensionless extrapolation grade γ per atom (models with an active set)"),
    "max_gamma": (("<f8",), "(S,)", "dimensionless, the largest γ of each structure"),
    "descriptors": (("<f8",), "(N, L)", "per-atom descriptor rows, L the model's largest descriptor size "
                    "(ace1: dimensionless basis values; pacemaker: eV)"),
}


def _array_schema(dtypes, shape: str, meaning: str) -> dict:
    return {"$ref": "#/components/schemas/MsgpackArray",
            "description": f"dtype {' or '.join(dtypes)}, shape {shape}: {meaning}.",
            "x-dtype": list(dtypes), "x-shape": shape}


def openapi_components() -> dict:
    """OpenAPI schemas of the packed batch (the calculate route reads its body itself, so FastAPI
    cannot derive them): MsgpackArray, PackedStructures, PackedRequest, PackedResults,
    PackedResponse."""
    properties = {"type": "array", "items": {"$ref": "#/components/schemas/Property"},
                  "description": "Outputs to return, as for `structures` (default: energy, forces, stress, virial, "
                  "energies, and the committee where the model has one)."}
    return {
        "MsgpackArray": {
            "type": "object", "title": "MsgpackArray", "required": ["dtype", "shape", "data"],
            "description": "A numpy array as a msgpack map: its raw little-endian C-order bytes.",
            "properties": {"dtype": {"type": "string", "description": "numpy dtype string, e.g. <f8, <i8, |b1"},
                           "shape": {"type": "array", "items": {"type": "integer", "minimum": 0}},
                           # msgpack bin, which OpenAPI has no type for (its `format: binary` is a file)
                           "data": {"description": "msgpack bin: prod(shape) × itemsize bytes"}}},
        "PackedStructures": {
            "type": "object", "title": "PackedStructures", "required": list(REQUIRED), "additionalProperties": False,
            "description": "Many structures as a few arrays: S structures, N atoms in all.",
            "properties": {k: _array_schema(*v) for k, v in REQUEST_ARRAYS.items()}},
        "PackedRequest": {
            "type": "object", "title": "PackedRequest", "required": ["packed"], "additionalProperties": False,
            "description": "A packed batch (msgpack only: Content-Type and Accept application/msgpack); the "
                           "numbers are those of the same structures sent as `structures`.",
            "properties": {"packed": {"$ref": "#/components/schemas/PackedStructures"}, "properties": properties}},
        "PackedResults": {
            "type": "object", "title": "PackedResults", "required": ["counts"], "additionalProperties": False,
            "description": "One array per property asked for, over all structures.",
            "properties": {k: _array_schema(*v) for k, v in REPLY_ARRAYS.items()}},
        "PackedResponse": {
            "type": "object", "title": "PackedResponse", "required": ["model", "sha256", "packed"],
            "properties": {"model": {"type": "string", "description": "Name of the model that evaluated them."},
                           "sha256": {"type": "string", "description": "sha256 of the model file content."},
                           "packed": {"$ref": "#/components/schemas/PackedResults"}}},
    }


def _ints(a) -> dict:
    a = np.ascontiguousarray(a, dtype="<i8")
    return {"dtype": "<i8", "shape": list(a.shape), "data": a.tobytes()}


def packed_reply(batch: Packed, results: list, stress: list | None, props: set, committee: bool,
                 committee_forces: bool) -> dict:
    """The reply's `packed` map (module docstring) from one `Evaluation` per structure; `stress`:
    `postprocess.stresses` of the batch (None where undefined), when asked for."""
    out: dict[str, Any] = {"counts": _ints(batch.counts)}
    if Property.energy in props:
        out["energy"] = np.array([ev.energy for ev in results], dtype=np.float64)
    if Property.forces in props:
        out["forces"] = np.concatenate([ev.forces for ev in results]).reshape(-1, 3)
    if Property.stress in props:
        s = np.full((len(results), 6), np.nan)
        for k, row in enumerate(stress):
            if row is not None:
                s[k] = row
        out["stress"] = s
    if Property.virial in props:
        out["virial"] = np.stack([ev.virial for ev in results]).reshape(-1, 3, 3)
    if Property.energies in props:
        out["energies"] = np.concatenate([ev.energies for ev in results])
    if committee and results and results[0].energy_committee is not None:
        out["energy_committee"] = np.stack([ev.energy_committee for ev in results])
        out["energy_std"] = np.array([ev.energy_std for ev in results], dtype=np.float64)
    if committee_forces and results and results[0].forces_committee is not None:
        fc = np.concatenate([ev.forces_committee for ev in results], axis=1)
        if Property.forces_committee in props:
            out["forces_committee"] = fc
        out["forces_std"] = np.concatenate([ev.forces_std for ev in results])
    if Property.energies_std in props and results and results[0].energies_committee is not None:
        out["energies_std"] = np.concatenate([ev.energies_std for ev in results])
    if Property.gamma in props:
        out["gamma"] = np.concatenate([ev.gamma for ev in results])
    if props & {Property.gamma, Property.max_gamma}:
        out["max_gamma"] = np.array([ev.max_gamma for ev in results], dtype=np.float64)
    if Property.descriptors in props:
        out["descriptors"] = np.concatenate([ev.descriptors for ev in results])
    return out
