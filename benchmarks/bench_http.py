"""HTTP serving benchmark: prints numbers, asserts nothing.

    python benchmarks/bench_http.py [--model FILE] [--repeat 300]

Starts `aceserver serve` on a free loopback port and measures, for a 64-atom Si structure:
  1. per-request overhead over in-process `model.evaluate` (msgpack and JSON, one keep-alive client);
  2. requests/s with 8 concurrent clients;
  3. one batch request of 100 structures against 100 single requests.
Without --model it uses a random-parameter ace1_model(["Si"], order=3, totaldegree=10, rcut=5.0).
"""
from __future__ import annotations

import argparse
import os
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import httpx
import msgpack
import numpy as np
from ase.build import bulk

REPO = Path(__file__).resolve().parents[1]


def wait_ready(url: str, proc: subprocess.Popen, seconds: float = 300) -> None:
    """Poll /readyz until the server at url answers 200 (RuntimeError if proc exits or time runs out)."""
    deadline = time.monotonic() + seconds
    while True:
        try:
            if httpx.get(url + "/readyz", timeout=2).status_code == 200:
                return
        except httpx.HTTPError:
            pass
        if time.monotonic() > deadline or proc.poll() is not None:
            raise RuntimeError("server did not become ready")
        time.sleep(0.1)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def body(atoms_list, binary: bool) -> bytes:
    def arr(a, dtype):
        a = np.ascontiguousarray(a, dtype=dtype)
        return {"dtype": dtype, "shape": list(a.shape), "data": a.tobytes()} if binary else a.tolist()
    doc = {"structures": [{"numbers": arr(a.numbers, "<i8"), "positions": arr(a.positions, "<f8"),
                           "cell": arr(np.asarray(a.cell), "<f8"), "pbc": a.pbc.tolist()} for a in atoms_list],
           # what the in-process call computes (no committee, even where the model has one)
           "properties": ["energy", "forces", "stress", "virial", "energies"]}
    return msgpack.packb(doc) if binary else httpx.Request("POST", "/", json=doc).content


def timed(fn, repeat: int) -> list[float]:
    out = []
    for _ in range(repeat):
        t0 = time.perf_counter()
        fn()
        out.append(time.perf_counter() - t0)
    return out


def ms(xs) -> str:
    return f"median {1e3 * statistics.median(xs):.3f} ms (p10 {1e3 * np.percentile(xs, 10):.3f}, " \
           f"p90 {1e3 * np.percentile(xs, 90):.3f})"


def cpu_seconds(pid: int) -> float:
    """User + system CPU time of a process (Linux /proc), s."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def cpu_per_call(fn, repeat: int, pid: int) -> tuple[float, float]:
    """CPU seconds per call spent in this process and in process `pid`: unlike wall time, this does
    not depend on how busy the machine is."""
    c0, s0 = time.process_time(), cpu_seconds(pid)
    for _ in range(repeat):
        fn()
    return (time.process_time() - c0) / repeat, (cpu_seconds(pid) - s0) / repeat


def overhead(remote, local) -> str:
    med = statistics.median(remote) - statistics.median(local)
    p10 = np.percentile(remote, 10) - np.percentile(local, 10)
    return f"overhead over in-process: {1e3 * med:.3f} ms (medians), {1e3 * p10:.3f} ms (p10s)"


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", help="model file (default: a random-parameter Si model)")
    ap.add_argument("--repeat", type=int, default=300)
    ap.add_argument("--workers", type=int, default=0, help="server evaluation threads (default: one per CPU)")
    args = ap.parse_args()

    import aceserver

    tmp = tempfile.TemporaryDirectory()
    path = args.model
    if path is None:
        model = aceserver.ace1_model(elements=["Si"], order=3, totaldegree=10, rcut=5.0)
        model.parameters = np.random.default_rng(0).normal(scale=0.1, size=model.length_basis)
        path = os.path.join(tmp.name, "si.json")
        model.save(path)
    model = aceserver.load_model(path)
    atoms = bulk("Si", cubic=True).repeat(2)   # 64 atoms
    atoms.rattle(0.05, seed=1)
    print(f"model: {path} ({model.length_basis} basis functions, rcut {model.rcut} Å); structure: {len(atoms)} atoms")
    print(f"machine: {os.cpu_count()} CPUs; python {sys.version.split()[0]}")

    # the server runs each request on the serial kernel (--kernel-threads 1): compare like with like
    def evaluate(a):
        return model.evaluate(a.numbers, a.positions, a.cell[:], a.pbc, threads=1)
    timed(lambda: evaluate(atoms), 20)
    local = timed(lambda: evaluate(atoms), args.repeat)
    print(f"in-process evaluate (serial kernel): {ms(local)}")
    c0 = time.process_time()
    for _ in range(args.repeat):
        evaluate(atoms)
    local_cpu = (time.process_time() - c0) / args.repeat
    print(f"in-process evaluate CPU time: {1e3 * local_cpu:.3f} ms per call")

    port = free_port()
    url = f"http://127.0.0.1:{port}"
    cmd = [sys.executable, "-m", "aceserver.cli", "serve", f"si={path}", "--port", str(port),
           "--log-level", "warning", "--max-structures", "1000"]
    if args.workers:
        cmd += ["--workers", str(args.workers)]
    proc = subprocess.Popen(cmd, cwd=REPO, start_new_session=True)
    try:
        wait_ready(url, proc)
        calc_url = f"{url}/v1/models/si/calculate"
        for binary, name in ((True, "msgpack"), (False, "JSON")):
            ctype = "application/msgpack" if binary else "application/json"
            payload = body([atoms], binary)
            handler = []
            with httpx.Client(headers={"Content-Type": ctype, "Accept": ctype}) as client:
                def call():
                    r = client.post(calc_url, content=payload)
                    assert r.status_code == 200, r.text
                    t = dict(part.strip().split(";dur=") for part in r.headers["server-timing"].split(","))
                    handler.append((float(t["handler"]) - float(t["evaluate"])) / 1e3)
                timed(call, 20)
                handler.clear()
                remote = timed(call, args.repeat)
                client_cpu, server_cpu = cpu_per_call(call, args.repeat, proc.pid)
            print(f"  server handler time outside model.evaluate ({name}): {ms(handler)}")
            print(f"  CPU per request ({name}): server {1e3 * server_cpu:.3f} ms (of which evaluate "
                  f"~{1e3 * local_cpu:.3f}), client (httpx) {1e3 * client_cpu:.3f} ms; "
                  f"CPU overhead over in-process {1e3 * (server_cpu + client_cpu - local_cpu):.3f} ms")
            print(f"remote {name:7s} request: {ms(remote)}; {overhead(remote, local)}")

        # the same with the standard library's minimal client: separates server cost from httpx's
        import http.client
        conn = http.client.HTTPConnection("127.0.0.1", port)
        payload = body([atoms], True)
        def raw_call():
            conn.request("POST", "/v1/models/si/calculate", body=payload,
                         headers={"Content-Type": "application/msgpack", "Accept": "application/msgpack"})
            r = conn.getresponse()
            r.read()
            assert r.status == 200
        timed(raw_call, 20)
        remote = timed(raw_call, args.repeat)
        conn.close()
        print(f"remote msgpack via http.client: {ms(remote)}; {overhead(remote, local)}")

        # with the aceclient calculator (what users call)
        sys.path.insert(0, str(REPO / "client"))
        from aceclient import ACEServerCalculator
        with ACEServerCalculator(url, model="si") as calc:
            def calc_call():
                calc.calculate(atoms, ["energy", "forces", "stress"])
            timed(calc_call, 20)
            remote = timed(calc_call, args.repeat)
            client_cpu, server_cpu = cpu_per_call(calc_call, args.repeat, proc.pid)
        print(f"ACEServerCalculator.calculate (msgpack): {ms(remote)}; {overhead(remote, local)}")
        print(f"  CPU per call: server {1e3 * server_cpu:.3f} ms, client {1e3 * client_cpu:.3f} ms; CPU overhead "
              f"over in-process {1e3 * (server_cpu + client_cpu - local_cpu):.3f} ms")

        # 8 concurrent clients
        payload = body([atoms], True)
        n_clients, per_client = 8, max(20, args.repeat // 4)
        def worker():
            with httpx.Client(headers={"Content-Type": "application/msgpack", "Accept": "application/msgpack"}) as c:
                for _ in range(per_client):
                    assert c.post(calc_url, content=payload).status_code == 200
        threads = [threading.Thread(target=worker) for _ in range(n_clients)]
        t0 = time.perf_counter()
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        elapsed = time.perf_counter() - t0
        print(f"8 concurrent clients: {n_clients * per_client / elapsed:.0f} requests/s "
              f"({n_clients * per_client} requests in {elapsed:.2f} s); "
              f"in-process serial rate {1 / statistics.median(local):.0f}/s")

        # one batch of 100 against 100 single requests
        images = []
        for k in range(100):
            a = atoms.copy()
            a.rattle(0.02, seed=k)
            images.append(a)
        with httpx.Client(headers={"Content-Type": "application/msgpack", "Accept": "application/msgpack"}) as c:
            batch_payload = body(images, True)
            singles = [body([a], True) for a in images]
            c.post(calc_url, content=batch_payload)
            t_batch = min(timed(lambda: c.post(calc_url, content=batch_payload), 5))
            t_single = min(timed(lambda: [c.post(calc_url, content=p) for p in singles], 5))
        t_local = min(timed(lambda: [evaluate(a) for a in images], 5))
        print(f"100 structures: one batch request {1e3 * t_batch:.1f} ms, 100 single requests "
              f"{1e3 * t_single:.1f} ms, in-process loop {1e3 * t_local:.1f} ms")
    finally:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(30)
        except subprocess.TimeoutExpired:
            proc.kill()
        tmp.cleanup()
    return 0


if __name__ == "__main__":
    sys.exit(main())
