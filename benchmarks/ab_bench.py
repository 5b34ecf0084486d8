"""`aceserver bench` A/B between two source trees (e.g. a worktree of an older commit and this
one): for every model, the two trees run alternately in fresh processes (each importing aceserver
from its own tree), one thread, and the script prints µs/atom per structure and the ratio B/A
(median over rounds).

    python benchmarks/ab_bench.py TREE_A TREE_B MODEL [MODEL ...] [--rounds 3]
                                  [--structures diamond64 fcc108 diamond1000]
"""
import argparse
import json
import os
import subprocess
import sys

import numpy as np


def bench(tree, model, structures, calls):
    env = dict(os.environ, PYTHONPATH=os.path.abspath(tree), NUMBA_NUM_THREADS="1")
    out = subprocess.run([sys.executable, "-m", "aceserver.cli", "bench", os.path.abspath(model),
                          "--threads", "1", "--json", "--calls", str(calls), "--structures",
                          *structures], env=env, capture_output=True, text=True, check=True,
                         cwd=os.path.abspath(tree))
    return json.loads(out.stdout)


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("tree_a")
    ap.add_argument("tree_b")
    ap.add_argument("models", nargs="+")
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--calls", type=int, default=20)
    ap.add_argument("--structures", nargs="+", default=["diamond64", "fcc108", "diamond1000"])
    args = ap.parse_args()
    for model in args.models:
        times = {"A": {}, "B": {}}
        for r in range(args.rounds):
            for label, tree in (("A", args.tree_a), ("B", args.tree_b))[:: 1 if r % 2 == 0 else -1]:
                res = bench(tree, model, args.structures, args.calls)
                for row in res["structures"]:
                    times[label].setdefault(row["name"], []).append(row["us_per_atom"])
        for s in args.structures:
            a, b = np.median(times["A"][s]), np.median(times["B"][s])
            print(f"{os.path.basename(model):>24} {s:>12}: A {a:8.1f}  B {b:8.1f} µs/atom  "
                  f"B/A {b / a:.3f}", flush=True)


if __name__ == "__main__":
    main()
