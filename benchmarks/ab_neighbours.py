"""Neighbour search A/B between two source trees (e.g. a worktree of an older commit and this
one): the trees run alternately in fresh processes (each importing aceserver from its own tree)
and the script prints µs/atom per case and the ratio B/A (median over rounds).

Cases: rattled diamond Si at rcut 5.5 Å (64, 1000, 8000 atoms) and fcc Cu at 7.4 Å (108, 864);
modes: sorted and unsorted on one thread, and unsorted in blocks on 1 and 2 of numba's threads
(4 blocks per thread, as `evaluate` does for large structures).

    python benchmarks/ab_neighbours.py TREE_A TREE_B [--rounds 5]
"""
import argparse
import json
import os
import subprocess
import sys

import numpy as np

_CHILD = r"""
import json, sys, time
import numba, numpy as np
from ase.build import bulk
from aceserver.kernels.neighbours import neighbour_list

def cases():
    for reps in (2, 5, 10):
        at = bulk("Si", "diamond", a=5.43, cubic=True) * ((reps,) * 3)
        at.rattle(0.05, seed=1)
        yield f"Si diamond{len(at)} rcut 5.5", at, 5.5
    for reps in (3, 6):
        at = bulk("Cu", "fcc", a=3.615, cubic=True) * ((reps,) * 3)
        at.rattle(0.05, seed=1)
        yield f"Cu fcc{len(at)} rcut 7.4", at, 7.4

out = {}
for name, at, rcut in cases():
    x = (at.positions, at.cell.array, at.pbc, rcut)
    calls = max(3, 20000 // len(at))
    for mode, threads, kw in (("sorted, serial", 1, dict(sort=True)),
                              ("unsorted, serial", 1, dict(sort=False)),
                              ("unsorted, blocks, 1 thread", 1, dict(sort=False, n_chunks=4)),
                              ("unsorted, blocks, 2 threads", 2, dict(sort=False, n_chunks=8))):
        numba.set_num_threads(threads)
        neighbour_list(*x, **kw)
        best = np.inf
        for _ in range(3):
            t = time.perf_counter()
            for _ in range(calls):
                neighbour_list(*x, **kw)
            best = min(best, (time.perf_counter() - t) / calls / len(at) * 1e6)
        out[f"{name}: {mode}"] = best
print(json.dumps(out))
"""


def run(tree):
    env = dict(os.environ, PYTHONPATH=os.path.abspath(tree), NUMBA_NUM_THREADS="2")
    res = subprocess.run([sys.executable, "-c", _CHILD], env=env, capture_output=True, text=True,
                         check=True, cwd=os.path.abspath(tree))
    return json.loads(res.stdout)


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("tree_a")
    ap.add_argument("tree_b")
    ap.add_argument("--rounds", type=int, default=5)
    args = ap.parse_args()
    runs = {"A": [], "B": []}
    for _ in range(args.rounds):
        runs["A"].append(run(args.tree_a))
        runs["B"].append(run(args.tree_b))
    print(f"{'case':<52} {'A µs/atom':>10} {'B µs/atom':>10} {'B/A':>6}")
    for key in runs["A"][0]:
        a = float(np.median([r[key] for r in runs["A"]]))
        b = float(np.median([r[key] for r in runs["B"]]))
        print(f"{key:<52} {a:10.2f} {b:10.2f} {b / a:6.3f}")


if __name__ == "__main__":
    main()
