"""Speed of sparse models (ASP fits) against the dense fit of the same basis, in one run.

    python benchmarks/bench_sparse.py [--order 4 --totaldegree 26 22 18 14] [--active 100 300 1000]
                                      [--rounds 7] [--calls 20] [--data tests/data/Si_tiny.xyz]

Fits one basis on the data twice over: BLR (dense: every parameter nonzero) and ASP stopped at each
``--active`` count (``select: final``); the product DAG of each sparse model keeps only the nodes its
nonzero parameters need. Then times energy+forces+virial on the rattled diamond64 cell (µs/atom,
one numba thread), dense and sparse alternately, and prints medians over rounds and the ratio
sparse/dense, with the number of product nodes of each. The fits' accuracy is not the point here
(Si_tiny has fewer observations than the large bases have parameters): the timing depends only on
which parameters are nonzero.
"""
import argparse
import time
from pathlib import Path

import numba
import numpy as np

import aceserver
from aceserver.benchmarking import build_structure, time_calls
from aceserver.fitting import assembly, data
from aceserver.fitting import fit_model as driver

ROOT = Path(__file__).resolve().parents[1]


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--order", type=int, default=4)
    ap.add_argument("--totaldegree", type=int, nargs="+", default=[26, 22, 18, 14])
    ap.add_argument("--active", type=int, nargs="+", default=[100, 300, 1000])
    ap.add_argument("--rounds", type=int, default=7)
    ap.add_argument("--calls", type=int, default=20)
    ap.add_argument("--data", default=str(ROOT / "tests" / "data" / "Si_tiny.xyz"))
    args = ap.parse_args()
    numba.set_num_threads(1)
    E0 = {"Si": -158.54496821}
    weights = {"default": {"E": 30.0, "F": 1.0, "V": 1.0}}
    configs = data.read_configs(args.data, data.Keys("dft_energy", "dft_force", "dft_virial"), elements=["Si"])
    make = lambda: aceserver.ace1_model(elements=["Si"], order=args.order, totaldegree=args.totaldegree,  # noqa: E731
                                        rcut=5.5, E0=dict(E0))
    dense = make()
    t0 = time.perf_counter()
    system = assembly.assemble(dense, configs, weights, threads=1, progress=False)
    print(f"basis order {args.order}, totaldegree {args.totaldegree}: {dense.length_basis} functions; "
          f"system {system.shape} assembled in {time.perf_counter() - t0:.0f} s")
    driver.acefit(dense, configs, weights=weights, solver="blr", system=system, compute_errors=False)
    models = {"dense": dense}
    for k in args.active:
        m = make()
        t0 = time.perf_counter()
        res = driver.acefit(m, configs, weights=weights, solver={"name": "asp", "select": "final", "max_active": k},
                            system=system, compute_errors=False)
        print(f"ASP to {k} active: {res.solver_info['n_active']} nonzero parameters, "
              f"{res.solver_info['n_knots']} knots, {time.perf_counter() - t0:.1f} s")
        models[f"asp{k}"] = m
    at = build_structure("diamond64", ["Si"])
    calls = {n: (lambda m=m: m.evaluate(at.numbers, at.positions, at.cell[:], at.pbc)) for n, m in models.items()}
    times = {n: [] for n in models}
    for r in range(args.rounds):
        for n in (list(models) if r % 2 == 0 else list(models)[::-1]):     # alternate the order
            times[n].append(time_calls(calls[n], args.calls) / len(at) * 1e6)
    base = float(np.median(times["dense"]))
    print(f"diamond64 ({len(at)} atoms), 1 thread, medians of {args.rounds} rounds x {args.calls} calls:")
    for n, m in models.items():
        nodes = len(m._merge(m.parameters[None, :])["parent"])
        med = float(np.median(times[n]))
        print(f"  {n:8s} nonzero {np.count_nonzero(m.parameters):5d}  product nodes {nodes:6d}  "
              f"{med:8.2f} µs/atom  ratio to dense {med / base:.3f}")


if __name__ == "__main__":
    main()
