"""Concurrency: many clients get exactly the serial numbers; /healthz answers during long evaluations;
SIGTERM drains requests in flight, then the server exits."""
from __future__ import annotations

import signal
import threading
import time
from concurrent.futures import ThreadPoolExecutor

import httpx
import msgpack
import numpy as np
import pytest
from ase.build import bulk

from _http_support import Server, model_file, shared_server, si_structures

pytestmark = pytest.mark.timeout(300)
CLIENTS, REQUESTS = 16, 50


def _body(atoms_list, binary):
    def arr(a, dtype):
        a = np.ascontiguousarray(a, dtype=dtype)
        return {"dtype": dtype, "shape": list(a.shape), "data": a.tobytes()} if binary else a.tolist()
    structures = [{"numbers": arr(a.numbers, "<i8"), "positions": arr(a.positions, "<f8"),
                   "cell": arr(np.asarray(a.cell), "<f8"), "pbc": a.pbc.tolist()} for a in atoms_list]
    body = {"structures": structures}
    return msgpack.packb(body) if binary else httpx.Request("POST", "/", json=body).content


def _results(client: httpx.Client, url: str, atoms_list, binary: bool) -> list[dict]:
    ctype = "application/msgpack" if binary else "application/json"
    r = client.post(url, content=_body(atoms_list, binary), headers={"Content-Type": ctype, "Accept": ctype})
    assert r.status_code == 200, r.text
    reply = msgpack.unpackb(r.content) if binary else r.json()
    out = []
    for res in reply["results"]:
        row = {}
        for k, v in res.items():
            if isinstance(v, dict):
                v = np.frombuffer(v["data"], "<f8").reshape(v["shape"])
            row[k] = v if v is None or isinstance(v, float) else np.asarray(v, dtype=float)
        out.append(row)
    return out


def _same(a: dict, b: dict) -> bool:
    return a.keys() == b.keys() and all(
        (a[k] is None and b[k] is None) or np.array_equal(a[k], b[k]) for k in a)


def test_concurrent_clients_match_serial():
    server = shared_server()
    url = f"{server.url}/v1/models/si/calculate"
    pool = si_structures()
    # request j of client c: a batch of 1-3 structures of mixed sizes, JSON or msgpack
    def plan(c, j):
        k = (7 * c + j) % len(pool)
        idx = [k] + [(k + 1 + m) % len(pool) for m in range((c + j) % 3)]
        return idx, (c + j) % 2 == 0
    with httpx.Client(timeout=60) as client:
        serial = [_results(client, url, [a], binary=True)[0] for a in pool]
        assert all(_same(serial[i], _results(client, url, [pool[i]], binary=False)[0]) for i in range(len(pool)))

    errors, mismatches = [], []

    def worker(c):
        with httpx.Client(timeout=60) as client:
            for j in range(REQUESTS):
                idx, binary = plan(c, j)
                try:
                    got = _results(client, url, [pool[i] for i in idx], binary)
                except Exception as ex:   # counted, not raised, so every client finishes
                    errors.append(repr(ex))
                    continue
                mismatches.extend((c, j) for i, res in zip(idx, got) if not _same(res, serial[i]))

    start = time.perf_counter()
    with ThreadPoolExecutor(CLIENTS) as ex:
        list(ex.map(worker, range(CLIENTS)))
    elapsed = time.perf_counter() - start
    assert errors == []
    assert mismatches == []
    print(f"{CLIENTS} clients x {REQUESTS} requests in {elapsed:.2f} s")


@pytest.fixture(scope="module")
def big_server():
    with Server([str(model_file("si")), "--max-structures", "1000", "--workers", "2"]) as server:
        yield server


def _long_batch(url):
    """A batch that takes about 1.5 s to evaluate on this machine (at least 0.5 s)."""
    big = bulk("Si", cubic=True).repeat((4, 4, 4))   # 512 atoms
    with httpx.Client(timeout=60) as client:
        # timed as a batch, the way the long request runs (a batch is evaluated in one
        # evaluate_many call, on threads: faster per structure than a request of one), and
        # after a first batch, which may compile the batch path in a fresh server
        _results(client, url, [big] * 4, True)
        t0 = time.perf_counter()
        _results(client, url, [big] * 4, True)
        one = (time.perf_counter() - t0) / 4
    n = int(min(1000, max(4, 1.5 / max(one, 1e-4))))
    return [big] * n


def test_healthz_answers_during_long_evaluation(big_server):
    url = f"{big_server.url}/v1/models/si/calculate"
    batch = _long_batch(url)
    done = {}

    def long_request():
        t0 = time.perf_counter()
        with httpx.Client(timeout=120) as client:
            done["results"] = _results(client, url, batch, True)
        done["seconds"] = time.perf_counter() - t0

    thread = threading.Thread(target=long_request)
    thread.start()
    time.sleep(0.2)
    latencies = []
    with httpx.Client(timeout=5) as client:
        while thread.is_alive() and len(latencies) < 20:
            t0 = time.perf_counter()
            assert client.get(f"{big_server.url}/healthz").status_code == 200
            if thread.is_alive():
                latencies.append(time.perf_counter() - t0)
            time.sleep(0.02)
    thread.join(120)
    assert len(done["results"]) == len(batch)
    assert len(latencies) >= 3, f"evaluation too short to test ({done['seconds']:.2f} s)"
    assert max(latencies) < 1.0, latencies


def test_sigterm_drains_in_flight_requests():
    with Server([str(model_file("si")), "--max-structures", "1000"]) as server:
        url = f"{server.url}/v1/models/si/calculate"
        batch = _long_batch(url)
        done = {}

        def long_request():
            with httpx.Client(timeout=120) as client:
                try:
                    done["results"] = _results(client, url, batch, True)
                except Exception as ex:
                    done["error"] = repr(ex)

        thread = threading.Thread(target=long_request)
        thread.start()
        time.sleep(0.3)
        assert thread.is_alive()
        server.proc.send_signal(signal.SIGTERM)
        thread.join(120)
        assert "error" not in done, done.get("error")
        assert len(done["results"]) == len(batch)
        assert server.proc.wait(60) in (0, -signal.SIGTERM)   # uvicorn re-raises the signal after draining
        with pytest.raises(httpx.ConnectError):
            httpx.get(f"{server.url}/healthz", timeout=5)
        assert "Finished server process" in server.output()


@pytest.mark.slow
def test_ready_only_after_warm_up(tmp_path):
    """With an empty numba cache the kernels compile at start-up: meanwhile /healthz and /v1/models
    answer, /readyz and calculate say 503; afterwards both succeed."""
    server = Server([str(model_file("si"))], env={"NUMBA_CACHE_DIR": str(tmp_path / "numba-cache")})
    try:
        deadline = time.monotonic() + 60
        seen_starting = False
        with httpx.Client(timeout=10) as client:
            while time.monotonic() < deadline:
                try:
                    ready = client.get(f"{server.url}/readyz")
                except httpx.TransportError:
                    time.sleep(0.05)
                    continue
                if ready.status_code == 200:
                    break
                assert ready.status_code == 503 and ready.json()["status"] == "starting"
                seen_starting = True
                assert client.get(f"{server.url}/healthz").status_code == 200
                assert client.get(f"{server.url}/v1/models").json()["default"] == "si"
                r = client.post(f"{server.url}/v1/models/si/calculate",
                                json={"structure": {"numbers": [14], "positions": [[0, 0, 0]]}})
                if r.status_code != 200:   # (unless warm-up finished in between)
                    assert r.status_code == 503 and r.json()["kind"] == "not_ready" and "Retry-After" in r.headers
                time.sleep(0.2)
            assert seen_starting, "warm-up finished before the first probe"
        server.wait_ready(120)
        r = httpx.post(f"{server.url}/v1/models/si/calculate",
                       json={"structure": {"numbers": [14], "positions": [[0, 0, 0]]}}, timeout=60)
        assert r.status_code == 200
    finally:
        server.stop()
