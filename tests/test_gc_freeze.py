"""The served process's frozen heap (`aceserver.serving.process.Heap`, `Settings.gc_freeze`,
`aceserver serve [--no-gc-freeze]`).

* `Heap`: a frozen object in a reference cycle is never collected (the reason the heap is thawed
  when a model is swapped out); after `release` it is, and `freeze` freezes again only once every
  released object is gone; the collections are counted and timed by generation.
* An app with `gc_freeze` (in process): frozen once warm; a hot swap (`ModelRegistry.reload`) and a
  learning refit's swap (`ModelRegistry.install`) thaw it; while something still holds the old
  model (as a request or job in flight does) the heap stays thawed, the old model evaluates and the
  new one serves; once let go the old model is freed and the heap frozen again; shut down, nothing
  is left frozen. The served model is given a reference to itself, so that only the collector can
  free it: a model left frozen would stay alive and the test would fail.
* `aceserver serve` freezes by default and reports it in /metrics.json; `--no-gc-freeze` does not.
"""
from __future__ import annotations

import gc
import time
import weakref

import httpx
import numpy as np
import pytest
from fastapi.testclient import TestClient

from _http_support import Server, make_model, model_file, structure_json
from aceserver.loading import load_model
from aceserver.serving.http import ModelRegistry, ServedModel, Settings, create_app
from aceserver.serving.process import Heap
from ase.build import bulk


class Node:
    pass


def cyclic() -> Node:
    n = Node()
    n.me = n
    return n


@pytest.fixture
def heap():
    h = Heap()
    h.install()
    yield h
    h.uninstall()
    assert gc.get_freeze_count() == 0


def test_a_frozen_cycle_is_freed_only_after_release(heap):
    obj = cyclic()
    ref = weakref.ref(obj)
    assert heap.freeze() and heap.frozen and gc.get_freeze_count() > 0
    del obj
    gc.collect()
    assert ref() is not None                       # frozen: out of the collector's reach
    heap.release(ref())
    assert gc.get_freeze_count() == 0 and not heap.frozen
    assert heap.freeze()                           # collected first, then frozen
    assert ref() is None and gc.get_freeze_count() > 0


def test_freeze_waits_for_released_objects(heap):
    obj = cyclic()
    assert heap.freeze()
    heap.release(obj)
    assert not heap.freeze() and gc.get_freeze_count() == 0
    assert heap.status()["released_alive"] == 1
    del obj
    assert heap.freeze() and heap.status()["released_alive"] == 0


def test_collections_are_counted_and_timed(heap):
    before = heap.status()
    gc.collect()
    after = heap.status()
    assert after["collections"][2] == before["collections"][2] + 1
    assert after["seconds"][2] > before["seconds"][2]
    assert after["collections"][:2] == before["collections"][:2]


def _gc(client) -> dict:
    return client.get("/metrics.json").json()["process"]["gc"]


def _wait(predicate, seconds: float = 30.0) -> bool:
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        if predicate():
            return True
        time.sleep(0.1)
    return False


def _new_file(path, seed):
    make_model(seed=seed).save(str(path))


def test_swaps_thaw_and_the_old_model_is_freed(tmp_path):
    path = tmp_path / "m.json"
    _new_file(path, 1)
    registry = ModelRegistry([ServedModel("m", load_model(str(path)), str(path))])
    cell = bulk("Si", cubic=True)
    request = {"structure": structure_json(cell), "properties": ["energy"]}
    with TestClient(create_app(registry, Settings(gc_freeze=True))) as client:
        assert _wait(lambda: client.get("/readyz").status_code == 200, 300)
        doc = client.get("/metrics.json").json()["process"]
        assert doc["gc_freeze"] and doc["gc"]["frozen"] > 0
        first = registry.get("m")
        first.model.me = first.model                # only the collector can free it now
        held, gone = first.model, weakref.ref(first.model)
        del first

        _new_file(path, 2)                         # a hot swap, as the file watcher does it
        swapped = registry.reload(force=True)
        assert [r.result for r in swapped] == ["swapped"]
        assert _wait(lambda: _gc(client)["released_alive"] == 1)
        time.sleep(1.5)                            # held: no freeze while the old model lives
        assert _gc(client)["frozen"] == 0 and _gc(client)["released_alive"] == 1
        e_old = held.evaluate(cell.numbers, cell.positions, cell.cell.array, cell.pbc).energy
        r = client.post("/v1/models/m/calculate", json=request).json()
        assert r["sha256"] == registry.get("m").sha256 != held.sha256
        assert r["results"][0]["energy"] != e_old
        del held
        assert _wait(lambda: _gc(client)["frozen"] > 0)
        assert gone() is None

        second = registry.get("m")                 # a learning refit's swap
        second.model.me = second.model
        gone = weakref.ref(second.model)
        del second
        registry.install(ServedModel("m", make_model(seed=3), str(path)))
        assert _wait(lambda: _gc(client)["released_alive"] == 0 and _gc(client)["frozen"] > 0)
        assert gone() is None
        assert client.post("/v1/models/m/calculate", json=request).status_code == 200
    assert gc.get_freeze_count() == 0


@pytest.mark.parametrize("args, frozen", [([], True), (["--no-gc-freeze"], False)])
def test_served_process_freezes_by_default(args, frozen):
    with Server([f"si={model_file('si')}", *args]) as server:
        doc = httpx.get(f"{server.url}/metrics.json", timeout=30).json()["process"]
    assert doc["gc_freeze"] is frozen
    assert (doc["gc"]["frozen"] > 0) is frozen
    assert len(doc["gc"]["collections"]) == 3 and all(np.isfinite(doc["gc"]["seconds"]))
