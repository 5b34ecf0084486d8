"""Batched relaxation (`relax_many`, issue 25) against the same cells relaxed one by one: prints
numbers, asserts nothing.

    python benchmarks/bench_relax_many.py [--count 200] [--rounds 3] [--model models/Si-tiny/Si-tiny.json]

`--count` rattled Si cells of 1 to 8 atoms (fcc 1-atom, diamond 2-atom, diamond orthorhombic 4-atom
and cubic 8-atom cells, some with atoms removed, each strained by up to ±2 % and rattled by 0.05 Å)
relaxed with FIRE, fmax 0.05 eV/Å, at most 300 steps, one thread, in this process, alternating in
each round (medians over the rounds):
  batch   one `batch_relax.run` over all cells (an optimiser each, every step one evaluate_many call);
  single  `runner.run` on each cell in turn: the existing relax job (ACECalculator, Verlet skin 0.3 Å);
  fresh   the same with skin 0 (a neighbour search every step: the trajectories the batch equals bit for bit).
Both write only each cell's first and last frame (write_every 10⁶) to a sink that drops them.
Prints the ratios single / batch and fresh / batch, the cost per structure-step (one optimiser step of one cell, its
evaluation included) and, for the batch, the share of its time spent in evaluate_many.
"""
from __future__ import annotations

import os

os.environ.setdefault("NUMBA_NUM_THREADS", "1")     # one thread, before numba is imported

import argparse
import statistics
import time
from pathlib import Path

import numpy as np
from ase.build import bulk

from aceserver.jobs import RelaxJob, RelaxManyJob, batch_relax, runner
from aceserver.loading import load_model

REPO = Path(__file__).resolve().parents[1]


class Drop:
    def frame(self, frame):
        pass

    def step(self, step):
        pass


def cells(count, seed=0):
    rng = np.random.default_rng(seed)
    kinds = [bulk("Si", "fcc", a=3.85), bulk("Si", "diamond", a=5.43),
             bulk("Si", "diamond", a=5.43, orthorhombic=True), bulk("Si", "diamond", a=5.43, cubic=True)]
    out = []
    for _ in range(count):
        a = kinds[rng.integers(len(kinds))].copy()
        if len(a) > 2 and rng.random() < 0.5:                   # 3, 5, 6, 7 atoms too
            del a[list(rng.choice(len(a), size=rng.integers(1, min(4, len(a) - 1)), replace=False))]
        a.set_cell(a.cell.array @ (np.eye(3) + rng.uniform(-0.02, 0.02, (3, 3))), scale_atoms=True)
        a.positions += rng.normal(scale=0.05, size=a.positions.shape)
        out.append(a)
    return out


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--count", type=int, default=200)
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--model", default=str(REPO / "models" / "Si-tiny" / "Si-tiny.json"))
    args = ap.parse_args()
    model = load_model(args.model)
    structures = cells(args.count)
    params = {"optimizer": "FIRE", "fmax": 0.05, "max_steps": 300}
    many = RelaxManyJob.model_validate({"kind": "relax_many", "parameters": params, "write_every": 10**6})
    one = RelaxJob.model_validate({"kind": "relax", "parameters": params, "write_every": 10**6})
    sizes = np.bincount([len(a) for a in structures], minlength=9)[1:]
    print(f"{os.path.basename(args.model)}: {args.count} cells, atoms 1-8: {sizes.tolist()}; FIRE fmax 0.05, "
          f"one thread, {args.rounds} alternating rounds, medians")

    evaluate_many, spent = model.evaluate_many, [0.0, 0]

    def timed(structures, **kw):                # the batch's evaluation time, seen from outside
        t = time.perf_counter()
        try:
            return evaluate_many(structures, **kw)
        finally:
            spent[0] += time.perf_counter() - t
            spent[1] += 1

    model.evaluate_many = timed

    def batch():
        out = batch_relax.run(model, structures, many, Drop(), threads=1)
        return sum(s["steps"] for s in out.structures), out

    def single(skin=0.3):
        return sum(runner.run(model, a, one, Drop(), skin=skin).step for a in structures)

    batch(), single(), single(0)                # compile and warm up
    tb, ts, tf, share, calls = [], [], [], [], 0
    for _ in range(args.rounds):
        spent[:] = [0.0, 0]
        t = time.perf_counter()
        steps_b, out = batch()
        tb.append(time.perf_counter() - t)
        share.append(spent[0] / tb[-1])
        calls = spent[1]
        t = time.perf_counter()
        steps_s = single()
        ts.append(time.perf_counter() - t)
        t = time.perf_counter()
        steps_f = single(0)
        tf.append(time.perf_counter() - t)
    b, s, f = statistics.median(tb), statistics.median(ts), statistics.median(tf)
    states = {k: sum(x["state"] == k for x in out.structures) for k in ("converged", "not_converged", "failed")}
    print(f"  structure-steps: batch {steps_b}, single {steps_s}, fresh {steps_f}; "
          f"batch outcomes {states}")
    print(f"  batch  : {b:8.3f} s  {1e6 * b / steps_b:7.1f} µs per structure-step, {calls} evaluate_many calls "
          f"({1e3 * b / calls:.2f} ms each step), {100 * statistics.median(share):.0f} % of the time in evaluate_many")
    print(f"  single : {s:8.3f} s  {1e6 * s / steps_s:7.1f} µs per structure-step")
    print(f"  fresh  : {f:8.3f} s  {1e6 * f / steps_f:7.1f} µs per structure-step")
    print(f"  single / batch = {s / b:.2f}x  (per round: {', '.join(f'{x / y:.2f}' for x, y in zip(ts, tb))})")
    print(f"  fresh / batch  = {f / b:.2f}x  (per round: {', '.join(f'{x / y:.2f}' for x, y in zip(tf, tb))})")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
