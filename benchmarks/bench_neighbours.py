"""Neighbour list speed: aceserver (numba cell list) vs ase.neighborlist.neighbor_list, same process.

    python benchmarks/bench_neighbours.py [--repeat N]

Rattled diamond Si at rcut 5.5 Å with 64, 1000 and 8000 atoms; prints µs per atom (best of
--repeat runs) and the first-call time (numba compile, or loading the on-disk cache).
"""
from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
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


_COLD = """
import time
t0 = time.perf_counter()
import numpy as np
from aceserver.kernels.neighbours import neighbour_list
neighbour_list(np.zeros((2, 3)) + [[0, 0, 0], [1, 1, 1]], np.eye(3) * 5.43, True, 5.5)
print(time.perf_counter() - t0)
"""


def _cold_start_seconds():
    """Import + first call in a fresh interpreter with an empty numba cache: the full compile."""
    root = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..")
    with tempfile.TemporaryDirectory() as cache:
        env = dict(os.environ, NUMBA_CACHE_DIR=cache,
                   PYTHONPATH=os.pathsep.join([root, os.environ.get("PYTHONPATH", "")]))
        out = subprocess.run([sys.executable, "-c", _COLD], env=env, capture_output=True, text=True,
                             check=True)
    return float(out.stdout.split()[-1])


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeat", type=int, default=5)
    args = parser.parse_args(argv)

    print(f"first call, empty numba cache (compile): {_cold_start_seconds():.2f} s")
    t0 = time.perf_counter()
    from aceserver.kernels.neighbours import neighbour_list

    small = _structure(64)
    neighbour_list(small.positions, small.cell.array, small.pbc, RCUT)
    print(f"first call in this process (import + compile or on-disk cache load): "
          f"{time.perf_counter() - t0:.2f} s")
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
