"""Server-side MD jobs (issue 23): prints numbers, asserts nothing.

    python benchmarks/bench_jobs.py [--steps 2000] [--rounds 3]

Starts `aceserver serve Si-tiny --jobs-dir TMP --max-jobs 2` on a free loopback port and measures:
  1. NVE energy drift of a 64-atom Si cell at 300 K, 1 fs, `--steps` steps, run as a job
     (least-squares slope of E_pot + E_kin per atom over the run, eV/atom/ps);
  2. per-step cost of MD on 64 atoms, alternating in each round: the server-side job (submit to
     done, as the client sees it; write_every 10), in-process ASE VelocityVerlet on an
     ACECalculator (the baseline), and the client-driven loop (ASE VelocityVerlet on
     aceclient.ACEServerCalculator, one HTTP request per step); medians over the rounds;
  3. 100 jobs of 8 atoms (200 steps each) submitted at once against the same jobs one after another;
  4. calculate latency (64 atoms) with two MD jobs running against an idle server.
"""
from __future__ import annotations

import argparse
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import httpx
import numpy as np
from ase import units
from ase.build import bulk
from ase.md.velocitydistribution import Stationary, thermalize_momenta
from ase.md.verlet import VelocityVerlet

REPO = Path(__file__).resolve().parents[1]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def structure(a):
    return {"numbers": a.numbers.tolist(), "positions": a.positions.tolist(), "cell": a.cell.array.tolist(),
            "pbc": a.pbc.tolist()}


def job_md(url, atoms, steps, write_every=10):
    t0 = time.perf_counter()
    r = httpx.post(f"{url}/v1/jobs", json={"structure": structure(atoms), "kind": "md", "write_every": write_every,
                                          "parameters": {"steps": steps, "seed": 1, "temperature_K": 300}})
    job = r.json()["ids"][0]
    # wait as a client would: the msgpack frame stream ends when the job has (one connection, no polling)
    with httpx.stream("GET", f"{url}/v1/jobs/{job}/frames?format=msgpack", timeout=600) as frames:
        for _ in frames.iter_bytes():
            pass
    status = httpx.get(f"{url}/v1/jobs/{job}", timeout=60).json()
    assert status["state"] == "done", status
    return (time.perf_counter() - t0) / steps, job, status["seconds_per_step"]


def ase_md(calc, atoms, steps):
    a = atoms.copy()
    a.calc = calc
    thermalize_momenta(a, 300.0, rng=np.random.default_rng(1))
    Stationary(a)
    dyn = VelocityVerlet(a, timestep=units.fs)
    t0 = time.perf_counter()
    dyn.run(steps)
    return (time.perf_counter() - t0) / steps


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--steps", type=int, default=2000)
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--md-steps", type=int, default=500, help="steps per timing run in part 2")
    args = ap.parse_args()
    sys.path.insert(0, str(REPO / "client"))
    from aceclient import ACEServerCalculator

    from aceserver.calculator import ACECalculator
    from aceserver.loading import load_model

    model_path = REPO / "models" / "Si-tiny" / "Si-tiny.json"
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    with tempfile.TemporaryDirectory() as tmp:
        proc = subprocess.Popen([sys.executable, "-m", "aceserver.cli", "serve", str(model_path), "--port", str(port),
                                 "--jobs-dir", tmp, "--max-jobs", "2", "--log-level", "warning"])
        try:
            deadline = time.monotonic() + 300
            while time.monotonic() < deadline:
                try:
                    if httpx.get(url + "/readyz").status_code == 200:
                        break
                except httpx.HTTPError:
                    pass
                time.sleep(0.2)
            cell = bulk("Si", "diamond", a=5.43, cubic=True).repeat(2)
            # 1. drift
            _, job, _ = job_md(url, cell, args.steps, write_every=1)
            lines = httpx.get(f"{url}/v1/jobs/{job}/frames", timeout=300).text.splitlines()
            import json
            frames = [json.loads(x) for x in lines]
            t = np.array([f["time_fs"] for f in frames]) / 1000.0
            e = np.array([f["energy"] + f["kinetic_energy"] for f in frames]) / len(cell)
            slope = np.polyfit(t, e, 1)[0]
            print(f"1. NVE 64-atom Si, 300 K, 1 fs, {args.steps} steps as a job: drift {slope:+.2e} eV/atom/ps "
                  f"(|E - E0| max {np.abs(e - e[0]).max():.2e} eV/atom; mean T "
                  f"{np.mean([f['temperature_K'] for f in frames]):.0f} K)")
            # 2. per-step cost, alternating
            model = load_model(str(model_path))
            inproc, server, client, own = [], [], [], []
            ase_md(ACECalculator(model), cell, 20)   # warm
            with ACEServerCalculator(url) as remote:
                ase_md(remote, cell, 20)
                for _ in range(args.rounds):
                    inproc.append(ase_md(ACECalculator(model), cell, args.md_steps))
                    wall, _, per_step = job_md(url, cell, args.md_steps)
                    server.append(wall)
                    own.append(per_step)
                    client.append(ase_md(remote, cell, args.md_steps))
            b, s, c = (statistics.median(x) for x in (inproc, server, client))
            print(f"2. MD step, 64 atoms ({args.md_steps} steps, median of {args.rounds} alternating rounds): "
                  f"in-process ASE {1e3 * b:.3f} ms, server job {1e3 * s:.3f} ms ({s / b:.2f}x in-process; the "
                  f"job's own seconds_per_step {1e3 * statistics.median(own):.3f} ms), "
                  f"client-driven HTTP {1e3 * c:.3f} ms ({c / s:.2f}x the job)")
            # 3. many small jobs
            small = bulk("Si", "diamond", a=5.43, cubic=True)
            t0 = time.perf_counter()
            for _ in range(100):
                job_md(url, small, 200)
            seq = time.perf_counter() - t0
            t0 = time.perf_counter()
            ids = [httpx.post(f"{url}/v1/jobs", json={"structure": structure(small), "kind": "md", "write_every": 10,
                                                     "parameters": {"steps": 200, "seed": k}}).json()["ids"][0]
                   for k in range(100)]
            for j in ids:                  # each job's stream ends when it has (as in job_md)
                with httpx.stream("GET", f"{url}/v1/jobs/{j}/frames?format=msgpack", timeout=600) as frames:
                    for _ in frames.iter_bytes():
                        pass
            conc = time.perf_counter() - t0
            print(f"3. 100 jobs of 8 atoms x 200 steps: one after another {seq:.2f} s, submitted at once "
                  f"{conc:.2f} s ({seq / conc:.2f}x faster; --max-jobs 2)")
            # 4. calculate latency while two long jobs run (--max-jobs 2) against an idle server
            calc = {"structure": structure(cell)}

            def latencies(n=100):
                out = []
                with httpx.Client(timeout=60) as c:
                    for _ in range(n):
                        t0 = time.perf_counter()
                        assert c.post(f"{url}/v1/models/Si-tiny/calculate", json=calc).status_code == 200
                        out.append(time.perf_counter() - t0)
                return out
            idle = latencies()
            ids = [httpx.post(f"{url}/v1/jobs", json={"structure": structure(cell), "kind": "md", "write_every": 100,
                                                     "parameters": {"steps": 1_000_000, "seed": k}}).json()["ids"][0]
                   for k in range(2)]
            time.sleep(1.0)
            busy = latencies()
            for j in ids:
                httpx.delete(f"{url}/v1/jobs/{j}")
            print(f"4. calculate (64 atoms, JSON) latency: idle median {1e3 * statistics.median(idle):.2f} ms "
                  f"(p90 {1e3 * np.percentile(idle, 90):.2f}); with 2 MD jobs running median "
                  f"{1e3 * statistics.median(busy):.2f} ms (p90 {1e3 * np.percentile(busy, 90):.2f})")
        finally:
            proc.terminate()
            proc.wait(30)


if __name__ == "__main__":
    main()
