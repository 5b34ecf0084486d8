"""Learning-service benchmark (`aceserver serve --learn`): prints numbers, asserts nothing.

    python benchmarks/bench_learn.py [--rounds 5] [--requests 20]

Fits a Si model with its state (`fit_with_state`: ace1 order 3, totaldegree 12, rcut 5.5 Å, BLR) on
tests/data/Si_tiny.xyz less 10 frames, serves it with --learn, and measures:
  1. POST /data latency of 1 and of 10 labelled Si cells (validated, logged and fsynced before the reply);
  2. time from a post to the refitted model being served (post -> status names the new version),
     for 1 and for 10 configurations;
  3. calculate latency (one 64-atom Si cell, sequential requests) while a refit runs, as a ratio to
     the latency with no refit, alternating the two in every round (medians);
  0. first, in process: one `incremental.update` of 10 configurations with the process's BLAS set
     to one thread (the server's default, `--blas-threads 1`) against `--blas-threads-other` threads
     (default 2), set from the main thread as the server does, alternating (medians). `--blas-only`
     stops there.
"""
from __future__ import annotations

import argparse
import io
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import httpx
from ase.build import bulk

from bench_http import free_port, wait_ready

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "tests"))

from _learn_support import structure_doc  # noqa: E402
from aceserver.fitting import incremental  # noqa: E402
from aceserver.fitting.config import parse_config  # noqa: E402
from aceserver.fitting.data import Keys, read_configs  # noqa: E402


def fitted(folder: Path):
    text = (REPO / "tests/data/Si_tiny.xyz").read_text().splitlines(keepends=True)
    frames, i = [], 0
    while i < len(text):
        n = int(text[i])
        frames.append("".join(text[i:i + n + 2]))
        i += n + 2
    (folder / "old.xyz").write_text("".join(frames[:-10]))
    (folder / "new.xyz").write_text("".join(frames[-10:]))
    cfg = parse_config({"model": dict(elements=["Si"], order=3, totaldegree=12, rcut=5.5),
                        "data": dict(train="old.xyz", energy_key="dft_energy", force_key="dft_force",
                                     virial_key="dft_virial"),
                        "E0": {"Si": -158.54496821}, "solver": {"name": "blr"},
                        "output": {"model": "si.json", "plots": None, "active_set": False}}, folder)
    incremental.fit_with_state(cfg, plots=False, progress=False, out=io.StringIO())
    return cfg.output_model, read_configs(folder / "new.xyz", Keys("dft_energy", "dft_force", "dft_virial"))


def blas_one_vs_other(path, new, rounds: int, other: int) -> None:
    from aceserver.loading import load_model
    from aceserver.serving.process import set_blas_threads
    model = load_model(str(path))
    state = incremental.load_state(incremental.state_path(path), model.sha256)
    times = {1: [], other: []}
    for _ in range(rounds):
        for n in (other, 1):
            set_blas_threads(n)
            t0 = time.perf_counter()
            incremental.update(model, state, new, threads=1, progress=False)
            times[n].append(time.perf_counter() - t0)
    one, many = statistics.median(times[1]), statistics.median(times[other])
    print(f"update of 10 configs in process: BLAS 1 thread {one:.3f} s, {other} threads {many:.3f} s "
          f"({other} / 1 = {many / one:.2f}; medians of {rounds})", flush=True)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--requests", type=int, default=20, help="calculate requests per phase and round")
    ap.add_argument("--blas-threads-other", type=int, default=2, help="BLAS threads compared with 1 in step 0")
    ap.add_argument("--blas-only", action="store_true", help="run step 0 only")
    args = ap.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp)
        path, new = fitted(folder)
        blas_one_vs_other(path, new, args.rounds, args.blas_threads_other)
        if args.blas_only:
            return
        port = free_port()
        url = f"http://127.0.0.1:{port}"
        proc = subprocess.Popen([sys.executable, "-m", "aceserver.cli", "serve", f"si={path}", "--learn", "si",
                                 "--learn-dir", str(folder / "learn"), "--port", str(port), "--workers", "2",
                                 "--log-level", "warning"], cwd=REPO)
        try:
            wait_ready(url, proc)
            client = httpx.Client(base_url=url, timeout=120)
            cell = bulk("Si", cubic=True).repeat(2)
            calc = {"structure": {"numbers": cell.numbers.tolist(), "positions": cell.positions.tolist(),
                                  "cell": cell.cell.array.tolist(), "pbc": [True] * 3}, "properties": ["energy"]}
            client.post("/v1/models/si/calculate", json=calc)

            def status():
                return client.get("/v1/models/si/data").json()

            def post(configs):
                t0 = time.perf_counter()
                r = client.post("/v1/models/si/data", json={"structures": [structure_doc(c) for c in configs]})
                r.raise_for_status()
                return r.json()["version"], time.perf_counter() - t0

            def until_served(version):
                while status()["data_version"] < version:
                    time.sleep(0.01)

            def calc_median(n, during=None):
                times = []
                for _ in range(n):
                    if during is not None and status()["refit"]["state"] != "running":
                        break
                    t0 = time.perf_counter()
                    client.post("/v1/models/si/calculate", json=calc).raise_for_status()
                    times.append(time.perf_counter() - t0)
                return statistics.median(times) if times else None, len(times)

            posts, served = {1: [], 10: []}, {1: [], 10: []}
            ratios = []
            for r in range(args.rounds):
                idle, _ = calc_median(args.requests)
                for size in (1, 10):
                    t0 = time.perf_counter()
                    version, seconds = post(new[:size])
                    posts[size].append(seconds)
                    busy, n = calc_median(args.requests, during=True)
                    until_served(version)
                    served[size].append(time.perf_counter() - t0)
                    if busy is not None and size == 10:
                        ratios.append((busy / idle, n))
                print(f"round {r}: idle calculate {1e3 * idle:.1f} ms; during the 10-config refit "
                      f"{'-' if not ratios else f'{ratios[-1][0]:.2f}x ({ratios[-1][1]} requests)'}", flush=True)
            for size, times in served.items():
                print(f"POST /data, {size} config(s) (validated, logged, fsynced): median "
                      f"{1e3 * statistics.median(posts[size]):.1f} ms")
                print(f"post -> refitted model served, {size} config(s): median {statistics.median(times):.2f} s")
            if ratios:
                print(f"calculate latency during a refit / idle: median {statistics.median(r for r, _ in ratios):.2f}")
        finally:
            proc.terminate()
            proc.wait(30)


if __name__ == "__main__":
    main()
