"""Evaluator benchmark: µs/atom for E+F+V of the issue-3 reference model (Si, order 3,
totaldegree 12, rcut 5.5 Å, random parameters) on the standard structures, one thread and all
threads, with ratios against a baseline run in the same process: the same model evaluated the
way upstream does it (basis functions with forward-mode derivatives, then contracted with θ).

    python benchmarks/bench_evaluator.py [--calls 30]
"""
import argparse
import time

import numba
import numpy as np

import aceserver
from aceserver.benchmarking import build_structure, time_calls


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--calls", type=int, default=30)
    args = ap.parse_args()
    t0 = time.perf_counter()
    model = aceserver.ace1_model(elements=["Si"], order=3, totaldegree=12, rcut=5.5)
    model.parameters = np.random.default_rng(0).normal(size=model.length_basis) / (
        1 + np.arange(model.length_basis))
    print(f"model built in {time.perf_counter() - t0:.2f} s: {model.length_basis} functions")
    max_threads = numba.get_num_threads()
    for name in ("diamond64", "fcc108", "diamond1000"):
        at = build_structure(name, model.elements)
        args_ = (at.numbers, at.positions, at.cell[:], at.pbc)
        theta = model.parameters

        def baseline():
            e, f, v = model.basis_rows(*args_)
            return e @ theta, f @ theta, v @ theta

        t_base = time_calls(baseline, max(5, args.calls // 6))
        numba.set_num_threads(1)
        t1 = time_calls(lambda: model.evaluate(*args_, threads=1), args.calls)
        numba.set_num_threads(max_threads)
        tn = time_calls(lambda: model.evaluate(*args_), args.calls)
        n = len(at)
        print(f"{name:>12} ({n:4d} atoms): fast form 1 thread {t1 / n * 1e6:7.2f} µs/atom, "
              f"{max_threads} threads {tn / n * 1e6:7.2f} µs/atom (x{t1 / tn:.2f}); "
              f"basis-form baseline {t_base / n * 1e6:8.2f} µs/atom (fast form x{t_base / t1:.1f})")


if __name__ == "__main__":
    main()
