"""The learning service with `fitting.incremental`, as a real `aceserver serve --learn` process under
concurrent `calculate` load.

A Si model is fitted with its state (`fit_with_state`, ridge QR λ = 1, as test_fit_incremental)
on Si_tiny.xyz less its last 8 frames; those 8 are posted in three batches (JSON, msgpack, JSON)
while client threads keep sending calculate requests. Then:

* no calculate request failed; every reply names a sha256 that the server served (its learning
  status lists it) and whose model file it kept (`<learn-dir>/models/si.<sha256>.json`, checked
  against its content hash on load), and the reply's energies are exactly what that model computes
  in process: a reply never comes from another model than the one it names;
* the data posted are in the final model: its predictions equal those of a fit from scratch on the
  union (acefit, in memory) within the first-order perturbation bounds of two backward-stable
  least-squares solves (tests/lsq_bounds.py; test_fit_incremental's `check_predictions`);
* the model file and state on disk are the final ones (data version 4, batches posted-v2..v4);
* after a restart the log and versions go on: the next post is version 5 and is refitted; a post
  acknowledged just before the server is killed (SIGKILL) is fitted by the next server.
"""
from __future__ import annotations

import io
import threading
import time

import httpx
import msgpack
import numpy as np
import pytest

from aceclient import ACELearning, InvalidInputError
from ase import Atoms
from ase.calculators.singlepoint import SinglePointCalculator

from aceserver.fitting import incremental
from aceserver.learning import DataLog
from aceserver.loading import load_model

from _http_support import Server
from _learn_support import structure_doc
from lsq_bounds import lsq_bounds
from test_fit_incremental import E0_SI, check_predictions, fit_config, read, scratch

pytestmark = pytest.mark.timeout(900)
SOLVER = {"name": "qr", "lambda": 1.0}
CLIENTS = 3
TOKEN = "learn-token"
AUTH = {"Authorization": f"Bearer {TOKEN}"}


def _calc_body(configs):
    return {"structures": [{k: structure_doc(c)[k] for k in ("numbers", "positions", "cell", "pbc")}
                           for c in configs], "properties": ["energy", "forces"]}


def _status(server):
    return httpx.get(f"{server.url}/v1/models/si/data", headers=AUTH, timeout=30).json()


def _wait_version(server, version, timeout=300):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        status = _status(server)
        if status["data_version"] >= version and status["refit"]["state"] != "running":
            return status
        assert status["refit"]["state"] != "failed", status
        time.sleep(0.1)
    raise AssertionError(f"data version {version} not served within {timeout} s:\n{server.output()}")


def _msgpack_doc(c):
    doc = structure_doc(c)
    for key in ("positions", "forces", "cell", "virial"):
        a = np.asarray(doc[key], dtype="<f8")
        doc[key] = {"dtype": "<f8", "shape": list(a.shape), "data": a.tobytes()}
    return doc


def test_learning_under_load_swaps_and_equals_scratch(tmp_path):
    cfg = fit_config(tmp_path, SOLVER, E0={"Si": E0_SI})
    model, _, state = incremental.fit_with_state(cfg, plots=False, progress=False, threads=2, out=io.StringIO())
    path = cfg.output_model
    old, new = read(tmp_path / "old.xyz"), read(tmp_path / "new.xyz")
    batches = [new[:3], new[3:5], new[5:]]
    probe = old[1:4]                                     # periodic Si cells of several sizes
    (tmp_path / "token").write_text(TOKEN)
    learn_dir = tmp_path / "learn"
    args = [f"si={path}", "--learn", "si", "--learn-dir", str(learn_dir), "--token-file", str(tmp_path / "token"),
            "--workers", "4"]
    replies, errors, stop = [], [], threading.Event()

    def load():
        with httpx.Client(base_url=server.url, headers=AUTH, timeout=60) as client:
            while not stop.is_set():
                try:
                    r = client.post("/v1/models/si/calculate", json=_calc_body(probe))
                except httpx.HTTPError as ex:
                    errors.append(repr(ex))
                    continue
                if r.status_code != 200:
                    errors.append(f"{r.status_code}: {r.text[:300]}")
                else:
                    doc = r.json()
                    replies.append((doc["sha256"], [res["energy"] for res in doc["results"]],
                                    [res["forces"] for res in doc["results"]]))

    with Server(args) as server:
        threads = [threading.Thread(target=load) for _ in range(CLIENTS)]
        for t in threads:
            t.start()
        try:
            time.sleep(1.0)
            r = httpx.post(f"{server.url}/v1/models/si/data", headers=AUTH, timeout=60,
                           json={"structures": [structure_doc(c) for c in batches[0]]})
            assert r.status_code == 202 and r.json()["version"] == 2, r.text
            r = httpx.post(f"{server.url}/v1/models/si/data", timeout=60,
                           content=msgpack.packb({"structures": [_msgpack_doc(c) for c in batches[1]]}),
                           headers={**AUTH, "Content-Type": "application/msgpack"})
            assert r.status_code == 202 and r.json()["version"] == 3, r.text
            r = httpx.post(f"{server.url}/v1/models/si/data", headers=AUTH, timeout=60,
                           json={"structures": [structure_doc(c) for c in batches[2]]})
            assert r.status_code == 202 and r.json()["version"] == 4, r.text
            status = _wait_version(server, 4)
            time.sleep(1.0)                              # load on the final model too
        finally:
            stop.set()
            for t in threads:
                t.join(120)
        info = httpx.get(f"{server.url}/v1/models/si", headers=AUTH, timeout=30).json()

    print(f"{len(replies)} calculate replies, {len(errors)} failed; models served {len(status['served'])}, "
          f"answering: {len({sha for sha, _, _ in replies})}; refits {[s['data_version'] for s in status['served']]}")
    assert not errors, errors[:5]
    served = {s["sha256"]: s["data_version"] for s in status["served"]}
    assert served[model.sha256] == 1 and status["data_version"] == 4 and status["pending"] == []
    assert info["learning"]["data_version"] == 4 and info["sha256"] == status["sha256"]
    seen = {sha for sha, _, _ in replies}
    assert model.sha256 in seen and status["sha256"] in seen, "the load did not span the swaps"
    assert seen <= set(served)
    kept = {}
    for sha in seen:                                     # the kept file of each model that answered
        kept[sha] = load_model(str(learn_dir / "models" / f"si.{sha}.json"))
        assert kept[sha].sha256 == sha
    expected = {sha: [m.evaluate(c.numbers, c.positions, c.cell, c.pbc) for c in probe] for sha, m in kept.items()}
    for sha, energies, forces in replies:
        assert energies == [ev.energy for ev in expected[sha]]
        for f, ev in zip(forces, expected[sha]):
            assert np.array_equal(np.array(f), ev.forces)

    # the final model, on disk with its state, equals a fit from scratch on the union
    final = load_model(str(path))
    assert final.sha256 == status["sha256"]
    disk_state = incremental.load_state(incremental.state_path(path), model_sha256=final.sha256)
    assert disk_state.data_version == 4
    assert [d["name"] for d in disk_state.data[1:]] == ["posted-v2", "posted-v3", "posted-v4"]
    union = old + new
    ref, res, Aw, yw, gamma, system, w = scratch(union, SOLVER, {"Si": E0_SI})
    c = gamma * ref.parameters
    b = lsq_bounds(Aw, yw, c, lam=1.0)
    assert np.linalg.norm(gamma * final.parameters - c) / np.linalg.norm(c) < b.x_rel
    check_predictions(final, ref, union, system, w, b.fitted_rel * np.linalg.norm(Aw @ c))

    # a restart: the log and the versions go on; this post goes through the client (aceclient.ACELearning),
    # its labels as an ASE calculator's results, the stress (eV/Å³, Voigt) made from the frame's virial
    c = next(c for c in old if c.virial is not None and c.natoms > 1)
    atoms = Atoms(numbers=c.numbers, positions=c.positions, cell=c.cell, pbc=c.pbc)
    sigma = -c.virial / atoms.get_volume()
    atoms.calc = SinglePointCalculator(atoms, energy=c.energy, forces=c.forces,
                                       stress=sigma.ravel()[[0, 4, 8, 5, 2, 1]])
    with Server(args) as server, ACELearning(server.url, token=TOKEN) as learn:
        status = learn.status("si")
        assert status["data_version"] == 4 and status["latest_version"] == 4 and status["sha256"] == final.sha256
        with pytest.raises(ValueError, match="energy"):
            learn.post("si", Atoms("Si2", positions=[[0, 0, 0], [0, 0, 2.3]]))      # no labels: refused client-side
        bad = atoms.copy()
        bad.calc = SinglePointCalculator(bad, energy=c.energy, forces=np.full((len(bad), 3), np.nan))
        with pytest.raises(InvalidInputError) as refused:                         # NaN forces: refused by the server
            learn.post("si", bad)
        assert refused.value.status == 422 and refused.value.field == "structures[0].forces[0][0]"
        posted = learn.post("si", atoms, config_type="posted")
        assert posted["version"] == 5
        status = learn.wait("si", 5, timeout=300)
        assert status["refit"]["versions"] == [5] and status["sha256"] != final.sha256
    assert load_model(str(path)).sha256 == status["sha256"]

    # SIGKILL right after the 202 (before the refit can have finished): the batch is on disk, and the
    # next server fits it
    server = Server(args).wait_ready()
    try:
        r = httpx.post(f"{server.url}/v1/models/si/data", headers=AUTH, timeout=60,
                       json={"structures": [structure_doc(c) for c in old[4:6]]})
        assert r.status_code == 202 and r.json()["version"] == 6, r.text
    finally:
        server.stop()                                    # SIGKILL
    with Server(args) as server, ACELearning(server.url, token=TOKEN) as learn:
        assert learn.wait("si", 6, timeout=300)["data_version"] == 6
    logged = DataLog(learn_dir).read("si", 5)[0]
    # virial -> stress (client) -> virial (server): W = -V·σ twice, a few roundings of |W|
    assert np.allclose(logged.virial, c.virial, rtol=0, atol=1e-13 * np.abs(c.virial).max())
    assert logged.energy == c.energy and np.array_equal(logged.forces, c.forces)


def test_an_isolated_atom_against_the_fits_e0_is_refused_and_learning_goes_on(tmp_path):
    """E0 from the isolated atom of the data (the fit's rule): a posted isolated Si atom with another
    energy contradicts it, and `update_batches` refuses that batch as input (FitDataError). The batch
    is marked refused, the served model stays, and the next batch is fitted."""
    cfg = fit_config(tmp_path, SOLVER)
    model, _, _ = incremental.fit_with_state(cfg, plots=False, progress=False, threads=2, out=io.StringIO())
    new = read(tmp_path / "new.xyz")
    atom = {"numbers": [14], "positions": [[10.0, 10.0, 10.0]], "cell": [[20.0, 0, 0], [0, 20.0, 0], [0, 0, 20.0]],
            "pbc": True, "energy": E0_SI + 1.0, "forces": [[0.0, 0.0, 0.0]], "config_type": "isolated_atom"}
    args = [f"si={cfg.output_model}", "--learn", "si", "--learn-dir", str(tmp_path / "learn")]
    with Server(args) as server:
        r = httpx.post(f"{server.url}/v1/models/si/data", timeout=60,
                       json={"structures": [atom, structure_doc(new[0])]})
        assert r.status_code == 202 and r.json()["version"] == 2
        deadline = time.monotonic() + 300
        while not (status := httpx.get(f"{server.url}/v1/models/si/data", timeout=30).json())["refused"]:
            assert time.monotonic() < deadline, status
            time.sleep(0.1)
        assert status["refused"][0]["version"] == 2 and "isolated-atom energies" in status["refused"][0]["reason"]
        assert status["data_version"] == 1 and status["pending"] == [] and status["sha256"] == model.sha256
        r = httpx.post(f"{server.url}/v1/models/si/data", timeout=60,
                       json={"structures": [structure_doc(c) for c in new[1:3]]})
        assert r.json()["version"] == 3
        deadline = time.monotonic() + 300
        while (status := httpx.get(f"{server.url}/v1/models/si/data", timeout=30).json())["data_version"] < 3:
            assert time.monotonic() < deadline and status["refit"]["state"] != "failed", status
            time.sleep(0.1)
        assert status["sha256"] != model.sha256
