"""`aceserver bench`: time energy + forces + virial on standard structures."""
from __future__ import annotations

import json
import platform
import time

import numpy as np

NAME = "bench"
HELP = "time energy+forces+virial (µs/atom) on standard structures"
STRUCTURES = ("diamond64", "fcc108", "diamond1000")


def add_arguments(p):
    p.add_argument("model", nargs="?", help="model file (else build one from the options below)")
    p.add_argument("--elements", nargs="+", default=["Si"])
    p.add_argument("--order", type=int, default=3)
    p.add_argument("--totaldegree", type=float, nargs="+", default=[12])
    p.add_argument("--rcut", type=float, default=5.5, help="Å")
    p.add_argument("--random-params", action="store_true",
                   help="random decaying parameters instead of zeros (built models only)")
    p.add_argument("--structures", nargs="+", default=list(STRUCTURES), choices=STRUCTURES)
    p.add_argument("--calls", type=int, default=30, help="timed calls per structure (>= 20)")
    p.add_argument("--threads", type=int, default=None, help="numba threads (default: all)")
    p.add_argument("--json", action="store_true", help="print one JSON object")


def lattice_constant(symbol: str, lattice: str) -> float:
    """ASE's reference lattice constant where the element has that lattice, else one from the
    bond length (nearest-neighbour distance = bond length)."""
    from ase.data import atomic_numbers, reference_states

    from ..basis.bondlengths import bond_length
    ref = reference_states[atomic_numbers[symbol]]
    if ref and ref.get("symmetry") == lattice and "a" in ref:
        return float(ref["a"])
    nn = bond_length(symbol)
    return 4 * nn / np.sqrt(3) if lattice == "diamond" else np.sqrt(2) * nn


def build_structure(name: str, elements, seed: int = 0):
    """Rattled (0.1 Å) periodic cells; species drawn at random for multi-element models."""
    from ase.build import bulk
    lattice, reps = {"diamond64": ("diamond", 2), "fcc108": ("fcc", 3),
                     "diamond1000": ("diamond", 5)}[name]
    at = bulk(elements[0], lattice, a=lattice_constant(elements[0], lattice), cubic=True)
    at = at * (reps, reps, reps)
    rng = np.random.default_rng(seed)
    if len(elements) > 1:
        at.set_chemical_symbols(rng.choice(elements, size=len(at)))
    at.rattle(0.1, seed=seed)
    return at


def make_model(args):
    import aceserver
    if args.model:
        return aceserver.load_model(args.model)
    td = args.totaldegree[0] if len(args.totaldegree) == 1 else args.totaldegree
    model = aceserver.ace1_model(elements=args.elements, order=args.order, totaldegree=td,
                                 rcut=args.rcut)
    if args.random_params:
        rng = np.random.default_rng(0)
        model.parameters = rng.normal(size=model.length_basis) / (1 + np.arange(model.length_basis))
    return model


def time_calls(fn, calls: int) -> float:
    """Median seconds per call over `calls` calls (after one warm-up)."""
    fn()
    times = []
    for _ in range(calls):
        t = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t)
    return float(np.median(times))


def run(args) -> int:
    import numba
    if args.threads:
        numba.set_num_threads(args.threads)
    threads = numba.get_num_threads()
    model = make_model(args)
    results, first_call = [], None
    for name in args.structures:
        at = build_structure(name, model.elements)
        call = lambda: model.evaluate(at.numbers, at.positions, at.cell[:], at.pbc)  # noqa: E731
        if first_call is None:
            t = time.perf_counter()
            call()
            first_call = time.perf_counter() - t
        sec = time_calls(call, max(20, args.calls))
        first, _, _ = model._neighbours(at.numbers, at.positions, at.cell[:], at.pbc)[1:]
        results.append({"name": name, "n_atoms": len(at), "us_per_atom": sec / len(at) * 1e6,
                        "median_ms": sec * 1e3,
                        "neighbours_per_atom": float((first[-1]) / len(at))})
    out = {"model": {"elements": model.elements, "length_basis": model.length_basis,
                     "rcut": model.rcut, "sha256": model.sha256},
           "threads": threads, "first_call_seconds": first_call,
           "us_per_atom": results[0]["us_per_atom"], "n_atoms": results[0]["n_atoms"],
           "structures": results, "machine": f"{platform.machine()} {platform.processor()}".strip()}
    if args.json:
        print(json.dumps(out))
    else:
        print(f"model: {model.elements}, {model.length_basis} basis functions, rcut {model.rcut} Å; "
              f"threads {threads}; first call {first_call:.3f} s")
        for r in results:
            print(f"  {r['name']:>12}: {r['n_atoms']:5d} atoms, {r['neighbours_per_atom']:.1f} "
                  f"neighbours/atom, {r['us_per_atom']:8.2f} µs/atom ({r['median_ms']:.3f} ms/call)")
    return 0
