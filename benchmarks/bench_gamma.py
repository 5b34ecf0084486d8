"""Cost of the extrapolation grade γ (issue 22) as a ratio to the energy+forces call it rides on.

For each model and size, in one process, alternating the two calls (the order flips every round),
medians over rounds of the per-call wall time (each round times `reps` calls of each):

    base   model.evaluate(..., threads=T)                  energy, forces, virial
    gamma  model.evaluate(..., threads=T, gamma=True)      the same plus γ of every atom

and where γ's extra time goes, timed in the same rounds: the BLAS product max|D A⁻¹| on the
structure's rows (the rest of the extra time, `extra - blas`, is making the rows inside the site
pass), and for comparison the rows made alone (`model.descriptors`, neighbour search included).
Targets (issue 22): gamma/base ≤ 1.5 for Si-tiny, ≤ 3 for zuo-Si.

The models carry no shipped active set, so a random well-conditioned A⁻¹ (L × L) is attached: the
cost of γ does not depend on A⁻¹'s values (a dense product either way). Structures: rattled
diamond Si, 64 atoms (2×2×2 cubic cells) and 1000 atoms (5×5×5).

`--many N` also times γ of N random 1-2-atom Si-tiny cells (`bench_small.random_cells`; Si-tiny's
shipped active set), one thread, rounds alternating the three calls, medians of process CPU time
(the box may be busy) and of each round's ratios:

    many_gamma  model.evaluate_many(cells, threads=1, gamma=True)
    loop_gamma  model.evaluate(cell, threads=1, gamma=True) for every cell   (per-structure path)
    many        model.evaluate_many(cells, threads=1)                         (no γ)

`--big N` also computes the descriptors (and γ) of N atoms of Si-tiny in a fresh process and
reports its peak RSS (ru_maxrss) against the process before the call.

    python benchmarks/bench_gamma.py [--models models/Si-tiny/Si-tiny.json models/zuo-Si/zuo-Si.json]
                                     [--sizes 64 1000] [--rounds 7] [--threads 1] [--big 100000]
                                     [--many 1000]
"""
from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
from ase.build import bulk
from threadpoolctl import ThreadpoolController

import aceserver
from aceserver.evaluation.site_potential import PARALLEL_MIN_ATOMS
from aceserver.evaluation.uncertainty import BLAS_THREADS_MIN_FLOP, extrapolation_grade


def structure(n: int):
    reps = {64: 2, 216: 3, 512: 4, 1000: 5}[n]
    atoms = bulk("Si", "diamond", a=5.43, cubic=True).repeat(reps)
    atoms.positions += np.random.default_rng(0).normal(scale=0.05, size=atoms.positions.shape)
    return atoms


def attach_random_active_set(model) -> None:
    rng = np.random.default_rng(1)
    inverses = {}
    for el, L in model.descriptor_sizes.items():
        q, _ = np.linalg.qr(rng.standard_normal((L, L)))
        inverses[el] = q
    model.attach_active_set(inverses)


def per_call(fn, reps: int) -> float:
    t = time.perf_counter()
    for _ in range(reps):
        fn()
    return (time.perf_counter() - t) / reps


BLAS = ThreadpoolController()


def product(D, A_inv, threads):
    """max|D A⁻¹| under the BLAS thread rule `evaluate` uses (`uncertainty.SiteUncertainty`):
    one thread unless the site pass is threaded and the product large."""
    threaded = threads != 1 and D.shape[0] >= PARALLEL_MIN_ATOMS
    if not threaded or 2.0 * D.shape[0] * D.shape[1] ** 2 < BLAS_THREADS_MIN_FLOP:
        with BLAS.limit(limits=1, user_api="blas"):
            return extrapolation_grade(D, A_inv)
    return extrapolation_grade(D, A_inv)


def bench(model, n: int, rounds: int, threads: int | None) -> dict:
    atoms = structure(n)
    args = (atoms.numbers, atoms.positions, atoms.cell.array, atoms.pbc)
    A_inv = model.active_set.inverses["Si"]
    D = model.descriptors(*args, threads=threads)
    calls = {
        "base": lambda: model.evaluate(*args, threads=threads),
        "gamma": lambda: model.evaluate(*args, threads=threads, gamma=True),
        "descriptors": lambda: model.descriptors(*args, threads=threads),
        "blas": lambda: product(D, A_inv, threads),
    }
    for fn in calls.values():            # compile and warm
        fn()
    t0 = time.perf_counter()
    calls["base"]()
    reps = max(1, int(0.15 / max(time.perf_counter() - t0, 1e-6)))
    times = {k: [] for k in calls}
    order = list(calls)
    for r in range(rounds):
        for k in (order if r % 2 == 0 else order[::-1]):
            times[k].append(per_call(calls[k], reps))
    med = {k: float(np.median(v)) for k, v in times.items()}
    return {"atoms": n, "L": int(D.shape[1]), "reps": reps, "ms": {k: 1e3 * v for k, v in med.items()},
            "gamma_over_base": med["gamma"] / med["base"],
            "extra_ms": 1e3 * (med["gamma"] - med["base"]),
            "blas_gflops": 2.0 * n * D.shape[1] ** 2 / med["blas"] / 1e9}


BIG = r'''
import json, resource, sys, time
import numpy as np
from ase.build import bulk
from threadpoolctl import ThreadpoolController
import aceserver
m = aceserver.load_model(sys.argv[1])
n_target = int(sys.argv[2])
k = round((n_target / 2) ** (1 / 3))
atoms = bulk("Si", "diamond", a=5.43).repeat(k) if 2 * k ** 3 >= n_target else bulk("Si", "diamond", a=5.43).repeat(k + 1)
atoms.positions += np.random.default_rng(0).normal(scale=0.05, size=atoms.positions.shape)
small = bulk("Si", "diamond", a=5.43, cubic=True).repeat(4)   # 512 atoms: the threaded kernels compile too
m.descriptors(small.numbers, small.positions, small.cell.array, small.pbc)      # compile first
rng = np.random.default_rng(1)
L = m.descriptor_sizes["Si"]
m.attach_active_set({"Si": np.linalg.qr(rng.standard_normal((L, L)))[0]})
m.evaluate(small.numbers, small.positions, small.cell.array, small.pbc, gamma=True)
before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
t = time.perf_counter()
D = m.descriptors(atoms.numbers, atoms.positions, atoms.cell.array, atoms.pbc)
t_desc = time.perf_counter() - t
peak_desc = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
out = {"atoms": len(atoms), "L": int(D.shape[1]), "array_mib": D.nbytes / 2**20, "descriptors_s": t_desc,
       "rss_before_mib": before, "peak_after_descriptors_mib": peak_desc}
del D
t = time.perf_counter()
ev = m.evaluate(atoms.numbers, atoms.positions, atoms.cell.array, atoms.pbc, gamma=True)
out.update(gamma_call_s=time.perf_counter() - t, max_gamma=ev.max_gamma,
           peak_after_gamma_call_mib=resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024)
print(json.dumps(out))
'''


def bench_many(count: int, rounds: int) -> dict:
    """γ of `count` small Si-tiny cells: evaluate_many against the per-structure loop and against
    evaluate_many without γ (module docstring); CPU seconds per call and the medians of the ratios."""
    sys.path.insert(0, str(Path(__file__).resolve().parent))
    from bench_small import random_cells

    model = aceserver.load_model(str(Path(__file__).resolve().parents[1] / "models/Si-tiny/Si-tiny.json"))
    cells = random_cells(14, 20.0, count)
    calls = {
        "many_gamma": lambda: model.evaluate_many(cells, threads=1, gamma=True),
        "loop_gamma": lambda: [model.evaluate(a.numbers, a.positions, a.cell.array, a.pbc, threads=1, gamma=True)
                               for a in cells],
        "many": lambda: model.evaluate_many(cells, threads=1),
    }
    for fn in calls.values():          # compile and warm
        fn()
    cpu = {k: [] for k in calls}
    ratios = {"loop_gamma/many_gamma": [], "many_gamma/many": []}
    names = list(calls)
    for r in range(rounds):
        order = names if r % 2 == 0 else names[::-1]
        t = {}
        for k in order:
            c0 = time.process_time()
            calls[k]()
            t[k] = time.process_time() - c0
            cpu[k].append(t[k])
        ratios["loop_gamma/many_gamma"].append(t["loop_gamma"] / t["many_gamma"])
        ratios["many_gamma/many"].append(t["many_gamma"] / t["many"])
    return {"cells": count, "atoms": sum(len(a) for a in cells),
            "cpu_ms": {k: 1e3 * float(np.median(v)) for k, v in cpu.items()},
            "ratios": {k: float(np.median(v)) for k, v in ratios.items()}}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--models", nargs="+", default=["models/Si-tiny/Si-tiny.json", "models/zuo-Si/zuo-Si.json"])
    ap.add_argument("--sizes", nargs="+", type=int, default=[64, 1000])
    ap.add_argument("--rounds", type=int, default=7)
    ap.add_argument("--threads", type=int, default=1, help="threads of each call (0: numba's default)")
    ap.add_argument("--big", type=int, default=0, help="also the descriptors of this many atoms (Si-tiny)")
    ap.add_argument("--many", type=int, default=0, help="also γ of this many small Si-tiny cells, batched")
    ap.add_argument("--json", action="store_true")
    args = ap.parse_args()
    threads = args.threads or None
    rows = []
    for path in args.models:
        model = aceserver.load_model(path)
        if model.active_set is None:
            attach_random_active_set(model)
        for n in args.sizes:
            r = bench(model, n, args.rounds, threads)
            r["model"] = path.rsplit("/", 1)[-1]
            rows.append(r)
            ms = r["ms"]
            print(f"{r['model']:<14} {n:>5} atoms L={r['L']:<5} base {ms['base']:8.2f} ms  gamma {ms['gamma']:8.2f} ms"
                  f"  ratio {r['gamma_over_base']:5.2f}  (extra {r['extra_ms']:7.2f} ms = BLAS {ms['blas']:7.2f} ms "
                  f"({r['blas_gflops']:.1f} GFLOP/s) + rows {r['extra_ms'] - ms['blas']:7.2f} ms; descriptors alone "
                  f"{ms['descriptors']:7.2f} ms)", flush=True)
    many = None
    if args.many:
        many = bench_many(args.many, args.rounds)
        ms, q = many["cpu_ms"], many["ratios"]
        print(f"γ of {many['cells']} 1-2-atom Si-tiny cells ({many['atoms']} atoms), one thread, CPU: evaluate_many "
              f"{ms['many_gamma']:.2f} ms ({1e3 * ms['many_gamma'] / many['cells']:.1f} µs/cell), per-structure loop "
              f"{ms['loop_gamma']:.2f} ms, evaluate_many without γ {ms['many']:.2f} ms; loop/many "
              f"{q['loop_gamma/many_gamma']:.2f}x, many γ/no γ {q['many_gamma/many']:.2f}x", flush=True)
    big = None
    if args.big:
        tiny = next((p for p in args.models if "Si-tiny" in p), "models/Si-tiny/Si-tiny.json")
        out = subprocess.run([sys.executable, "-c", BIG, tiny, str(args.big)], capture_output=True, text=True,
                             check=True)
        big = json.loads(out.stdout.strip().splitlines()[-1])
        print(f"descriptors of {big['atoms']} atoms (Si-tiny, L={big['L']}): {big['descriptors_s']:.2f} s, array "
              f"{big['array_mib']:.0f} MiB; peak RSS {big['peak_after_descriptors_mib']:.0f} MiB (process before: "
              f"{big['rss_before_mib']:.0f} MiB); evaluate(gamma=True) {big['gamma_call_s']:.2f} s, peak RSS "
              f"{big['peak_after_gamma_call_mib']:.0f} MiB")
    if args.json:
        print(json.dumps({"rows": rows, "big": big, "many": many}))


if __name__ == "__main__":
    main()
