"""A minute of mixed load on `aceserver serve`: valid requests, the attacks of issue 21 and clients
that disconnect mid-request, all on the loopback interface. Prints what it saw; exits 1 if the server
answered any 5xx, gave any wrong answer, let an attack through (anything but a 4xx with a reply under
1 MB, or for the short body a closed connection), grew by more than --max-rss-growth MB after the run,
or stalled /healthz (a probe over 1 s).

    python benchmarks/load_http.py [--seconds 60] [--clients 4] [--model FILE]

Valid requests (JSON and msgpack, 8-216 rattled Si atoms, one or several structures) are compared with
the in-process evaluator on the serial kernel, the one the server uses: the numbers must be equal to
1e-12 relative (JSON floats round-trip exactly; msgpack arrays are raw bytes). Attacks: extended XYZ with a
3,000,000-column Properties header, a count line claiming 1e8 atoms, 90,000 NaN atoms as JSON, a
structure whose neighbour pairs exceed the request budget, a Content-Length larger than the body, and
clients that send a large request and hang up before the answer. Everything is bounded: the run stops
after --seconds, every request has a timeout, the server is killed at the end.
"""
from __future__ import annotations

import argparse
import json
import os
import signal
import socket
import subprocess
import sys
import threading
import time
from collections import Counter
from pathlib import Path

import httpx
import msgpack
import numpy as np
from ase.build import bulk

REPO = Path(__file__).resolve().parents[1]
DEFAULT_MODEL = REPO / "models" / "Si-tiny" / "Si-tiny.json"
RTOL = 1e-12
BODY_TIMEOUT = 5.0      # s, the server's --body-timeout here (default 60): the short-body attack waits 3x


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def rss_mb(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return float("nan")


def structure(rng, reps=None):
    reps = reps or int(rng.integers(1, 4))
    atoms = bulk("Si", "diamond", a=5.43, cubic=True).repeat(reps)
    atoms.rattle(0.05, seed=int(rng.integers(1 << 30)))
    return atoms


def doc(atoms_list, binary: bool):
    def arr(a, dtype):
        a = np.ascontiguousarray(a, dtype=dtype)
        return {"dtype": dtype, "shape": list(a.shape), "data": a.tobytes()} if binary else a.tolist()
    d = {"structures": [{"numbers": arr(a.numbers, "<i8"), "positions": arr(a.positions, "<f8"),
                         "cell": arr(np.asarray(a.cell), "<f8"), "pbc": a.pbc.tolist()} for a in atoms_list],
         "properties": ["energy", "forces"]}
    return (msgpack.packb(d), "application/msgpack") if binary else (json.dumps(d).encode(), "application/json")


def unpack(obj):
    if isinstance(obj, dict) and set(obj) == {"dtype", "shape", "data"}:
        return np.frombuffer(obj["data"], dtype=obj["dtype"]).reshape(obj["shape"])
    if isinstance(obj, dict):
        return {k: unpack(v) for k, v in obj.items()}
    if isinstance(obj, list):
        return [unpack(v) for v in obj]
    return obj


class Tally:
    def __init__(self):
        self.lock = threading.Lock()
        self.status = Counter()          # (kind, status) -> count
        self.wrong = 0
        self.errors = Counter()          # transport errors by kind

    def add(self, kind, status):
        with self.lock:
            self.status[(kind, status)] += 1


def valid(client, url, model, rng, tally):
    atoms_list = [structure(rng) for _ in range(int(rng.integers(1, 4)))]
    binary = bool(rng.integers(2))
    body, ctype = doc(atoms_list, binary)
    r = client.post(url, content=body, headers={"Content-Type": ctype, "Accept": ctype})
    tally.add("valid", r.status_code)
    if r.status_code != 200:
        return
    results = (unpack(msgpack.unpackb(r.content)) if binary else r.json())["results"]
    for atoms, res in zip(atoms_list, results):
        ev = model.evaluate(atoms.numbers, atoms.positions, atoms.cell.array, atoms.pbc, threads=1)
        if (abs(res["energy"] - ev.energy) > RTOL * abs(ev.energy)
                or np.max(np.abs(np.asarray(res["forces"]) - ev.forces)) > RTOL * max(1.0, np.max(np.abs(ev.forces)))):
            with tally.lock:
                tally.wrong += 1


def attack_columns(client, url, rng, tally):
    text = "2\nProperties=species:S:1:pos:R:3000000\nSi 0 0 0\nSi 1 1 1\n"
    r = client.post(url, content=text.encode(), headers={"Content-Type": "chemical/x-extxyz"})
    tally.add("extxyz-columns", r.status_code)


def attack_count(client, url, rng, tally):
    text = "100000000\nProperties=species:S:1:pos:R:3\nSi 0 0 0\n"
    r = client.post(url, content=text.encode(), headers={"Content-Type": "chemical/x-extxyz"})
    tally.add("extxyz-count", r.status_code)


NAN_BODY = None


def attack_nan(client, url, rng, tally):
    global NAN_BODY
    if NAN_BODY is None:
        n = 90_000          # under --max-atoms, so validation (and its error document) sees them all
        NAN_BODY = json.dumps({"structure": {"numbers": [14] * n, "positions": [["NaN", 0, 0]] * n}}).encode()
    r = client.post(url, content=NAN_BODY, headers={"Content-Type": "application/json"})
    tally.add("nan-atoms", r.status_code)
    if len(r.content) > 1 << 20:
        tally.add("nan-atoms-reply-over-1MB", r.status_code)


def attack_pairs(client, url, rng, tally):
    # 10,648 atoms 0.5 Å apart on a cubic grid: ~3·10^7 pairs within 5.5 Å, under the neighbour list's
    # own 5·10^7 cap, so only a per-request budget stops it before seconds of work and gigabytes
    g = np.arange(22) * 0.5
    pos = np.stack(np.meshgrid(g, g, g, indexing="ij"), -1).reshape(-1, 3)
    body, ctype = json.dumps({"structure": {"numbers": [14] * len(pos), "positions": pos.tolist()}}).encode(), \
        "application/json"
    r = client.post(url, content=body, headers={"Content-Type": ctype})
    tally.add("pair-budget", r.status_code)


def attack_content_length(port, rng, tally):
    with socket.create_connection(("127.0.0.1", port), timeout=30) as s:
        s.sendall(b"POST /v1/models/m/calculate HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
                  b"Content-Length: 1000\r\n\r\n{\"structure\":")
        s.settimeout(3 * BODY_TIMEOUT)
        try:
            head = s.recv(64)
            tally.add("short-body", int(head.split()[1]) if head.startswith(b"HTTP/") else "closed")
        except TimeoutError:
            tally.add("short-body", "timeout")


def disconnect(port, rng, tally):
    atoms = structure(rng, reps=6)       # 1728 atoms, ten copies: seconds of work
    body, ctype = doc([atoms] * 10, False)
    with socket.create_connection(("127.0.0.1", port), timeout=30) as s:
        s.sendall(b"POST /v1/models/m/calculate HTTP/1.1\r\nHost: x\r\nContent-Type: " + ctype.encode()
                  + f"\r\nContent-Length: {len(body)}\r\n\r\n".encode() + body)
        time.sleep(0.2)
    tally.add("disconnect", "sent")


ACTIONS = [(valid, 12), (attack_columns, 1), (attack_count, 1), (attack_nan, 1), (attack_pairs, 1),
           (attack_content_length, 1), (disconnect, 1)]


def client_loop(port, model, seed, deadline, tally):
    rng = np.random.default_rng(seed)
    url = f"http://127.0.0.1:{port}/v1/models/m/calculate"
    names, weights = zip(*ACTIONS)
    p = np.array(weights, float) / sum(weights)
    with httpx.Client(timeout=60) as client:
        while time.monotonic() < deadline:
            action = names[rng.choice(len(names), p=p)]
            try:
                if action in (attack_content_length, disconnect):
                    action(port, rng, tally)
                else:
                    action(client, url, *((model, rng, tally) if action is valid else (rng, tally)))
            except (httpx.HTTPError, OSError) as ex:
                with tally.lock:
                    tally.errors[f"{action.__name__}: {type(ex).__name__}"] += 1


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--seconds", type=float, default=60.0)
    ap.add_argument("--clients", type=int, default=4)
    ap.add_argument("--model", default=str(DEFAULT_MODEL))
    ap.add_argument("--max-rss-growth", type=float, default=100.0, help="MB")
    ap.add_argument("--serve-args", default="", help="extra `aceserver serve` options")
    args = ap.parse_args()

    import aceserver
    model = aceserver.load_model(args.model)
    port = free_port()
    cmd = [sys.executable, "-m", "aceserver.cli", "serve", f"m={args.model}", "--port", str(port),
           "--log-level", "warning", "--body-timeout", str(BODY_TIMEOUT), *args.serve_args.split()]
    server = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    try:
        with httpx.Client(timeout=5) as probe:
            t_end = time.monotonic() + 300
            while True:
                try:
                    if probe.get(f"http://127.0.0.1:{port}/readyz").status_code == 200:
                        break
                except httpx.HTTPError:
                    pass
                if time.monotonic() > t_end or server.poll() is not None:
                    print("server did not become ready", file=sys.stderr)
                    return 1
                time.sleep(0.2)
            valid(probe, f"http://127.0.0.1:{port}/v1/models/m/calculate", model,
                  np.random.default_rng(0), Tally())       # warm the server's paths once
            rss0 = rss_mb(server.pid)
            tally, rss, healthz = Tally(), [], []
            deadline = time.monotonic() + args.seconds
            threads = [threading.Thread(target=client_loop, args=(port, model, k, deadline, tally), daemon=True)
                       for k in range(args.clients)]
            for t in threads:
                t.start()
            while time.monotonic() < deadline:
                t0 = time.perf_counter()
                try:
                    ok = probe.get(f"http://127.0.0.1:{port}/healthz").status_code == 200
                except httpx.HTTPError:
                    ok = False
                healthz.append((time.perf_counter() - t0, ok))
                rss.append(rss_mb(server.pid))
                time.sleep(0.5)
            for t in threads:
                t.join(timeout=120)
            time.sleep(2.0)
            rss1 = rss_mb(server.pid)
    finally:
        server.send_signal(signal.SIGTERM)
        try:
            server.wait(timeout=60)
        except subprocess.TimeoutExpired:
            server.kill()

    n5xx = sum(c for (k, s), c in tally.status.items() if isinstance(s, int) and s >= 500)
    # every attack must be refused with a 4xx (or, for the short body, the connection closed): a 2xx,
    # a timeout or an oversized error document is a failure
    bad_attacks = sum(c for (k, s), c in tally.status.items()
                      if k not in ("valid", "disconnect") and not (isinstance(s, int) and 400 <= s < 500)
                      and not (k == "short-body" and s == "closed"))
    bad_attacks += sum(c for (k, s), c in tally.status.items() if k.endswith("over-1MB"))
    print(f"load_http: {args.seconds:.0f} s, {args.clients} clients, model {Path(args.model).name}, "
          f"{os.cpu_count()} CPUs")
    for (kind, status), c in sorted(tally.status.items(), key=lambda x: (x[0][0], str(x[0][1]))):
        print(f"  {kind:<26} {status!s:>8}  x{c}")
    for k, c in sorted(tally.errors.items()):
        print(f"  transport error {k}: x{c}")
    lat = np.array([t for t, _ in healthz])
    print(f"  /healthz: {len(lat)} probes, {sum(not ok for _, ok in healthz)} failed, "
          f"median {1e3 * np.median(lat):.1f} ms, max {1e3 * lat.max():.1f} ms")
    print(f"  server RSS: {rss0:.0f} MB after warm-up, peak {max(rss):.0f} MB, {rss1:.0f} MB at the end "
          f"(growth {rss1 - rss0:+.0f} MB)")
    print(f"  5xx: {n5xx}; wrong answers: {tally.wrong}; attacks not refused with a small 4xx: {bad_attacks}")
    failed = n5xx or tally.wrong or bad_attacks or rss1 - rss0 > args.max_rss_growth or lat.max() > 1.0 \
        or any(not ok for _, ok in healthz)
    print("load_http:", "FAIL" if failed else "PASS")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
