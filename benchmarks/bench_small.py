"""Many small structures: `evaluate_many` against the large-cell per-atom rate. Prints numbers,
asserts nothing.

    python benchmarks/bench_small.py [--rounds 5] [--count 1000] [--no-http]

For Si-tiny (models/Si-tiny) and Cu-PBE-core-rep (tests/data), in one process, rounds
alternating every measurement (medians over rounds of each round's ratio):
  * the baseline: `model.evaluate` of a rattled large cell (216-atom diamond Si, 108-atom fcc
    Cu), one thread, per atom: "the atoms' worth" of n atoms is n times that;
  * `evaluate_many` of `--count` random 1-2-atom periodic cells (Si 20.0 Å³/atom, Cu 11.8
    Å³/atom, random shapes), one thread, against their atoms' worth; and the per-structure
    `evaluate` loop over the same cells;
  * 2 threads against 1 on the same batch (`evaluate_many(threads=None)`), and two large
    cells evaluated at once on 2 threads against one after the other (the ceiling that the
    machine and the kernels allow: the batch cannot scale better);
  * one `ACECalculator` call (energy, forces, stress) on a 2-atom Si cell, positions moved
    0.01 Å before each call (MD-like) and a new cell every call (screening);
  * the HTTP batch (`aceserver serve --kernel-threads 1`, msgpack, one request of all cells),
    as `structures` and as a packed batch (what `aceclient.calculate_many` sends), against
    in-process `evaluate_many` (Si-tiny only).
Wall-clock and process CPU time are both reported: on a shared machine the CPU time is the
steadier of the two for one-thread work.
"""
from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import msgpack
import numpy as np
from ase import Atoms
from ase.build import bulk

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "benchmarks"))
from bench_http import body, free_port, wait_ready  # noqa: E402

MODELS = {"Si-tiny": ("models/Si-tiny/Si-tiny.json", 14, 20.0),
          "Cu-PBE-core-rep": ("tests/data/Cu-PBE-core-rep.yace", 29, 11.8)}


_PAIR_POOL = ThreadPoolExecutor(2)


def random_cells(Z, vpa, count, seed=0):
    rng = np.random.default_rng(seed)
    out = []
    for _ in range(count):
        n = int(rng.integers(1, 3))
        while True:
            c = np.eye(3) + rng.normal(size=(3, 3)) * 0.15
            v = abs(np.linalg.det(c))
            if v > 0.5:
                break
        c *= (vpa * n / v) ** (1 / 3)
        out.append(Atoms(numbers=[Z] * n, positions=rng.random((n, 3)) @ c, cell=c, pbc=True))
    return out


def large(Z):
    a = (bulk("Si", "diamond", 5.43, cubic=True).repeat(3) if Z == 14
         else bulk("Cu", "fcc", 3.615, cubic=True).repeat(3)[:108])
    a.rattle(0.05, seed=1)
    return a


def clock(fn, repeat=1):
    w, c = time.perf_counter(), time.process_time()
    for _ in range(repeat):
        fn()
    return (time.perf_counter() - w) / repeat, (time.process_time() - c) / repeat


def med(xs):
    return statistics.median(xs)


def bench_model(name, rounds, count, http):
    import aceserver
    from aceserver.calculator import ACECalculator

    path, Z, vpa = MODELS[name]
    model = aceserver.load_model(str(REPO / path))
    cells = random_cells(Z, vpa, count)
    n_atoms = sum(len(a) for a in cells)
    big = large(Z)
    loop_cells = cells[: max(1, count // 5)]
    loop_atoms = sum(len(a) for a in loop_cells)

    def big_call():
        model.evaluate(big.numbers, big.positions, big.cell.array, big.pbc, threads=1)

    def many(threads):
        return lambda: model.evaluate_many(cells, threads=threads)

    def big_pair(threaded, calls=10):
        # large cells, 2 x `calls` one after the other or `calls` on each of two Python threads
        # at once (the kernels release the GIL): the machine's own 2-thread ceiling for this
        # potential's kernels. Each thread runs about as long as the batch (~25 ms): on a VM a
        # single pair of 2.4 ms calls read x1.06 where longer runs read x1.4-1.6 (an idle vCPU
        # wakes late), so short runs understate the ceiling.
        def some():
            for _ in range(calls):
                big_call()
        if not threaded:
            return lambda: (some(), some())
        return lambda: list(_PAIR_POOL.map(lambda _: some(), range(2)))

    def loop():
        for a in loop_cells:
            model.evaluate(a.numbers, a.positions, a.cell.array, a.pbc, threads=1)

    calc = ACECalculator(model, threads=1)
    md = random_cells(Z, vpa, 1, seed=7)[0]
    if len(md) == 1:
        md = random_cells(Z, vpa, 10, seed=7)
        md = next(a for a in md if len(a) == 2)
    md.calc = calc
    fresh = [a for a in random_cells(Z, vpa, 400, seed=8) if len(a) == 2][:100]

    def calc_md():
        md.positions = md.positions + 0.01 * np.sin(np.arange(6).reshape(2, 3) + time.perf_counter())
        md.get_potential_energy(), md.get_forces(), md.get_stress()

    state = {"k": 0}

    def calc_fresh():
        a = fresh[state["k"] % len(fresh)].copy()
        state["k"] += 1
        a.calc = calc
        a.get_potential_energy(), a.get_forces(), a.get_stress()

    for f in (big_call, many(1), many(None), loop, calc_md, calc_fresh, big_pair(True)):   # warm
        f()
    rows = {k: [] for k in ("big", "many1", "many2", "loop", "md", "fresh", "pair1", "pair2")}
    for _ in range(rounds):
        rows["big"].append(clock(big_call, 5))
        rows["pair1"].append(clock(big_pair(False)))
        rows["pair2"].append(clock(big_pair(True)))
        rows["many1"].append(clock(many(1)))
        rows["many2"].append(clock(many(None)))
        rows["loop"].append(clock(loop))
        rows["md"].append(clock(calc_md, 50))
        rows["fresh"].append(clock(calc_fresh, 50))
    out = {}
    for i, kind in ((0, "wall"), (1, "cpu")):
        per_atom = [r[i] / len(big) for r in rows["big"]]
        many1 = [r[i] / n_atoms for r in rows["many1"]]
        loop_pa = [r[i] / loop_atoms for r in rows["loop"]]
        md_r = [r[i] / 2 for r in rows["md"]]
        fresh_r = [r[i] / 2 for r in rows["fresh"]]
        out[kind] = dict(
            big=med(per_atom) * 1e6, many=med(many1) * 1e6,
            many_ratio=med([a / b for a, b in zip(many1, per_atom)]),
            loop=med(loop_pa) * 1e6, loop_ratio=med([a / b for a, b in zip(loop_pa, per_atom)]),
            md=med(md_r) * 2e6, md_ratio=med([a / b for a, b in zip(md_r, per_atom)]),
            fresh=med(fresh_r) * 2e6, fresh_ratio=med([a / b for a, b in zip(fresh_r, per_atom)]))
    out["threads"] = med([a[0] / b[0] for a, b in zip(rows["many1"], rows["many2"])])
    out["ceiling"] = med([a[0] / b[0] for a, b in zip(rows["pair1"], rows["pair2"])])
    out["atoms"] = n_atoms
    if http:
        out["http"] = bench_http(path, cells, rounds, many(1))
    return out


def bench_http(path, cells, rounds, in_process):
    import httpx

    port = free_port()
    url = f"http://127.0.0.1:{port}"
    cmd = [sys.executable, "-m", "aceserver.cli", "serve", f"m={REPO / path}", "--port", str(port),
           "--log-level", "warning", "--max-structures", str(len(cells)), "--kernel-threads", "1",
           "--workers", "1"]
    proc = subprocess.Popen(cmd, cwd=REPO, start_new_session=True)
    try:
        wait_ready(url, proc)
        from aceclient.calculator import packed_batch

        payload = body(cells, True)
        # what the in-process call computes (no committee), as `body` asks
        packed = msgpack.packb({"packed": packed_batch(cells), "properties": msgpack.unpackb(payload)["properties"]},
                               use_bin_type=True)
        client = httpx.Client(timeout=600)
        headers = {"content-type": "application/msgpack", "accept": "application/msgpack"}

        def post(content):
            def call():
                r = client.post(f"{url}/v1/models/m/calculate", content=content, headers=headers)
                r.raise_for_status()
            return call

        post(payload)(), post(packed)()
        ratios = {"structures": [], "packed": []}
        for _ in range(rounds):
            local = clock(in_process)[0]
            ratios["structures"].append(clock(post(payload))[0] / local)
            ratios["packed"].append(clock(post(packed))[0] / local)
        return {k: med(v) for k, v in ratios.items()}
    finally:
        proc.kill()
        proc.wait(10)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--count", type=int, default=1000)
    ap.add_argument("--models", default=",".join(MODELS))
    ap.add_argument("--no-http", action="store_true")
    args = ap.parse_args()
    print(f"machine: {os.cpu_count()} CPUs, load average {os.getloadavg()[0]:.1f}; "
          f"{args.count} random 1-2-atom cells, {args.rounds} alternating rounds, medians")
    for name in args.models.split(","):
        r = bench_model(name, args.rounds, args.count, http=not args.no_http and name == "Si-tiny")
        print(f"\n{name} ({r['atoms']} atoms in {args.count} cells)")
        for kind in ("wall", "cpu"):
            x = r[kind]
            print(f"  [{kind}] large cell {x['big']:.1f} µs/atom | evaluate_many {x['many']:.1f} µs/atom "
                  f"= {x['many_ratio']:.2f}x the atoms' worth | evaluate loop {x['loop']:.1f} µs/atom "
                  f"= {x['loop_ratio']:.2f}x")
            print(f"  [{kind}] ACECalculator on a 2-atom cell: MD-like {x['md']:.0f} µs = "
                  f"{x['md_ratio']:.2f}x, new cell each call {x['fresh']:.0f} µs = {x['fresh_ratio']:.2f}x")
        print(f"  2 threads vs 1 on the batch (wall): x{r['threads']:.2f}; two large cells on 2 threads "
              f"vs one after the other (the machine's ceiling): x{r['ceiling']:.2f}")
        if "http" in r:
            print(f"  HTTP batch (msgpack, 1 request) / in-process evaluate_many (wall): structures "
                  f"{r['http']['structures']:.2f}, packed {r['http']['packed']:.2f}")
    print(f"load average at the end {os.getloadavg()[0]:.1f}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
