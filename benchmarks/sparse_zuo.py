"""Sparse (ASP, ARD) against dense (BLR) fits of one basis on a Zuo training split: validation error
and evaluator speed, in one run.

    python benchmarks/sparse_zuo.py --data-dir DIR [--element Si] [--order 4 --totaldegree 26 22 18 14]
                                    [--active 1000] [--solvers blr asp ard] [--rounds 7]

The training split (DIR/ZuoEtAl2020/<El>_train.xyz; the test split is never read) is cut 80/20 by a
seeded permutation; each solver fits the 80 % (weights E 30 / F 1, algebraic prior p = 4, E0 = 0,
rcut 2.5 bond lengths), ASP choosing its knot on the 20 % (ACEfit's ``select = (:byerror, 1.0)``,
up to ``--active`` functions). Prints validation MAE (E meV/atom, F eV/Å), nonzero parameters,
product nodes, fit time and µs/atom on the rattled diamond64 cell (one numba thread, the models
timed alternately, medians over rounds) with the ratio to BLR.
"""
import argparse
import time
from pathlib import Path

import numba
import numpy as np

import aceserver
from aceserver.basis.bondlengths import pair_r0
from aceserver.benchmarking import build_structure, time_calls
from aceserver.fitting import assembly, data, error_tables
from aceserver.fitting import fit_model as driver


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--data-dir", required=True)
    ap.add_argument("--element", default="Si")
    ap.add_argument("--order", type=int, default=4)
    ap.add_argument("--totaldegree", type=int, nargs="+", default=[26, 22, 18, 14])
    ap.add_argument("--active", type=int, default=1000)
    ap.add_argument("--solvers", nargs="+", default=["blr", "asp", "ard"])
    ap.add_argument("--rounds", type=int, default=7)
    ap.add_argument("--calls", type=int, default=20)
    args = ap.parse_args()
    numba.set_num_threads(1)
    el = args.element
    configs = data.read_configs(Path(args.data_dir) / "ZuoEtAl2020" / f"{el}_train.xyz",
                                data.Keys(energy="energy", force="force"), elements=[el])
    perm = np.random.default_rng(0).permutation(len(configs))
    nv = len(configs) // 5
    val, train = [configs[i] for i in perm[:nv]], [configs[i] for i in perm[nv:]]
    make = lambda: aceserver.ace1_model(elements=[el], order=args.order, totaldegree=args.totaldegree,  # noqa: E731
                                        rcut=2.5 * pair_r0(el, el), E0={el: 0.0})
    weights = {"default": {"E": 30.0, "F": 1.0, "V": 1.0}}
    m0 = make()
    t0 = time.perf_counter()
    st = assembly.assemble(m0, train, weights, threads=1, progress=False)
    sv = assembly.assemble(m0, val, weights, threads=1, progress=False)
    print(f"{el}: {len(train)} training / {len(val)} validation configurations; basis order {args.order}, "
          f"totaldegree {args.totaldegree}: {m0.length_basis} functions; assembled in {time.perf_counter() - t0:.0f} s")
    specs = {"blr": "blr", "asp": {"name": "asp", "select": {"byerror": 1.0}, "max_active": args.active},
             "ard": {"name": "ard", "max_iter": 100}}
    models = {}
    for name in args.solvers:
        m = make()
        t0 = time.perf_counter()
        res = driver.acefit(m, train, weights=weights, solver=specs[name], validation=val, system=st,
                            validation_system=sv, compute_errors=False)
        fit_s = time.perf_counter() - t0
        e = error_tables.error_table(val, error_tables.predict(m, val, 1))["mae"]["set"]
        nodes = len(m._merge(m.parameters[None, :])["parent"])
        print(f"  {name}: validation MAE E {e['E'] * 1e3:.3f} meV/atom, F {e['F']:.4f} eV/Å; "
              f"{np.count_nonzero(m.parameters)} nonzero, {nodes} product nodes; fit {fit_s:.0f} s; "
              + ", ".join(f"{k} {v}" for k, v in res.solver_info.items()
                          if k in ("n_active", "n_knots", "iterations", "converged", "effective_parameters")))
        models[name] = m
    at = build_structure("diamond64", [el])
    times = {n: [] for n in models}
    for r in range(args.rounds):
        for n in (list(models) if r % 2 == 0 else list(models)[::-1]):
            m = models[n]
            times[n].append(time_calls(lambda: m.evaluate(at.numbers, at.positions, at.cell[:], at.pbc), args.calls)
                            / len(at) * 1e6)
    base = float(np.median(times[args.solvers[0]]))
    for n in models:
        med = float(np.median(times[n]))
        print(f"  {n}: {med:.2f} µs/atom (diamond64, 1 thread, median of {args.rounds}); ratio to "
              f"{args.solvers[0]} {med / base:.3f}")


if __name__ == "__main__":
    main()
