"""The served process's garbage collector with and without the frozen heap (`aceserver serve` against
`aceserver serve --no-gc-freeze`): prints numbers, asserts nothing.

    python benchmarks/bench_gc_freeze.py [--rounds 7] [--requests 20] [--count 1000]

Two servers of Si-tiny (--kernel-threads 1 --workers 1), one of each kind, take the same HTTP batch
(msgpack `structures`: bench_small's `--count` random 1-2-atom periodic cells), `--requests` in a row
per round, the two servers alternating every round. Per request: the wall time seen by the client
(the mean over the round, as a full collection hits one request in a few, and the median), the
server's CPU time (/proc) and the time its garbage collector ran (the collections' own clocks,
from /metrics.json `process.gc`, which counts them by generation). Medians over rounds.
"""
from __future__ import annotations

import argparse
import statistics
import subprocess
import sys
import time
from pathlib import Path

import httpx

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "benchmarks"))
from bench_http import body, cpu_seconds, free_port, wait_ready  # noqa: E402
from bench_small import random_cells  # noqa: E402

KINDS = ("frozen", "not frozen")


def start(kind: str, count: int):
    port = free_port()
    cmd = [sys.executable, "-m", "aceserver.cli", "serve", f"m={REPO / 'models/Si-tiny/Si-tiny.json'}",
           "--port", str(port), "--log-level", "warning", "--max-structures", str(count),
           "--kernel-threads", "1", "--workers", "1"] + (["--no-gc-freeze"] if kind == "not frozen" else [])
    return subprocess.Popen(cmd, cwd=REPO, start_new_session=True), f"http://127.0.0.1:{port}"


def gc_status(client, url):
    return client.get(f"{url}/metrics.json").json()["process"]["gc"]


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--rounds", type=int, default=7)
    p.add_argument("--requests", type=int, default=20)
    p.add_argument("--count", type=int, default=1000)
    args = p.parse_args()
    payload = body(random_cells(14, 20.0, args.count), True)
    headers = {"content-type": "application/msgpack", "accept": "application/msgpack"}
    servers = {k: start(k, args.count) for k in KINDS}
    client = httpx.Client(timeout=600)
    try:
        for proc, url in servers.values():
            wait_ready(url, proc)
            for _ in range(3):
                client.post(f"{url}/v1/models/m/calculate", content=payload, headers=headers).raise_for_status()
        rows = {k: {"wall": [], "median": [], "cpu": [], "gc": [], "full": []} for k in KINDS}
        for _ in range(args.rounds):
            for kind in KINDS:
                proc, url = servers[kind]
                g0, c0 = gc_status(client, url), cpu_seconds(proc.pid)
                walls = []
                for _ in range(args.requests):
                    t0 = time.perf_counter()
                    client.post(f"{url}/v1/models/m/calculate", content=payload, headers=headers).raise_for_status()
                    walls.append(time.perf_counter() - t0)
                g1, c1 = gc_status(client, url), cpu_seconds(proc.pid)
                n = args.requests
                rows[kind]["wall"].append(statistics.mean(walls))
                rows[kind]["median"].append(statistics.median(walls))
                rows[kind]["cpu"].append((c1 - c0) / n)
                rows[kind]["gc"].append((sum(g1["seconds"]) - sum(g0["seconds"])) / n)
                rows[kind]["full"].append((g1["collections"][2] - g0["collections"][2]) / n)
        frozen = gc_status(client, servers["frozen"][1])["frozen"]
        print(f"HTTP batch of {args.count} Si-tiny cells, {args.requests} requests a round, medians of {args.rounds} "
              f"alternated rounds (frozen server: {frozen} objects frozen):")
        med = {k: {f: statistics.median(v) for f, v in r.items()} for k, r in rows.items()}
        for kind in KINDS:
            m = med[kind]
            print(f"  {kind:10s}  wall {1e3 * m['wall']:7.2f} ms (median {1e3 * m['median']:7.2f})  server CPU {1e3 * m['cpu']:7.2f} ms  "
                  f"gc {1e3 * m['gc']:6.3f} ms  full collections {m['full']:.3f} per request")
        a, b = med["frozen"], med["not frozen"]
        print(f"  not frozen / frozen: wall {b['wall'] / a['wall']:.3f}, server CPU {b['cpu'] / a['cpu']:.3f}; "
              f"gc time saved {1e3 * (b['gc'] - a['gc']):.3f} ms per request")
    finally:
        for proc, _ in servers.values():
            proc.kill()
            proc.wait(10)
    return 0


if __name__ == "__main__":
    sys.exit(main())
