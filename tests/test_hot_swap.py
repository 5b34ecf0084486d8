"""Hot model swaps under concurrent load (`aceserver serve --watch`, and SIGHUP).

Two models A and B with the same basis and different parameters; the served file is replaced
A -> B -> A ... (atomic rename) while client threads send batches of structures. Every reply must
be 200, name the sha256 of A or B, and carry, for every structure of the batch, exactly the energy
that model computes in-process: a reply never mixes two models. A truncated file is refused and
the model before it serves on. Without --watch, SIGHUP makes the server look at the file once.
"""
from __future__ import annotations

import os
import shutil
import signal
import threading
import time

import httpx
import numpy as np
import pytest

from _http_support import TMP, Server, make_model, si_structures

pytestmark = pytest.mark.timeout(300)
SWAPS = 6
CLIENTS = 4


def _structures_json(images):
    return [{"numbers": a.numbers.tolist(), "positions": a.positions.tolist(),
             "cell": a.cell.array.tolist() if a.cell.rank == 3 else None, "pbc": a.pbc.tolist()} for a in images]


def _two_models(folder):
    folder.mkdir(parents=True, exist_ok=True)
    images = si_structures()[:3]
    refs = {}
    for tag, seed in (("A", 0), ("B", 5)):
        model = make_model(seed=seed)
        path = folder / f"{tag}.json"
        sha = model.save(str(path))
        refs[sha] = (path, np.array([
            model.evaluate(a.numbers, a.positions, a.cell.array, a.pbc).energy for a in images]))
    assert len(refs) == 2
    return images, refs


def _live_file(name):
    """Models A and B, and the served file `live.json` holding A; returns images, refs, paths, live."""
    folder = TMP / name
    images, refs = _two_models(folder)
    (sha_a, (path_a, _)), (sha_b, (path_b, _)) = refs.items()
    live = folder / "live.json"
    _replace(path_a, live)
    return images, refs, (sha_a, path_a), (sha_b, path_b), live


def _replace(src, dest):
    """Put src's content at dest atomically (what a fitting loop should do)."""
    tmp = dest.with_suffix(".tmp")
    shutil.copyfile(src, tmp)
    os.replace(tmp, dest)


def _served_sha(server, name="live"):
    return httpx.get(f"{server.url}/v1/models/{name}", timeout=10).json()["sha256"]


def _wait_for_sha(server, sha, timeout=30.0):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if _served_sha(server) == sha:
            return
        time.sleep(0.05)
    raise AssertionError(f"server did not swap to {sha[:12]} within {timeout} s:\n{server.output()}")


def test_watch_swaps_atomically_under_load():
    images, refs, (sha_a, path_a), (sha_b, path_b), live = _live_file("hot-swap")
    body = {"structures": _structures_json(images), "properties": ["energy"]}
    replies, failures, stop = [], [], threading.Event()

    def client():
        with httpx.Client(base_url=server.url, timeout=60) as c:
            while not stop.is_set():
                r = c.post("/v1/models/live/calculate", json=body)
                if r.status_code != 200:
                    failures.append((r.status_code, r.text))
                    continue
                doc = r.json()
                replies.append((doc["sha256"], np.array([res["energy"] for res in doc["results"]])))

    with Server([f"live={live}", "--watch", "--watch-interval", "0.1", "--workers", "4"]) as server:
        threads = [threading.Thread(target=client) for _ in range(CLIENTS)]
        for t in threads:
            t.start()
        try:
            for k in range(SWAPS):
                sha, (path, _) = list(refs.items())[(k + 1) % 2]
                _replace(path, live)
                _wait_for_sha(server, sha)
                time.sleep(0.3)                  # let requests run on the new model
            # a broken file (truncated mid-write) is refused; the model before it keeps serving
            before = _served_sha(server)
            live.write_bytes(path_b.read_bytes()[:5000])
            time.sleep(1.0)
            assert _served_sha(server) == before
            n_before = len(replies)
            time.sleep(0.5)
            assert len(replies) > n_before, "the server stopped answering after a broken model file"
        finally:
            stop.set()
            for t in threads:
                t.join(60)
        metrics = httpx.get(f"{server.url}/metrics", timeout=10).text
        log = server.output()

    assert not failures, failures[:3]
    assert len(replies) > 20
    seen = set()
    for sha, energies in replies:
        assert sha in refs, sha
        np.testing.assert_allclose(energies, refs[sha][1], rtol=1e-12, atol=1e-9)   # one model per reply
        seen.add(sha)
    assert seen == {sha_a, sha_b}
    assert f'aceserver_model_reloads_total{{model="live",result="swapped"}} {SWAPS}' in metrics
    assert 'aceserver_model_reloads_total{model="live",result="refused"}' in metrics
    assert "refused" in log and before[:12] in log


def test_sighup_reloads_once_without_watch():
    _, refs, (sha_a, path_a), (sha_b, path_b), live = _live_file("sighup")
    with Server([f"live={live}"]) as server:
        _replace(path_b, live)
        time.sleep(1.5)
        assert _served_sha(server) == sha_a, "without --watch the file is not looked at by itself"
        server.proc.send_signal(signal.SIGHUP)
        _wait_for_sha(server, sha_b)
        assert server.proc.poll() is None
        r = httpx.post(f"{server.url}/v1/models/live/calculate", timeout=30,
                       json={"structure": {"symbols": ["Si", "Si"], "positions": [[0, 0, 0], [1.4, 1.4, 1.4]]}})
        assert r.status_code == 200 and r.json()["sha256"] == sha_b
