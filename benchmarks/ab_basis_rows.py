"""A/B of the basis-row pass used for fitting (`ACEModel._basis_pass`: energy, force and virial
rows of every basis function) between two source trees: fresh processes importing aceserver
from each tree alternately, rattled 64-atom diamond cell of the model's first element, process
CPU time (min of 3), median over rounds.

    python benchmarks/ab_basis_rows.py TREE_A TREE_B MODEL [MODEL ...] [--rounds 3]
"""
import argparse
import json
import os
import subprocess
import sys

import numpy as np

CHILD = r'''
import sys, time, json, numpy as np
from ase.build import bulk
from aceserver.loading import load_model
m = load_model(sys.argv[1])
at = bulk(m.elements[0], "diamond", a=5.43, cubic=True) * (2, 2, 2)
at.positions += np.random.default_rng(0).normal(scale=0.1, size=at.positions.shape)
z, first, nbr, R = m._neighbours(at.numbers, at.positions, at.cell.array, True)
m._basis_pass(z, first, nbr, R, with_grad=True)
best = 1e9
for _ in range(3):
    t = time.process_time()
    m._basis_pass(z, first, nbr, R, with_grad=True)
    best = min(best, time.process_time() - t)
e, f, v = m._basis_pass(z, first, nbr, R, with_grad=True)
print(json.dumps({"ms": best * 1e3, "checksum": float(np.abs(f).sum())}))
'''


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("tree_a")
    ap.add_argument("tree_b")
    ap.add_argument("models", nargs="+")
    ap.add_argument("--rounds", type=int, default=3)
    args = ap.parse_args()
    for model in args.models:
        res = {"A": [], "B": []}
        for _ in range(args.rounds):
            for label, tree in (("A", args.tree_a), ("B", args.tree_b)):
                tree = os.path.abspath(tree)
                out = subprocess.run([sys.executable, "-c", CHILD, os.path.abspath(model)],
                                     env=dict(os.environ, PYTHONPATH=tree), capture_output=True,
                                     text=True, cwd=tree, check=True)
                res[label].append(json.loads(out.stdout.strip().splitlines()[-1]))
        a = np.median([x["ms"] for x in res["A"]])
        b = np.median([x["ms"] for x in res["B"]])
        print(f"{os.path.basename(model)}: basis rows, 64 atoms: A {a:.1f} ms, B {b:.1f} ms, "
              f"B/A {b / a:.3f} (checksums {res['A'][0]['checksum']:.9e} / "
              f"{res['B'][0]['checksum']:.9e})")


if __name__ == "__main__":
    main()
