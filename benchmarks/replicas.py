"""Throughput of N `aceserver serve` processes behind nginx, against one, under the same client load.

Starts two servers and two nginx instances (one proxying to server 1 only, one to both; least_conn,
keep-alive) on 127.0.0.1, then drives each configuration in alternating rounds with the same
closed-loop load: C client threads, each posting one rattled 64-atom diamond cell (JSON) and waiting
for the answer. A direct connection to server 1 (no proxy) is the baseline. Prints requests/s,
µs/atom (wall time per evaluated atom), latency percentiles and ratios against the baseline.

    python benchmarks/replicas.py [--model zuo-Si] [--clients 8] [--seconds 6] [--rounds 2]

Needs nginx on PATH (Debian: nginx-light). Every process is bounded in time and killed at the end.
"""
from __future__ import annotations

import argparse
import contextlib
import os
import shutil
import socket
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import httpx
import numpy as np

NGINX_CONF = """
worker_processes 1;
pid {tmp}/nginx-{port}.pid;
error_log {tmp}/nginx-{port}.err warn;
events {{ worker_connections 1024; }}
http {{
    access_log off;
    client_body_temp_path {tmp}/body-{port};
    proxy_temp_path {tmp}/proxy-{port};
    fastcgi_temp_path {tmp}/fcgi-{port}; uwsgi_temp_path {tmp}/uwsgi-{port}; scgi_temp_path {tmp}/scgi-{port};
    upstream aceserver {{ least_conn; {servers} keepalive 32; }}
    server {{
        listen 127.0.0.1:{port};
        client_max_body_size 64m;
        location / {{ proxy_pass http://aceserver; proxy_http_version 1.1; proxy_set_header Connection ""; }}
    }}
}}
"""


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_ready(url: str, timeout: float = 300) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        with contextlib.suppress(httpx.HTTPError):
            if httpx.get(url + "/readyz", timeout=2).status_code == 200:
                return
        time.sleep(0.2)
    raise TimeoutError(f"{url} not ready")


def structure() -> dict:
    from ase.build import bulk

    atoms = bulk("Si", "diamond", a=5.43, cubic=True).repeat(2)
    atoms.rattle(0.05, seed=1)
    return {"structure": {"symbols": atoms.get_chemical_symbols(), "positions": atoms.positions.tolist(),
                          "cell": atoms.cell.array.tolist(), "pbc": True}, "properties": ["energy", "forces"]}


def drive(url: str, model: str, body: dict, clients: int, seconds: float) -> tuple[int, list[float], float]:
    latencies: list[float] = []
    failures: list[int] = []
    stop = time.monotonic() + seconds

    def client() -> None:
        with httpx.Client(base_url=url, timeout=120) as c:
            while time.monotonic() < stop:
                t0 = time.perf_counter()
                r = c.post(f"/v1/models/{model}/calculate", json=body)
                if r.status_code != 200:
                    failures.append(r.status_code)
                latencies.append(time.perf_counter() - t0)

    threads = [threading.Thread(target=client) for _ in range(clients)]
    start = time.monotonic()
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    if failures:
        raise RuntimeError(f"{len(failures)} failed requests at {url}: {failures[:5]}")
    return len(latencies), latencies, time.monotonic() - start


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", default="zuo-Si")
    ap.add_argument("--clients", type=int, default=8)
    ap.add_argument("--seconds", type=float, default=6.0)
    ap.add_argument("--rounds", type=int, default=2)
    args = ap.parse_args()
    nginx = shutil.which("nginx") or "/usr/sbin/nginx"
    if not os.path.exists(nginx):
        print("replicas: nginx is not installed (apt-get install nginx-light)", file=sys.stderr)
        return 2
    tmp = Path(tempfile.mkdtemp(prefix="aceserver-replicas-"))
    procs: list[subprocess.Popen] = []
    try:
        servers = []
        for k in range(2):
            port = free_port()
            log = open(tmp / f"server-{k}.log", "wb")
            procs.append(subprocess.Popen([sys.executable, "-m", "aceserver.cli", "serve", args.model,
                                           "--port", str(port)], stdout=log, stderr=subprocess.STDOUT))
            servers.append(port)
        urls = {"direct (1 server)": f"http://127.0.0.1:{servers[0]}"}
        for label, backends in (("nginx -> 1 server", servers[:1]), ("nginx -> 2 servers", servers)):
            port = free_port()
            conf = tmp / f"nginx-{port}.conf"
            conf.write_text(NGINX_CONF.format(tmp=tmp, port=port, servers=" ".join(
                f"server 127.0.0.1:{p};" for p in backends)))
            procs.append(subprocess.Popen([nginx, "-c", str(conf), "-p", str(tmp), "-g", "daemon off;"],
                                          stderr=open(tmp / f"nginx-{port}.out", "wb")))
            urls[label] = f"http://127.0.0.1:{port}"
        for port in servers:
            wait_ready(f"http://127.0.0.1:{port}")
        for url in urls.values():
            wait_ready(url, 30)
        body = structure()
        natoms = len(body["structure"]["symbols"])
        for url in urls.values():                      # one short warm-up each (connections, caches)
            drive(url, args.model, body, args.clients, 1.0)
        totals = {label: [0, [], 0.0] for label in urls}
        for _ in range(args.rounds):                   # alternate, so drifts in machine load hit all alike
            for label, url in urls.items():
                n, lat, wall = drive(url, args.model, body, args.clients, args.seconds)
                totals[label][0] += n
                totals[label][1] += lat
                totals[label][2] += wall
        cpus = len(os.sched_getaffinity(0))
        print(f"model {args.model}, {natoms} atoms per request, {args.clients} closed-loop clients, "
              f"{args.rounds} x {args.seconds:g} s per configuration, {cpus} CPUs")
        print(f"{'configuration':<20} {'req/s':>8} {'µs/atom':>8} {'p50 ms':>8} {'p90 ms':>8} {'ratio':>6}")
        base = None
        for label, (n, lat, wall) in totals.items():
            rate = n / wall
            base = base or rate
            p50, p90 = np.percentile(np.array(lat) * 1e3, [50, 90])
            print(f"{label:<20} {rate:>8.1f} {1e6 / (rate * natoms):>8.1f} {p50:>8.1f} {p90:>8.1f} {rate / base:>6.2f}")
    finally:
        for p in procs:         # SIGTERM: nginx's master then stops its workers too
            p.terminate()
        for p in procs:
            try:
                p.wait(10)
            except subprocess.TimeoutExpired:
                p.kill()
        shutil.rmtree(tmp, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
