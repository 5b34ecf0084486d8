"""Cost of the projections (descriptor rows) and of γ of a pacemaker potential, as ratios to the
energy + forces call of the same structure, timed in the same run.

Cu-PBE-core-rep (tests/data, 742 C-tilde functions x 2 densities = 1484 columns) on rattled fcc
Cu with 64 and 1000 atoms. Per structure, in alternating rounds (medians of the rounds):
  E+F        evaluate(forces=True)
  rows       descriptors(): the projection rows alone (neighbour list included)
  E+F+γ      evaluate(forces=True, gamma=True) with an active set attached (a random A⁻¹ of
             the right shape: the cost does not depend on its values)
Run with --threads 1 for the serial kernels (default: numba's threads, which evaluate uses from
256 atoms on).

    PYTHONPATH=. python benchmarks/bench_pace_projections.py [--threads 1]
"""
from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import numba
import numpy as np
from ase.build import bulk

from aceserver.pacemaker.potential import load_yace

POTENTIAL = Path(__file__).resolve().parent.parent / "tests" / "data" / "Cu-PBE-core-rep.yace"


def cell(n_rep):
    at = bulk("Cu", "fcc", a=3.615, cubic=True).repeat(n_rep)
    at.positions += 0.05 * np.random.default_rng(1).standard_normal(at.positions.shape)
    return at


def timed(fn, calls):
    t = time.perf_counter()
    for _ in range(calls):
        fn()
    return (time.perf_counter() - t) / calls


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--threads", type=int, default=None, help="1: serial kernels")
    args = ap.parse_args()
    pot = load_yace(POTENTIAL)
    L = pot.descriptor_sizes["Cu"]
    rng = np.random.default_rng(0)
    pot.attach_active_set({"Cu": rng.standard_normal((L, L)) / L})
    print(f"{POTENTIAL.name}: L = {L} columns; numba threads {numba.get_num_threads()}, "
          f"threads={args.threads}; medians of {args.rounds} alternating rounds")
    for rep, calls in (((2, 2, 4), 20), ((5, 5, 10), 2)):
        at = cell(rep)
        a = (at.numbers, at.positions, at.cell.array, at.pbc)
        kinds = {
            "E+F": lambda: pot.evaluate(*a, threads=args.threads),
            "rows": lambda: pot.descriptors(*a, threads=args.threads),
            "E+F+γ": lambda: pot.evaluate(*a, threads=args.threads, gamma=True),
        }
        for fn in kinds.values():          # compile and warm up
            fn()
        times = {k: [] for k in kinds}
        for _ in range(args.rounds):
            for k, fn in kinds.items():
                times[k].append(timed(fn, calls))
        med = {k: float(np.median(v)) for k, v in times.items()}
        n = len(at)
        print(f"  {n:5d} atoms: E+F {med['E+F'] * 1e3:8.2f} ms ({med['E+F'] / n * 1e6:6.1f} µs/atom)"
              f" | rows {med['rows'] / med['E+F']:.2f}x | E+F+γ {med['E+F+γ'] / med['E+F']:.2f}x")
    return 0


if __name__ == "__main__":
    sys.exit(main())
