"""A relax job with ASE's FrechetCellFilter (`scipy.linalg.logm` every step) in a job thread, with the
process's BLAS at OpenBLAS's own default count (what a server had before `--blas-threads`) and at
1 (the server's default now), set from the main thread as `aceserver serve` does, alternated in
every round. Prints per-step times (medians, ms), asserts nothing.

    python benchmarks/bench_cell_filter.py [--rounds 5] [--optimizer BFGS]

The case is tests/test_jobs_batch.py's two-species one: the shipped TiAl-tutorial model, a rattled
4-atom TiAl cell strained by 1 %, fmax 0.05 eV/Å, at most 60 steps (`jobs.runner.run`).
"""
from __future__ import annotations

import argparse
import statistics
import threading
import time
from pathlib import Path

import numpy as np
from ase.build import bulk

from aceserver.jobs import runner
from aceserver.jobs.spec import RelaxJob
from aceserver.loading import load_model
from aceserver.serving.process import blas_threads, set_blas_threads

REPO = Path(__file__).resolve().parents[1]


class Steps:
    def __init__(self):
        self.n = 0

    def frame(self, frame):
        pass

    def step(self, step):
        self.n += 1


def structure():
    atoms = bulk("Al", "fcc", a=4.0, cubic=True)
    atoms.numbers[[0, 3]] = 22
    atoms.positions += np.random.default_rng(7).normal(scale=0.05, size=atoms.positions.shape)
    atoms.set_cell(atoms.cell.array * 1.01, scale_atoms=True)
    return atoms


def one_job(model, atoms, spec) -> tuple[float, int]:
    """(seconds per step, steps) of one relax job run in its own thread, as the job manager runs it."""
    out = {}

    def run():
        sink = Steps()
        t0 = time.perf_counter()
        runner.run(model, atoms, spec, sink, skin=0)
        out["t"], out["n"] = time.perf_counter() - t0, sink.n
    t = threading.Thread(target=run)
    t.start()
    t.join()
    return out["t"] / max(out["n"], 1), out["n"]


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--rounds", type=int, default=5)
    p.add_argument("--optimizer", default="BFGS", choices=["BFGS", "FIRE"])
    args = p.parse_args()
    import scipy.linalg  # noqa: F401  (load scipy's BLAS before reading the default)
    default = max(lib["num_threads"] for lib in blas_threads())
    model = load_model(str(REPO / "models" / "TiAl-tutorial" / "TiAl-tutorial.json"))
    spec = RelaxJob.model_validate({"kind": "relax", "parameters": {
        "optimizer": args.optimizer, "fmax": 0.05, "max_steps": 60, "cell_filter": True}})
    atoms = structure()
    one_job(model, atoms, spec)                          # compile and warm
    times = {default: [], 1: []}
    steps = {}
    for _ in range(args.rounds):
        for n in (default, 1):
            set_blas_threads(n)
            t, steps[n] = one_job(model, atoms, spec)
            times[n].append(t)
    before, after = statistics.median(times[default]) * 1e3, statistics.median(times[1]) * 1e3
    print(f"{args.optimizer} relax with FrechetCellFilter, {steps[1]} steps, medians of {args.rounds} alternated rounds:")
    print(f"  BLAS {default} threads (OpenBLAS's default): {before:.2f} ms/step")
    print(f"  BLAS 1 thread (--blas-threads 1):        {after:.2f} ms/step  ({before / after:.1f}x faster)")


if __name__ == "__main__":
    main()
