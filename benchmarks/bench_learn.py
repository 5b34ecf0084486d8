"""Learning-service benchmark (`aceserver serve --learn`): prints numbers, asserts nothing.

    python benchmarks/bench_learn.py [--rounds 5] [--requests 20]

Fits a Si model with its state (`fit_with_state`: ace1 order 3, totaldegree 12, rcut 5.5 Å, BLR) on
tests/data/Si_tiny.xyz less 10 frames, serves it with --learn, and measures:
  1. POST /data latency of 1 and of 10 labelled Si cells (validated, logged and fsynced before the reply);
  2. time from a post to the refitted model being served (post -> status names the new version),
     for 1 and for 10 configurations;
  3. calculate latency (one 64-atom Si cell, sequential requests) while a refit runs, as a ratio to
     the latency with no refit, alternating the two in every round (medians);
  0. first, in process: one `incremental.update` of 10 configurations with BLAS limited to one thread
     (what the server's refit thread does with --kernel-threads 1) against BLAS's default threads,
     alternating (medians).
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


def blas_one_vs_default(path, new, rounds: int) -> None:
    from threadpoolctl import threadpool_limits

    from aceserver.loading import load_model
    model = load_model(str(path))
    state = incremental.load_state(incremental.state_path(path), model.sha256)
    times = {"one": [], "default": []}
    for _ in range(rounds):
        for kind in ("default", "one"):
            t0 = time.perf_counter()
            with threadpool_limits(limits=1 if kind == "one" else None, user_api="blas"):
                incremental.update(model, state, new, threads=1, progress=False)
            times[kind].append(time.perf_counter() - t0)
    one, default = statistics.median(times["one"]), statistics.median(times["default"])
    print(f"update of 10 configs in process: BLAS 1 thread {one:.3f} s, default threads {default:.3f} s "
          f"(default / one = {default / one:.2f})", flush=True)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--requests", type=int, default=20, help="calculate requests per phase and round")
    args = ap.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp)
        path, new = fitted(folder)
        blas_one_vs_default(path, new, args.rounds)
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
