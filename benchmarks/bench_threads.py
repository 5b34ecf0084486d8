"""Thread scaling on large cells: one thread against two (or --threads N), alternating in one
process, for the shipped Si-tiny and zuo-Si models on 1000-atom diamond Si and for
Cu-PBE-core-rep (tests/data) on 1372-atom fcc Cu; prints µs/atom (medians) and the speed-up (median of the per-round
ratios, and their range). Two paths: `model.evaluate` (a full neighbour search every call) and the ASE calculator
in MD-like use (positions moved by 0.002 Å per call, Verlet list reused).

    python benchmarks/bench_threads.py [--threads 2] [--rounds 5]
"""
import argparse
import time
from pathlib import Path

import numba
import numpy as np
from ase.build import bulk

import aceserver

ROOT = Path(__file__).resolve().parent.parent


def cases():
    si = bulk("Si", "diamond", a=5.43, cubic=True) * (5, 5, 5)
    cu = bulk("Cu", "fcc", a=3.615, cubic=True) * (7, 7, 7)
    for at in (si, cu):
        at.rattle(0.05, seed=1)
    return [("Si-tiny", ROOT / "models/Si-tiny/Si-tiny.json", si),
            ("zuo-Si", ROOT / "models/zuo-Si/zuo-Si.json", si),
            ("Cu-PBE-core-rep", ROOT / "tests/data/Cu-PBE-core-rep.yace", cu)]


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--calls", type=int, default=3)
    args = ap.parse_args()
    for name, path, at in cases():
        model = aceserver.load_model(path)
        x = (at.numbers, at.positions, at.cell[:], at.pbc)

        def run(threads):
            numba.set_num_threads(threads)
            t = time.perf_counter()
            for _ in range(args.calls):
                model.evaluate(*x, threads=threads)
            return (time.perf_counter() - t) / args.calls / len(at) * 1e6

        calcs = {}
        for th in (1, args.threads):
            a = at.copy()
            a.calc = aceserver.ACECalculator(model, threads=th, committee=False)
            calcs[th] = a
        rng = np.random.default_rng(0)

        def md(threads):
            numba.set_num_threads(threads)
            a = calcs[threads]
            t = time.perf_counter()
            for _ in range(args.calls):
                a.positions = a.positions + rng.normal(scale=0.002, size=a.positions.shape)
                a.get_potential_energy(), a.get_forces(), a.get_stress()
            return (time.perf_counter() - t) / args.calls / len(at) * 1e6

        for label, f in (("evaluate", run), ("calculator, MD moves", md)):
            f(1), f(args.threads)
            one, many = [], []
            for _ in range(args.rounds):
                one.append(f(1))
                many.append(f(args.threads))
            a, b = float(np.median(one)), float(np.median(many))
            # each round's pair of runs shares the box's state of the moment: the median of the
            # paired ratios is steadier than the ratio of the medians when the box drifts
            paired = np.array(one) / np.array(many)
            print(f"{name:>16} {len(at)} atoms, {label:>20}: 1 thread {a:7.1f} µs/atom, "
                  f"{args.threads} threads {b:7.1f} µs/atom, speed-up x{np.median(paired):.2f} "
                  f"(rounds x{paired.min():.2f}-{paired.max():.2f})", flush=True)


if __name__ == "__main__":
    main()
