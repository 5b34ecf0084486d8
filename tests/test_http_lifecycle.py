"""A request's life over HTTP, against real `aceserver serve` processes (issue 21):

* a request whose client has gone stops at the next structure and is not counted as served;
* `--drain-timeout` bounds the exit, and requests still running then get a JSON 503 `shutting_down`;
* malformed HTTP, stalled headers or bodies and a full server get the JSON error document, and
  stalled or idle connections are closed by the header, body and keep-alive timeouts;
* with a token only the probes, /metrics and the web page's own files are open, and no reply
  names a file path.

The attacks run while a watcher polls /healthz and reads the server's RSS from /proc (Linux).
Bounds are relative to what this test measures on the same server where they concern speed
(`one`, the time and CPU of one complete large request), never absolute speeds of ours.
"""
from __future__ import annotations

import contextlib
import json
import os
import re
import select
import shutil
import signal
import socket
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import httpx
import numpy as np
import pytest
from ase.build import bulk

from _http_support import TMP, Server, model_file

pytestmark = pytest.mark.timeout(300)

TOKEN = "lifecycle-token"
AUTH = {"Authorization": f"Bearer {TOKEN}"}
JSON = {"Content-Type": "application/json"}
HEADER_TIMEOUT, BODY_TIMEOUT, KEEP_ALIVE, MAX_CONNECTIONS = 2.0, 2.0, 1.0, 16
# /healthz is answered on the event loop, never behind evaluation work; 1 s leaves room for a
# 2-core box whose cores are busy with the server's evaluation threads and JSON decoding
HEALTHZ_BOUND_S = 1.0
# the attacks below hold at most a few 3 MB bodies and their decoded form (about 10x in Python
# objects, two decoded at a time): far under 150 MB; an unbounded leak or buffer exceeds it
RSS_BOUND_MB = 150
SMALL = {"structure": {"numbers": [14, 14], "positions": [[0, 0, 0], [1.36, 1.36, 1.36]],
                       "cell": [[0, 2.715, 2.715], [2.715, 0, 2.715], [2.715, 2.715, 0]], "pbc": True}}


def heavy_model_file() -> Path:
    """Si, order 4, totaldegree 16, rcut 5 Å: about 20x the cost per atom of the shared test
    model, so that a request of 100 structures of 512 atoms lasts seconds with a 3 MB body."""
    path = TMP / "heavy.json"
    if not path.exists():
        import aceserver
        m = aceserver.ace1_model(elements=["Si"], order=4, totaldegree=16, rcut=5.0)
        m.parameters = np.random.default_rng(3).normal(scale=0.1, size=m.length_basis) / (
            1 + np.arange(m.length_basis)) ** 0.5
        m.save(str(path))
    return path


def big_body(n: int) -> bytes:
    """n rattled 512-atom Si cells as one JSON calculate request (about 30 kB per structure)."""
    rng = np.random.default_rng(5)
    cell = bulk("Si", cubic=True).repeat(4)
    structures = [{"numbers": cell.numbers.tolist(),
                   "positions": np.round(cell.positions + rng.normal(scale=0.05, size=cell.positions.shape),
                                         4).tolist(),
                   "cell": np.asarray(cell.cell).tolist(), "pbc": True} for _ in range(n)]
    return json.dumps({"structures": structures, "properties": ["energy", "forces"]}).encode()


def raw_request(path: str, body: bytes = b"", method: str = "POST", headers: dict | None = None) -> bytes:
    head = [f"{method} {path} HTTP/1.1", "Host: 127.0.0.1", *(f"{k}: {v}" for k, v in (headers or {}).items())]
    if body or method == "POST":
        head.append(f"Content-Length: {len(body)}")
    return ("\r\n".join(head) + "\r\n\r\n").encode() + body


def connect(server: Server, timeout: float = 10.0) -> socket.socket:
    s = socket.create_connection(("127.0.0.1", server.port), timeout=timeout)
    s.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    return s


def read_reply(s: socket.socket) -> tuple[int, dict, bytes]:
    """(status, headers, body) of one HTTP/1.1 reply with a Content-Length."""
    data = b""
    while b"\r\n\r\n" not in data:
        chunk = s.recv(65536)
        if not chunk:
            raise ConnectionError(f"closed before a full reply: {data!r}")
        data += chunk
    head, body = data.split(b"\r\n\r\n", 1)
    lines = head.decode("latin-1").split("\r\n")
    status = int(lines[0].split()[1])
    headers = {k.strip().lower(): v.strip() for k, v in (line.split(":", 1) for line in lines[1:])}
    while len(body) < int(headers.get("content-length", 0)):
        chunk = s.recv(65536)
        if not chunk:
            break
        body += chunk
    return status, headers, body


def closed_by_server(s: socket.socket, within: float) -> bool:
    """True when the server closes `s` within `within` seconds (whatever it sends before)."""
    s.settimeout(within)
    deadline = time.monotonic() + within
    try:
        while time.monotonic() < deadline:
            if not s.recv(65536):
                return True
    except (socket.timeout, TimeoutError):
        return False
    except (ConnectionResetError, BrokenPipeError):
        return True
    return False


def assert_json_error(status: int, headers: dict, body: bytes, code: int, kind: str) -> dict:
    assert status == code, (status, body[:300])
    assert headers.get("content-type", "").startswith("application/json"), headers
    assert len(body) < 1024, len(body)
    doc = json.loads(body)
    assert set(doc) == {"kind", "message", "field", "details", "more_details"} and doc["kind"] == kind, doc
    return doc


def cpu_seconds(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")    # utime + stime


def rss_mb(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    raise AssertionError("no VmRSS")


def metric(server: Server, name: str) -> float:
    text = httpx.get(f"{server.url}/metrics", timeout=10).text
    return sum(float(line.rsplit(" ", 1)[1]) for line in text.splitlines()
               if line.startswith(name if name.endswith("}") else (name + "{", name + " ")))


@contextlib.contextmanager
def watched(server: Server):
    """Polls /healthz every 50 ms and the server's RSS during the block; then asserts both bounds."""
    latencies, rss, stop = [], [rss_mb(server.proc.pid)], threading.Event()

    def poll():
        with httpx.Client(timeout=30) as client:
            while not stop.is_set():
                t0 = time.perf_counter()
                assert client.get(f"{server.url}/healthz").status_code == 200
                latencies.append(time.perf_counter() - t0)
                rss.append(rss_mb(server.proc.pid))
                stop.wait(0.05)

    with ThreadPoolExecutor(1) as pool:
        done = pool.submit(poll)
        try:
            yield
        finally:
            deadline = time.monotonic() + 10       # at least two probes, however short the block
            while len(latencies) < 2 and not done.done() and time.monotonic() < deadline:
                time.sleep(0.01)
            stop.set()
            done.result(60)
    assert len(latencies) >= 2 and max(latencies) < HEALTHZ_BOUND_S, f"/healthz latencies {latencies}"
    assert max(rss) - rss[0] < RSS_BOUND_MB, f"RSS {rss[0]:.0f} -> {max(rss):.0f} MB"


@pytest.fixture(scope="module")
def spare_model() -> Path:
    """A copy of the small test model in its own folder: the path test breaks it."""
    folder = TMP / "spare-models"
    folder.mkdir(exist_ok=True)
    return Path(shutil.copy(model_file("si"), folder / "spare.json"))


@pytest.fixture(scope="module")
def server(spare_model):
    token = TMP / "lifecycle-token"
    token.write_text(TOKEN + "\n")
    args = [f"si={heavy_model_file()}", f"spare={spare_model}", "--token-file", str(token), "--workers", "2",
            "--header-timeout", str(HEADER_TIMEOUT), "--body-timeout", str(BODY_TIMEOUT),
            "--keep-alive-timeout", str(KEEP_ALIVE), "--max-connections", str(MAX_CONNECTIONS)]
    with Server(args) as s:
        yield s


# ---- cancellation ------------------------------------------------------------------------------

def test_abandoned_requests_stop_and_are_not_counted(server):
    """Four clients send a large request each and go away: their work stops, a 2-atom request
    is answered at once, and only the 2-atom request counts as served."""
    url = f"{server.url}/v1/models/si/calculate"
    big = big_body(100)
    pid = server.proc.pid
    with httpx.Client(timeout=120, headers=AUTH) as client:
        assert client.post(url, json=SMALL).status_code == 200
        cpu0, t0 = cpu_seconds(pid), time.perf_counter()
        r = client.post(url, content=big, headers=JSON)
        one_s, one_cpu = time.perf_counter() - t0, cpu_seconds(pid) - cpu0
        assert r.status_code == 200 and len(r.json()["results"]) == 100
    served0, cpu0 = metric(server, "aceserver_structures_evaluated_total"), cpu_seconds(pid)
    gone0 = metric(server, 'aceserver_errors_total{kind="client_disconnected"}')
    with watched(server):
        clients = [connect(server) for _ in range(4)]
        for s in clients:
            s.sendall(raw_request("/v1/models/si/calculate", big, headers={**AUTH, **JSON}))
        deadline = time.monotonic() + 30      # the four requests (and this one) are in the server
        while metric(server, "aceserver_http_requests_in_flight") < 5 and time.monotonic() < deadline:
            time.sleep(0.02)
        time.sleep(0.3)                       # bodies read, two evaluations started, two queued
        for s in clients:
            s.close()
        t0 = time.perf_counter()
        r = httpx.post(url, json=SMALL, headers=AUTH, timeout=120)
        small_s = time.perf_counter() - t0
        assert r.status_code == 200 and len(r.content) < 4096
        # the abandoned work would need 2 x one_s on the two workers; wait until it has stopped
        deadline = time.monotonic() + 4 * one_s + 10
        while metric(server, "aceserver_http_requests_in_flight") > 1 and time.monotonic() < deadline:
            time.sleep(0.1)
    served = metric(server, "aceserver_structures_evaluated_total") - served0
    burnt = cpu_seconds(pid) - cpu0
    print(f"one large request {one_s:.2f} s ({one_cpu:.2f} s CPU); 2-atom request behind 4 abandoned ones "
          f"{small_s:.3f} s; CPU after abandoning {burnt:.2f} s")
    # served: the 2-atom request only (not the 400 abandoned structures)
    assert served == 1, served
    # a worker stops after the structure in progress (1/100 of a request): the 2-atom request
    # waits far less than half a large request, where finishing the abandoned work makes it
    # wait about two large requests
    assert small_s < 0.5 * one_s, (small_s, one_s)
    # the abandoned requests, finished, would cost 4 x one_cpu; stopped, they cost their decoding
    # and a few structures each (under 1 x one_cpu)
    assert burnt < 2 * one_cpu, (burnt, one_cpu)
    assert metric(server, 'aceserver_errors_total{kind="client_disconnected"}') - gone0 == 4


# ---- shutdown ----------------------------------------------------------------------------------

def test_drain_timeout_bounds_exit_and_cut_requests_get_json_503():
    """SIGTERM with three large requests in flight on one worker (about 3 x 4 s of work) and
    --drain-timeout 1: the process exits within the deadline plus teardown, and every request
    not finished by then gets a JSON 503 `shutting_down`."""
    drain = 1.0
    with Server([f"si={heavy_model_file()}", "--workers", "1", "--drain-timeout", str(drain)]) as server:
        url = f"{server.url}/v1/models/si/calculate"
        big = big_body(200)
        replies = []

        def post():
            with httpx.Client(timeout=60) as client:
                r = client.post(url, content=big, headers=JSON)
                replies.append((r.status_code, r.headers.get("content-type", ""), r.content))

        threads = [threading.Thread(target=post) for _ in range(3)]
        for t in threads:
            t.start()
        deadline = time.monotonic() + 30
        while metric(server, "aceserver_http_requests_in_flight") < 4 and time.monotonic() < deadline:
            time.sleep(0.05)
        time.sleep(0.5)                         # the first request is being evaluated
        t0 = time.perf_counter()
        server.proc.send_signal(signal.SIGTERM)
        rc = server.proc.wait(60)
        exit_s = time.perf_counter() - t0
        for t in threads:
            t.join(60)
        log = server.output()
    print(f"exit {exit_s:.2f} s after SIGTERM with --drain-timeout {drain:g}; replies {[r[0] for r in replies]}")
    # the deadline, then the replies and the interpreter's teardown (under a second here); the
    # work left (over 8 s here) would take far longer than this bound
    assert exit_s < drain + 4, (exit_s, log)
    assert rc == 0, log
    assert len(replies) == 3, replies
    cut = [doc for status, ctype, doc in replies if status != 200]
    assert cut, "every request finished within the drain timeout: make them larger"
    for status, ctype, body in replies:
        if status == 200:
            continue
        assert_json_error(status, {"content-type": ctype}, body, 503, "shutting_down")
    assert "Traceback" not in log and "Exception in ASGI application" not in log, log


# ---- protocol errors and timeouts --------------------------------------------------------------

@pytest.mark.parametrize("data", [
    b"GARBAGE\r\n\r\n",
    b"GET /healthz HTTP/1.1\r\nHost: x\r\nContent-Length: abc\r\n\r\n",
    b"POST /v1/models HTTP/1.1\r\nHost: x\r\nContent-Length: 3\r\nTransfer-Encoding: chunked\r\n\r\nabc",
    b"GET /healthz HTTP/1.1\r\nHost: x\r\nX-Long: " + b"a" * 200_000 + b"\r\n\r\n",
], ids=["request-line", "content-length", "length-and-chunked", "header-too-large"])
def test_malformed_http_gets_the_json_error_document(server, data):
    with watched(server):
        s = connect(server)
        with contextlib.suppress(ConnectionError):
            s.sendall(data)
        status, headers, body = read_reply(s)
        assert status in (400, 431)
        assert_json_error(status, headers, body, status, "malformed_request" if status == 400 else "too_large")
        assert closed_by_server(s, 5)
        s.close()


def test_content_length_shorter_than_the_body(server):
    """The bytes after the declared body are a garbled next request: a JSON 400, then the
    connection is closed; the server logs no traceback."""
    with watched(server):
        s = connect(server)
        body = json.dumps(SMALL).encode()
        s.sendall(raw_request("/v1/models/si/calculate", body, headers={**AUTH, **JSON})
                  .replace(f"Content-Length: {len(body)}".encode(), b"Content-Length: 5"))
        status, headers, reply = read_reply(s)
        doc = assert_json_error(status, headers, reply, 400, json.loads(reply).get("kind"))
        assert doc["kind"] in ("malformed_request", "malformed_body"), doc
        assert closed_by_server(s, 5)
        s.close()
    assert "Traceback" not in server.output()


def test_stalled_body_gets_408_and_is_closed(server):
    """A Content-Length larger than the body sent: a JSON 408 once the body timeout has passed."""
    with watched(server):
        s = connect(server)
        s.sendall(raw_request("/v1/models/si/calculate", b"", headers={**AUTH, **JSON})
                  .replace(b"Content-Length: 0", b"Content-Length: 100") + b'{"structure":')
        t0 = time.perf_counter()
        s.settimeout(BODY_TIMEOUT + 5)
        status, headers, body = read_reply(s)
        waited = time.perf_counter() - t0
        assert_json_error(status, headers, body, 408, "request_timeout")
        assert BODY_TIMEOUT - 0.5 < waited < BODY_TIMEOUT + 5, waited
        assert closed_by_server(s, 5)
        s.close()


def test_trickling_and_idle_connections_are_closed(server):
    """30 connections sending a header byte every 0.2 s, 10 that send nothing and one idle after
    a reply: all closed by the header and keep-alive timeouts (plus 3 s for a loaded machine)."""
    with watched(server):
        trickle = [connect(server) for _ in range(30)]
        idle = [connect(server) for _ in range(10)]
        kept = connect(server)
        kept.sendall(raw_request("/healthz", method="GET"))
        assert read_reply(kept)[0] == 200
        message = raw_request("/v1/models", method="GET", headers={**AUTH, **{f"X-{i}": "y" * 8 for i in range(60)}})
        t0, sent, open_ = time.monotonic(), 0, set(range(len(trickle)))
        while open_ and time.monotonic() - t0 < HEADER_TIMEOUT + 3:
            for i in list(open_):
                if select.select([trickle[i]], [], [], 0)[0]:     # a reply or the end: the server gave up
                    open_.discard(i)
                    continue
                with contextlib.suppress(OSError):
                    trickle[i].sendall(message[sent:sent + 1])
            sent += 1
            time.sleep(0.2)
        assert not open_, f"{len(open_)} trickling connections still open after {HEADER_TIMEOUT + 3} s"
        status, headers, body = read_reply(trickle[0])
        assert_json_error(status, headers, body, 408, "request_timeout")
        assert all(closed_by_server(s, 5) for s in trickle)
        assert closed_by_server(kept, KEEP_ALIVE + 3)
        assert all(closed_by_server(s, 3) for s in idle)
        for s in trickle + idle + [kept]:
            s.close()


def test_connection_limit(server):
    """With --max-connections 16 and 16 connections open, a 17th gets a JSON 503
    `too_many_connections`; the probes still answer; once they are closed, requests are served."""
    held = [connect(server) for _ in range(MAX_CONNECTIONS)]
    try:
        s = connect(server)
        s.sendall(raw_request("/v1/models", method="GET", headers=AUTH))
        status, headers, body = read_reply(s)
        assert_json_error(status, headers, body, 503, "too_many_connections")
        assert headers.get("retry-after") == "1"
        s.close()
        assert httpx.get(f"{server.url}/healthz", timeout=10).status_code == 200
        assert httpx.get(f"{server.url}/readyz", timeout=10).status_code == 200
    finally:
        for h in held:
            h.close()
    deadline = time.monotonic() + 10
    while httpx.get(f"{server.url}/v1/models", headers=AUTH, timeout=10).status_code != 200:
        assert time.monotonic() < deadline
        time.sleep(0.1)


# ---- what is open ------------------------------------------------------------------------------

# docs/serving.md, "What is open without a token"
OPEN = {"/healthz", "/livez", "/readyz", "/metrics", "/", "/ui/app.js", "/ui/style.css", "/ui/index.html"}


def test_only_the_documented_endpoints_are_open_with_a_token(server):
    spec = httpx.get(f"{server.url}/openapi.json", headers=AUTH, timeout=10)
    assert spec.status_code == 200
    paths = {p.replace("{name}", "si").replace("{file}", "x.png"): item for p, item in spec.json()["paths"].items()}
    paths.update({p: {"get": {}} for p in OPEN | {"/openapi.json", "/docs", "/redoc"}})
    with httpx.Client(timeout=30) as client:
        for path, item in sorted(paths.items()):
            for method in item:
                r = client.request(method.upper(), server.url + path, json=SMALL if method == "post" else None)
                if path in OPEN:
                    assert r.status_code == 200, (method, path, r.status_code)
                else:
                    assert_json_error(r.status_code, r.headers, r.content, 401, "unauthorized")
                    assert r.headers["www-authenticate"] == "Bearer"


def test_no_file_path_in_any_reply(server, spare_model):
    """A refused hot reload (the spare model's file overwritten with junk, then SIGHUP) is listed
    in /metrics.json without the file's path; no reply names the model folder."""
    spare_model.write_text("{ not a model")
    server.proc.send_signal(signal.SIGHUP)
    deadline = time.monotonic() + 30
    while True:
        snap = httpx.get(f"{server.url}/metrics.json", headers=AUTH, timeout=10)
        assert snap.status_code == 200
        if any(r["result"] == "refused" for r in snap.json()["recent_reloads"]):
            break
        assert time.monotonic() < deadline, snap.text
        time.sleep(0.1)
    replies = [snap.text] + [httpx.get(server.url + p, headers=AUTH, timeout=10).text for p in
                             ("/v1/models", "/v1/models/spare", "/v1/models/spare/plots", "/readyz",
                              "/v1/models/spare/plots/nope.png", "/metrics")]
    folder = str(spare_model.parent)
    for text in replies:
        assert folder not in text and not re.search(r"(?<![\w.])/(tmp|home|work|usr|root)/", text), text[:2000]
