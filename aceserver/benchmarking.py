"""Structures and timings for benchmarks (`aceserver bench`, benchmarks/, the .yace export check).

Standard structures are rattled periodic cells named by lattice and size: diamond64, fcc108,
diamond1000 (positions Å). Timings are medians of wall-clock seconds per call.
"""
from __future__ import annotations

import platform
import time

import numba
import numpy as np
from ase.build import bulk
from ase.data import atomic_numbers, reference_states

from .basis.bondlengths import bond_length

STRUCTURES = ("diamond64", "fcc108", "diamond1000")


def lattice_constant(symbol: str, lattice: str) -> float:
    """ASE's reference lattice constant where the element has that lattice, else one from the
    bond length (nearest-neighbour distance = bond length)."""
    ref = reference_states[atomic_numbers[symbol]]
    if ref and ref.get("symmetry") == lattice and "a" in ref:
        return float(ref["a"])
    nn = bond_length(symbol)
    return 4 * nn / np.sqrt(3) if lattice == "diamond" else np.sqrt(2) * nn


def build_structure(name: str, elements, seed: int = 0):
    """Rattled (0.1 Å) periodic cells; species drawn at random for multi-element models."""
    lattice, reps = {"diamond64": ("diamond", 2), "fcc108": ("fcc", 3),
                     "diamond1000": ("diamond", 5)}[name]
    at = bulk(elements[0], lattice, a=lattice_constant(elements[0], lattice), cubic=True)
    at = at * (reps, reps, reps)
    rng = np.random.default_rng(seed)
    if len(elements) > 1:
        at.set_chemical_symbols(rng.choice(elements, size=len(at)))
    at.rattle(0.1, seed=seed)
    return at


def time_calls(fn, calls: int) -> float:
    """Median seconds per call over `calls` calls (after one warm-up)."""
    fn()
    times = []
    for _ in range(calls):
        t = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t)
    return float(np.median(times))


def bench(model, structures=STRUCTURES, calls: int = 20) -> dict:
    """µs per atom of energy+forces+virial for `model` on each named structure, the first call's
    seconds (compile or cache load) and the machine; calls >= 20 timed calls per structure."""
    threads = numba.get_num_threads()
    results, first_call = [], None
    for name in structures:
        at = build_structure(name, model.elements)
        call = lambda: model.evaluate(at.numbers, at.positions, at.cell[:], at.pbc)  # noqa: E731
        if first_call is None:
            t = time.perf_counter()
            call()
            first_call = time.perf_counter() - t
        sec = time_calls(call, max(20, calls))
        first, _, _ = model._neighbours(at.numbers, at.positions, at.cell[:], at.pbc)[1:]
        results.append({"name": name, "n_atoms": len(at), "us_per_atom": sec / len(at) * 1e6,
                        "median_ms": sec * 1e3,
                        "neighbours_per_atom": float((first[-1]) / len(at))})
    out = {"model": {"elements": model.elements, "length_basis": model.length_basis,
                     "rcut": model.rcut, "sha256": model.sha256},
           "threads": threads, "first_call_seconds": first_call,
           "us_per_atom": results[0]["us_per_atom"], "n_atoms": results[0]["n_atoms"],
           "structures": results, "machine": f"{platform.machine()} {platform.processor()}".strip()}
    return out
