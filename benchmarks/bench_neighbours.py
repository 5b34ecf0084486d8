"""Neighbour list speed: aceserver (numba cell list) vs ase.neighborlist.neighbor_list, same process.

    python benchmarks/bench_neighbours.py [--repeat N]

Rattled diamond Si at rcut 5.5 Å with 64, 1000 and 8000 atoms; prints µs per atom (best of
--repeat runs) and the first-call time (numba compile, or loading the on-disk cache).
"""
from __future__ import annotations

import argparse
import os
import sys
import time

import numpy as np
from ase.build import bulk
from ase.neighborlist import neighbor_list as ase_neighbor_list

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))  # uninstalled checkout

RCUT = 5.5


def _structure(n_atoms, seed=0):
    reps = {64: (2, 2, 2), 1000: (5, 5, 5), 8000: (10, 10, 10)}[n_atoms]  # 8-atom cubic cells
    atoms = bulk("Si", "diamond", 5.43, cubic=True) * reps
    assert len(atoms) == n_atoms
    atoms.rattle(0.1, seed=seed)
    return atoms


def _best(fn, repeat):
    best = np.inf
    for _ in range(repeat):
        t0 = time.perf_counter()
        fn()
        best = min(best, time.perf_counter() - t0)
    return best


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeat", type=int, default=5)
    args = parser.parse_args(argv)

    t0 = time.perf_counter()
    from aceserver.kernels.neighbours import neighbour_list

    small = _structure(64)
    neighbour_list(small.positions, small.cell.array, small.pbc, RCUT)
    print(f"first call (import + compile or cache load): {time.perf_counter() - t0:.2f} s")
    print(f"{'atoms':>6} {'pairs':>9} {'aceserver µs/atom':>18} {'ase µs/atom':>12} {'ase/ours':>9}")
    for n_atoms in (64, 1000, 8000):
        atoms = _structure(n_atoms)
        pos, cell, pbc = atoms.positions, atoms.cell.array, atoms.pbc
        first, j, R = neighbour_list(pos, cell, pbc, RCUT)
        ours = _best(lambda: neighbour_list(pos, cell, pbc, RCUT), args.repeat)
        ref = _best(lambda: ase_neighbor_list("ijdD", atoms, RCUT), max(1, min(args.repeat, 3)))
        assert len(j) == len(ase_neighbor_list("i", atoms, RCUT))
        print(f"{n_atoms:>6} {len(j):>9} {1e6 * ours / n_atoms:>18.2f} {1e6 * ref / n_atoms:>12.2f} "
              f"{ref / ours:>9.1f}")


if __name__ == "__main__":
    main()
