"""Writing the learning data log out (the download route's body, `aceserver.learning.export`), in
process: prints numbers, asserts nothing.

    python benchmarks/bench_learn_download.py [--configs 2000] [--atoms 64] [--rounds 5]

A log of CONFIGS random Si configurations of ATOMS atoms (in 20 batches, with virials) is written
out three ways, alternating in every round (medians):
  baseline  the way docs/learning-service.md showed before the route: every batch read whole
            (`DataLog.read`), turned into `ase.Atoms` and written with `ase.io.write` (extxyz; rounds
            positions and forces to 8 decimals);
  extxyz    `export.records` + `export.to_extxyz` (17 significant digits, lossless), a page at a time;
  msgpack   `export.records` + `export.to_msgpack` (raw float64).
Prints the times as ratios to the baseline, MB/s, and the peak Python heap (tracemalloc) of each
against the size of the whole file: the streamed forms' peak stays at about a page of rows.
"""
from __future__ import annotations

import argparse
import io
import statistics
import tempfile
import time
import tracemalloc

import numpy as np
from ase.io import write

from aceserver.fitting.data import Config
from aceserver.learning import DataLog, export
from aceserver.learning.datalog import to_atoms


def make_log(directory: str, configs: int, atoms: int) -> DataLog:
    rng = np.random.default_rng(0)
    log = DataLog(directory)
    per = max(1, configs // 20)
    for start in range(0, configs, per):
        log.append("si", [Config(numbers=np.full(atoms, 14), positions=rng.uniform(0, 10, (atoms, 3)),
                                 cell=10.0 * np.eye(3), pbc=np.ones(3, bool), energy=float(rng.normal()),
                                 forces=rng.normal(size=(atoms, 3)), virial=rng.normal(size=(3, 3)))
                          for _ in range(min(per, configs - start))])
    return log


def baseline(log: DataLog, out) -> None:
    for b in log.batches("si"):
        frames = [to_atoms(c) for c in log.read("si", b["version"])]
        write(out, frames, format="extxyz")


def streamed(encode):
    def run(log: DataLog, out) -> None:
        for rec in export.records(log, "si", fitted=0):
            out.write(encode(rec))
    return run


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--configs", type=int, default=2000)
    ap.add_argument("--atoms", type=int, default=64)
    ap.add_argument("--rounds", type=int, default=5)
    args = ap.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        log = make_log(tmp, args.configs, args.atoms)
        ways = {"baseline": (baseline, io.StringIO), "extxyz": (streamed(export.to_extxyz), io.BytesIO),
                "msgpack": (streamed(export.to_msgpack), io.BytesIO)}
        times = {k: [] for k in ways}
        sizes = {}
        for _ in range(args.rounds):
            for name, (run, buffer) in ways.items():
                out = buffer()
                t = time.perf_counter()
                run(log, out)
                times[name].append(time.perf_counter() - t)
                sizes[name] = len(out.getvalue())
        peaks = {}
        for name, (run, _) in ways.items():
            sink = _Sink()                 # counts bytes, keeps none: the peak is the writer's own
            tracemalloc.start()
            run(log, sink)
            peaks[name] = tracemalloc.get_traced_memory()[1]
            tracemalloc.stop()
        base = statistics.median(times["baseline"])
        print(f"{args.configs} configurations of {args.atoms} atoms, {args.rounds} alternated rounds (medians)")
        for name in ways:
            t = statistics.median(times[name])
            print(f"  {name:8s} {t:7.3f} s  ratio {t / base:5.2f}  {sizes[name] / t / 1e6:6.1f} MB/s  "
                  f"file {sizes[name] / 1e6:6.1f} MB  peak heap {peaks[name] / 1e6:6.2f} MB")


class _Sink:
    def __init__(self):
        self.n = 0

    def write(self, data) -> None:
        self.n += len(data)


if __name__ == "__main__":
    main()
