"""The learning service (`POST /v1/models/{name}/data`, `aceserver.learning`), in process.

* the data log: a batch reads back bit for bit, versions continue after a reopen and after the
  state's own version, a modified row fails the batch's sha256 check;
* bad labels (missing or misshapen forces, missing energy, NaN/inf, unknown elements, virial and
  stress together, a stress without a periodic cell, sizes over the limits, a bad msgpack array)
  are refused with the error document naming the field, and nothing is appended: not even the
  good structures of a post that holds one bad one;
* a post is refitted in the background and swapped in: the status says the data version, the
  calculate replies name the new sha256 and give its energies;
* a failed refit leaves the served model and is reported; a model served without --learn answers
  409; a token is required where the server has one;
* the log survives a restart: a batch logged but not refitted is refitted by the next server, and
  versions continue.

The fitter here is the test's `ScratchFitter` (a from-scratch QR fit on every batch it holds); the
service with `fitting.incremental` is `test_learn_incremental.py`.
"""
from __future__ import annotations

import json
import math
import sqlite3
import subprocess
import sys
import threading
import time

import msgpack
import numpy as np
import pytest
from fastapi.testclient import TestClient

from aceserver.learning import DataLog, DataLogError
from aceserver.loading import load_model
from aceserver.serving.http import ModelRegistry, ServedModel, Settings, create_app

from _learn_support import ScratchFitter, fitted_model, refit, si_data, structure_doc

pytestmark = pytest.mark.timeout(600)
TOKEN = "s3cret"
AUTH = {"Authorization": f"Bearer {TOKEN}"}


@pytest.fixture(scope="module")
def base(tmp_path_factory):
    folder = tmp_path_factory.mktemp("learn-base")
    path, model, rest = fitted_model(folder)
    return path, model, rest


def copy_model(base, folder):
    """The base model and its state in a fresh folder (each test changes its files)."""
    path, _, rest = base
    folder.mkdir(parents=True, exist_ok=True)
    for src in (path, ScratchFitter.state_path(path)):
        (folder / src.name).write_bytes(src.read_bytes())
    return folder / path.name, rest


def app_for(path, logdir, fitter=None, **settings):
    registry = ModelRegistry([ServedModel("si", load_model(str(path)), str(path))])
    settings = dict(dict(token=TOKEN, learn=("si",), learn_dir=str(logdir), max_atoms=200, max_structures=20,
                         workers=2, max_pairs=20_000), **settings)
    settings = Settings(**settings)
    return create_app(registry, settings, fitter or ScratchFitter())


def wait_ready(client):
    deadline = time.monotonic() + 300
    while client.get("/readyz").status_code != 200:
        assert time.monotonic() < deadline, "the in-process server did not become ready"
        time.sleep(0.05)


def wait_status(client, done, timeout=300):
    deadline = time.monotonic() + timeout
    while True:
        status = client.get("/v1/models/si/data", headers=AUTH).json()
        if done(status):
            return status
        assert time.monotonic() < deadline, f"no such learning state within {timeout} s: {status}"
        time.sleep(0.05)


def calc_doc(configs):
    return {"structures": [{k: structure_doc(c)[k] for k in ("numbers", "positions", "cell", "pbc")}
                           for c in configs], "properties": ["energy", "forces"]}


# ---------------------------------------------------------------------------------- the log

def test_log_round_trip_versions_and_checksum(tmp_path):
    data = si_data()[:5]
    log = DataLog(tmp_path)
    first = log.append("si", data[:2], after=3)          # the state holds versions 1..3
    second = log.append("si", data[2:], after=3)
    assert (first["version"], second["version"]) == (4, 5)
    back = log.read("si", 5)
    for a, b in zip(back, data[2:]):                     # bit for bit
        assert np.array_equal(a.numbers, b.numbers) and np.array_equal(a.positions, b.positions)
        assert np.array_equal(a.cell, b.cell) and np.array_equal(a.pbc, b.pbc)
        assert a.energy == b.energy and np.array_equal(a.forces, b.forces)
        assert (a.virial is None and b.virial is None) or np.array_equal(a.virial, b.virial)
        assert a.config_type == b.config_type
    assert log.append("other", data[:1])["version"] == 1  # versions are per model
    log.close()
    log = DataLog(tmp_path)                               # reopened: the versions go on
    assert log.last_version("si") == 5
    assert log.append("si", data[:1], after=2)["version"] == 6
    assert [b["version"] for b in log.batches("si", after=4)] == [5, 6]
    log.close()
    db = sqlite3.connect(tmp_path / "learning.sqlite")
    db.execute("UPDATE configs SET energy = energy + 1e-9 WHERE model = 'si' AND version = 5 AND idx = 0")
    db.commit()
    db.close()
    with pytest.raises(DataLogError, match="sha256"):
        DataLog(tmp_path).read("si", 5)


# ---------------------------------------------------------------------------------- refusals

def _bad_documents(c, bad_element):
    good = structure_doc(c)
    n = len(good["numbers"])

    def w(**change):
        doc = dict(good, **change)
        return {"structure": {k: v for k, v in doc.items() if v is not ...}}

    grid = [[1.2 * i, 1.2 * j, 1.2 * k] for i in range(5) for j in range(5) for k in range(6)]    # 150 atoms
    dense = {"numbers": [14] * 150, "positions": grid, "cell": [[6.0, 0, 0], [0, 6.0, 0], [0, 0, 7.2]],
             "pbc": True, "energy": -1.0, "forces": [[0.0] * 3] * 150}     # ~360 neighbours each within 5 Å
    forces_nan = [row[:] for row in good["forces"]]
    forces_nan[1][2] = math.nan
    return [
        (w(forces=...), 422, "invalid_input", "structure.forces"),
        (w(energy=...), 422, "invalid_input", "structure.energy"),
        (w(forces=good["forces"][:-1]), 422, "invalid_input", "structure.forces"),
        (w(forces=[r[:2] for r in good["forces"]]), 422, "invalid_input", "structure.forces[0]"),
        (w(forces=forces_nan), 422, "invalid_input", "structure.forces[1][2]"),
        (w(energy=math.inf), 422, "invalid_input", "structure.energy"),
        (w(energy="1.0"), 422, "invalid_input", "structure.energy"),
        (w(numbers=[bad_element] + good["numbers"][1:]), 422, "unknown_element", "structure.numbers[0]"),
        (w(stress=[0.0] * 6), 422, "invalid_input", "structure.stress"),            # with the virial
        (w(virial=..., stress=[0.0] * 5), 422, "invalid_input", "structure.stress"),
        (w(virial=..., stress=[0.0] * 6, pbc=[True, True, False]), 422, "invalid_input", "structure.stress"),
        (w(virial=[[0.0] * 3] * 2), 422, "invalid_input", "structure.virial"),
        (w(config_type=""), 422, "invalid_input", "structure.config_type"),
        (w(energy=-2e9), 422, "invalid_input", "structure.energy"),
        (w(positions=[[0.0, 0.0, 0.0]] * n), 422, "invalid_input", "structure.positions"),        # atoms on top of each other
        ({"structure": dense}, 413, "too_large", "structure"),                 # over the pair budget (--max-pairs)
        (w(charge=1), 422, "invalid_input", "structure.charge"),
        ({"structures": [good] * 21}, 413, "too_large", "structures"),
        ({"structure": dict(good, numbers=[14] * 201, positions=[[0.0, 0.0, float(i)] for i in range(201)],
                            forces=[[0.0] * 3] * 201)}, 413, "too_large", "structure.positions"),
        ({"structures": [good, dict(good, forces=good["forces"][:n - 1])]}, 422, "invalid_input",
         "structures[1].forces"),
    ]


def test_bad_labels_are_refused_and_nothing_is_appended(base, tmp_path):
    path, rest = copy_model(base, tmp_path / "m")
    fitter = ScratchFitter()
    with TestClient(app_for(path, tmp_path / "log", fitter)) as client:
        wait_ready(client)
        for doc, code, kind, field in _bad_documents(rest[0], 6):
            # json.dumps writes NaN and Infinity, as some clients do; the server refuses them
            r = client.post("/v1/models/si/data", content=json.dumps(doc),
                            headers={**AUTH, "Content-Type": "application/json"})
            assert r.status_code == code, (field, r.text)
            body = r.json()
            assert body["kind"] == kind and body["field"] == field, (field, body)
        # msgpack: a forces array with a NaN, sent as a raw buffer
        doc = structure_doc(rest[0])
        forces = np.array(doc["forces"])
        forces[0, 0] = np.nan
        doc["forces"] = {"dtype": "<f8", "shape": list(forces.shape), "data": forces.tobytes()}
        r = client.post("/v1/models/si/data", content=msgpack.packb({"structure": doc}, use_bin_type=True),
                        headers={**AUTH, "Content-Type": "application/msgpack"})
        assert r.status_code == 422 and r.json()["field"] == "structure.forces[0][0]", r.text
        r = client.post("/v1/models/si/data", content=b"3\n\nSi 0 0 0\n", headers={
            **AUTH, "Content-Type": "chemical/x-extxyz"})
        assert r.status_code == 415, r.text
        r = client.post("/v1/models/si/data", json={"structure": structure_doc(rest[0])})
        assert r.status_code == 401                       # the token is required
        status = client.get("/v1/models/si/data", headers=AUTH).json()
        assert status["data_version"] == 1 and status["latest_version"] == 1 and status["pending"] == []
    assert DataLog(tmp_path / "log").last_version("si") == 0
    assert fitter.updates == 0


def test_model_without_learning_and_without_state(base, tmp_path):
    path, rest = copy_model(base, tmp_path / "m")
    registry = ModelRegistry([ServedModel("si", load_model(str(path)), str(path))])
    with TestClient(create_app(registry, Settings())) as client:
        wait_ready(client)
        r = client.post("/v1/models/si/data", json={"structure": structure_doc(rest[0])})
        assert r.status_code == 409 and r.json()["kind"] == "not_learnable" and "--learn si" in r.json()["message"]
        r = client.get("/v1/models/si/data/configurations")
        assert r.status_code == 409 and r.json()["kind"] == "not_learnable"
        info = client.get("/v1/models/si").json()
        assert info["learning"]["learnable"] is False
    ScratchFitter.state_path(path).unlink()
    with pytest.raises(ValueError, match="no fit state"):
        app_for(path, tmp_path / "log")
    with pytest.raises(ValueError, match="--learn-dir"):
        create_app(registry, Settings(learn=("si",)), ScratchFitter())


# ---------------------------------------------------------------------------------- refits

def test_post_is_refitted_swapped_and_reported(base, tmp_path):
    path, rest = copy_model(base, tmp_path / "m")
    old_sha = load_model(str(path)).sha256
    probe = rest[-3:]
    with TestClient(app_for(path, tmp_path / "log")) as client:
        wait_ready(client)
        r = client.post("/v1/models/si/data", json={"structures": [structure_doc(c) for c in rest[:6]]},
                        headers=AUTH)
        assert r.status_code == 202, r.text
        posted = r.json()
        assert posted["version"] == 2 and posted["configs"] == 6
        assert posted["atoms"] == sum(c.natoms for c in rest[:6])
        status = wait_status(client, lambda s: s["data_version"] == 2)
        assert status["pending"] == [] and status["refit"]["state"] == "idle" and status["refit"]["versions"] == [2]
        new_sha = status["sha256"]
        assert new_sha != old_sha
        assert [(s["sha256"], s["data_version"]) for s in status["served"]] == [(new_sha, 2), (old_sha, 1)]
        info = client.get("/v1/models/si", headers=AUTH).json()
        assert info["sha256"] == new_sha and info["learning"]["data_version"] == 2
        reply = client.post("/v1/models/si/calculate", json=calc_doc(probe), headers=AUTH).json()
        assert reply["sha256"] == new_sha
        # the new model file on disk is the served one, and it is the fit on the union
        on_disk = load_model(str(path))
        assert on_disk.sha256 == new_sha
        reference = refit(on_disk, si_data()[:30] + rest[:6])
        for c, res in zip(probe, reply["results"]):
            e = reference.evaluate(c.numbers, c.positions, c.cell, c.pbc).energy
            assert res["energy"] == e       # the same computation, same model: the same bits
        assert ScratchFitter.load_state(ScratchFitter.state_path(path), new_sha).data_version == 2


def test_failed_refit_keeps_the_served_model(base, tmp_path):
    path, rest = copy_model(base, tmp_path / "m")
    old_sha = load_model(str(path)).sha256
    with TestClient(app_for(path, tmp_path / "log")) as client:
        wait_ready(client)
        r = client.post("/v1/models/si/data", json={"structure": structure_doc(rest[0], "fail")}, headers=AUTH)
        assert r.status_code == 202
        status = wait_status(client, lambda s: s["refit"]["state"] == "failed")
        assert "refused by the test fitter" in status["refit"]["error"]
        assert 'aceserver_learning_refits_total{model="si",result="failed"} 1' in client.get("/metrics").text
        assert status["data_version"] == 1 and status["pending"] == [2] and status["sha256"] == old_sha
        reply = client.post("/v1/models/si/calculate", json=calc_doc(rest[:1]), headers=AUTH)
        assert reply.status_code == 200 and reply.json()["sha256"] == old_sha
    assert load_model(str(path)).sha256 == old_sha       # the file was not touched


class BlockingFitter(ScratchFitter):
    """Holds every update until `go` is set (to post during a refit, or to stop before one)."""

    def __init__(self):
        super().__init__()
        self.go, self.entered = threading.Event(), threading.Event()

    def update_batches(self, *args, **kwargs):
        self.entered.set()
        self.go.wait(60)
        return super().update_batches(*args, **kwargs)


def test_posts_during_a_refit_are_coalesced(base, tmp_path):
    path, rest = copy_model(base, tmp_path / "m")
    fitter = BlockingFitter()
    with TestClient(app_for(path, tmp_path / "log", fitter)) as client:
        wait_ready(client)
        client.post("/v1/models/si/data", json={"structure": structure_doc(rest[0])}, headers=AUTH)
        assert fitter.entered.wait(60)
        for c in rest[1:4]:                               # three posts while version 2 is being fitted
            assert client.post("/v1/models/si/data", json={"structure": structure_doc(c)}, headers=AUTH).json()[
                "version"] in (3, 4, 5)
        status = client.get("/v1/models/si/data", headers=AUTH).json()
        assert status["refit"]["state"] == "running" and status["pending"] == [2, 3, 4, 5]
        fitter.go.set()
        status = wait_status(client, lambda s: s["data_version"] == 5)
        # one refit for version 2, then one for 3, 4, 5 together (one fit): two models swapped in
        assert [s["data_version"] for s in status["served"]] == [5, 2, 1]
        assert status["refit"]["versions"] == [3, 4, 5] and fitter.updates == 2


def test_log_survives_a_restart(base, tmp_path):
    path, rest = copy_model(base, tmp_path / "m")
    fitter = BlockingFitter()
    app = app_for(path, tmp_path / "log", fitter)
    with TestClient(app) as client:
        wait_ready(client)
        r = client.post("/v1/models/si/data", json={"structures": [structure_doc(c) for c in rest[:3]]},
                        headers=AUTH)
        assert r.json()["version"] == 2
        assert fitter.entered.wait(60)                    # the refit has begun; the server stops before it ends
    fitter.go.set()
    app.state.learners["si"].stop(wait=120)
    # the interrupted refit wrote nothing; the log holds version 2 for the next server
    assert ScratchFitter.load_state(ScratchFitter.state_path(path)).data_version == 1
    with TestClient(app_for(path, tmp_path / "log")) as client:
        wait_ready(client)
        status = wait_status(client, lambda s: s["data_version"] == 2)
        r = client.post("/v1/models/si/data", json={"structure": structure_doc(rest[3])}, headers=AUTH)
        assert r.json()["version"] == 3
        status = wait_status(client, lambda s: s["data_version"] == 3)
        served = load_model(str(path))
        assert status["sha256"] == served.sha256
    reference = refit(served, si_data()[:30] + rest[:4])
    c = rest[-1]
    assert served.evaluate(c.numbers, c.positions, c.cell, c.pbc).energy == \
        reference.evaluate(c.numbers, c.positions, c.cell, c.pbc).energy


def test_pending_limit_and_a_model_replaced_by_hand(base, tmp_path):
    path, rest = copy_model(base, tmp_path / "m")
    fitter = BlockingFitter()
    first = structure_doc(rest[0])
    limit = 2 * len(first["numbers"])
    app = app_for(path, tmp_path / "log", fitter, learn_max_pending_atoms=limit)
    with TestClient(app) as client:
        wait_ready(client)
        assert client.post("/v1/models/si/data", json={"structure": first}, headers=AUTH).status_code == 202
        assert fitter.entered.wait(60)
        assert client.post("/v1/models/si/data", json={"structure": first}, headers=AUTH).status_code == 202
        r = client.post("/v1/models/si/data", json={"structure": first}, headers=AUTH)
        assert r.status_code == 503 and r.json()["kind"] == "too_much_pending", r.text
        assert r.headers["Retry-After"] == "10"
        assert client.get("/v1/models/si/data", headers=AUTH).json()["pending"] == [2, 3]
        # meanwhile another model is swapped in by hand (what --watch or SIGHUP would do)
        other = refit(load_model(str(path)), si_data()[:10])
        app.state.registry.install(ServedModel("si", other, str(path)))
        fitter.go.set()
        status = wait_status(client, lambda s: s["refit"]["state"] == "failed")
        assert "replaced outside the learning service" in status["refit"]["error"]
        assert client.get("/v1/models/si", headers=AUTH).json()["sha256"] == other.sha256


def test_a_log_of_another_fit_is_refused(base, tmp_path):
    """Two ways a fit state and a log can belong to different fits: the log's version 2 is not the one
    the state holds; the state's training files are not those of the fit the log's posts extend."""
    path, rest = copy_model(base, tmp_path / "m")
    log = DataLog(tmp_path / "log")
    log.append("si", rest[:2], after=1)                  # version 2, never fitted into this state
    state = ScratchFitter.load_state(ScratchFitter.state_path(path))
    state.data.append({"version": 2, "name": "posted-v2", "sha256": "0" * 64, "configs": 2, "added": "-"})
    ScratchFitter.save_state(state, ScratchFitter.state_path(path))
    with pytest.raises(ValueError, match="different fits"):
        app_for(path, tmp_path / "log")
    state.data = state.data[:1]                          # the same fit again: the log is fine with it
    ScratchFitter.save_state(state, ScratchFitter.state_path(path))
    app_for(path, tmp_path / "log").state.learners["si"].log.close()
    state.data[0]["name"] = "other.xyz"                 # a fit of other files, the same model name
    ScratchFitter.save_state(state, ScratchFitter.state_path(path))
    with pytest.raises(ValueError, match="extends another fit"):
        app_for(path, tmp_path / "log")


def test_a_batch_the_fitter_refuses_is_set_aside(base, tmp_path):
    """Versions 3 (refused as input by the fitter) and 4 arrive during the refit of 2: the refit of 3
    and 4 together is refused, so it is redone batch by batch; 3 is marked refused, 4 is fitted; 3
    is never pending again, also after a restart, and the numbering goes on."""
    path, rest = copy_model(base, tmp_path / "m")
    fitter = BlockingFitter()
    with TestClient(app_for(path, tmp_path / "log", fitter)) as client:
        wait_ready(client)
        post = lambda doc: client.post("/v1/models/si/data", json={"structure": doc}, headers=AUTH).json()  # noqa
        assert post(structure_doc(rest[0]))["version"] == 2
        assert fitter.entered.wait(60)
        assert post(structure_doc(rest[1], "bad"))["version"] == 3
        assert post(structure_doc(rest[2]))["version"] == 4
        fitter.go.set()
        status = wait_status(client, lambda s: s["data_version"] == 4)
        assert status["pending"] == [] and [r["version"] for r in status["refused"]] == [3]
        assert "refused as input by the test fitter" in status["refused"][0]["reason"]
        assert [s["data_version"] for s in status["served"]] == [4, 2, 1]
    state = ScratchFitter.load_state(ScratchFitter.state_path(path))
    assert [d["name"] for d in state.data[1:]] == ["posted-v2", "posted-v4"]
    with TestClient(app_for(path, tmp_path / "log")) as client:
        wait_ready(client)
        status = client.get("/v1/models/si/data", headers=AUTH).json()
        assert status["data_version"] == 4 and status["pending"] == [] and status["refused"][0]["version"] == 3
        assert client.post("/v1/models/si/data", json={"structure": structure_doc(rest[3], "bad")},
                           headers=AUTH).json()["version"] == 5
        status = wait_status(client, lambda s: len(s["refused"]) == 2)
        assert status["data_version"] == 4 and status["pending"] == [] and status["refit"]["state"] == "idle"
        metrics = client.get("/metrics").text
        assert 'aceserver_learning_refits_total{model="si",result="refused"} 1' in metrics


def test_a_log_that_cannot_be_written_is_a_503_and_the_server_serves_on(base, tmp_path):
    path, rest = copy_model(base, tmp_path / "m")
    app = app_for(path, tmp_path / "log")
    with TestClient(app) as client:
        wait_ready(client)
        app.state.learners["si"].log.close()             # as a failing disk would: every write raises
        r = client.post("/v1/models/si/data", json={"structure": structure_doc(rest[0])}, headers=AUTH)
        assert r.status_code == 503 and r.json()["kind"] == "log_unavailable", r.text
        assert "/" not in r.json()["message"]            # no path of the server in the reply
        assert client.post("/v1/models/si/calculate", json=calc_doc(rest[:1]), headers=AUTH).status_code == 200


def test_a_refit_cut_between_its_renames_is_recovered(base, tmp_path):
    """The state is renamed before the model file: a crash between the two leaves the new state beside
    the old model. The next start puts the new model back from its kept copy and learns on."""
    path, rest = copy_model(base, tmp_path / "m")
    old_bytes = path.read_bytes()
    with TestClient(app_for(path, tmp_path / "log")) as client:
        wait_ready(client)
        client.post("/v1/models/si/data", json={"structure": structure_doc(rest[0])}, headers=AUTH)
        new_sha = wait_status(client, lambda s: s["data_version"] == 2)["sha256"]
    path.write_bytes(old_bytes)                          # as if the model file's rename had not happened
    assert load_model(str(path)).sha256 != new_sha
    with TestClient(app_for(path, tmp_path / "log")) as client:
        wait_ready(client)
        status = client.get("/v1/models/si/data", headers=AUTH).json()
        assert status["sha256"] == new_sha and status["data_version"] == 2
        reply = client.post("/v1/models/si/calculate", json=calc_doc(rest[:1]), headers=AUTH).json()
        assert reply["sha256"] == new_sha
    assert load_model(str(path)).sha256 == new_sha


def test_serve_command_refuses_bad_learning_options(base, tmp_path):
    """`aceserver serve --learn` exits with 2 and the reason, before serving anything."""
    path, _ = copy_model(base, tmp_path / "m")
    stale = path.with_name(f".{path.name}.123.tmp.json")           # left by a refit cut short
    stale.write_text("{")
    for args, reason in (([f"si={path}", "--learn", "si"], "--learn-dir"),
                         ([f"si={path}", "--learn", "other", "--learn-dir", str(tmp_path / "log")], "no served model"),
                         ([f"si={path}", "--learn", "si", "--learn-dir", str(tmp_path / "log")], "no fit state")):
        if reason == "no fit state":
            ScratchFitter.state_path(path).unlink()
        done = subprocess.run([sys.executable, "-m", "aceserver.cli", "serve", *args, "--port", "1"],
                              capture_output=True, text=True, timeout=300)
        assert done.returncode == 2 and reason in done.stderr, done.stderr[-2000:]
    assert not stale.exists()                                      # cleaned by the start with --learn-dir
