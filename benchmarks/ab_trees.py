"""A/B of the site-pass kernel between two source trees (e.g. a checkout of an older commit and
this one): alternating child processes, each importing aceserver from its own tree, time the
serial fast pass alone (energy + pair gradients, neighbour list built once outside the timing)
on a rattled periodic cell and print µs/atom (min over repeats) and the ratio B/A per round.

    python benchmarks/ab_trees.py TREE_A TREE_B MODEL [--cell diamond64|fcc108] [--a 5.43]
                                  [--rounds 3] [--repeats 3] [--calls 5]

The cells are ASE's cubic diamond (2×2×2, 64 atoms) or fcc (3×3×3, 108 atoms) of the model's
first element with lattice constant --a (Å), rattled by 0.1 Å (normal, seed 0). Works with
trees before the site tables (kernel called through ACEModel._fast_pass) and after them.
"""
import argparse
import json
import os
import subprocess
import sys

CHILD = r"""
import json, sys, time
import numpy as np
from ase.build import bulk
from aceserver.loading import load_model
from aceserver.kernels import site_pass as K

path, cell, a, repeats, calls = sys.argv[1], sys.argv[2], float(sys.argv[3]), int(sys.argv[4]), int(sys.argv[5])
m = load_model(path)
el = m.elements[0] if hasattr(m, "elements") else m.info()["species"][0]
lattice, reps = {"diamond64": ("diamond", 2), "fcc108": ("fcc", 3)}[cell]
at = bulk(el, lattice, a=a, cubic=True) * (reps, reps, reps)
at.positions += np.random.default_rng(0).normal(scale=0.1, size=at.positions.shape)
z, first, nbr, R = m._neighbours(at.numbers, at.positions, at.cell.array, True)
if hasattr(m, "_fast_pass"):
    run = lambda: m._fast_pass(z, first, nbr, R, m._fast, True, False)
else:
    T = m._tables(False)
    run = lambda: K.fast_serial(first, nbr, R, z, T, True)
E = run()[0]
best = float("inf")
for _ in range(repeats):
    t = time.perf_counter()
    for _ in range(calls):
        run()
    best = min(best, (time.perf_counter() - t) / calls)
print(json.dumps({"us_atom": best / len(at) * 1e6, "energy": float(E[0].sum())}))
"""


def child(tree, args):
    env = dict(os.environ, PYTHONPATH=os.path.abspath(tree))
    out = subprocess.run([sys.executable, "-c", CHILD, os.path.abspath(args.model), args.cell,
                          str(args.a), str(args.repeats), str(args.calls)],
                         cwd=tree, env=env, capture_output=True, text=True, check=True)
    return json.loads(out.stdout.strip().splitlines()[-1])


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("tree_a")
    ap.add_argument("tree_b")
    ap.add_argument("model")
    ap.add_argument("--cell", default="diamond64", choices=["diamond64", "fcc108"])
    ap.add_argument("--a", type=float, default=5.43, help="lattice constant, Å")
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--calls", type=int, default=5)
    args = ap.parse_args()
    ratios = []
    for r in range(args.rounds):
        a = child(args.tree_a, args)
        b = child(args.tree_b, args)
        ratios.append(b["us_atom"] / a["us_atom"])
        print(f"round {r + 1}: A {a['us_atom']:.1f} µs/atom, B {b['us_atom']:.1f} µs/atom, "
              f"B/A {ratios[-1]:.3f}; energies A {a['energy']!r} B {b['energy']!r}")
    print(f"B/A: median {sorted(ratios)[len(ratios) // 2]:.3f}, min {min(ratios):.3f}, "
          f"max {max(ratios):.3f}")


if __name__ == "__main__":
    main()
