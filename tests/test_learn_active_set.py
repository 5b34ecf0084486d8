"""γ across learning refits: the learning service extends the served model's active set with the
posted structures and keys it to the refitted model (`ModelLearner._carry_active_set`,
`fitting.active_set_extend`), so `gamma` and `max_gamma` stay available after each swap and after a
restart.

Against a real `aceserver serve --learn` (the incremental fitter; the model of
test_learn_incremental: Si_tiny.xyz less its last 8 frames, its active set built by
`active_set_from_files` as `aceserver activeset` does):

* a 2-atom diamond cell compressed by 10 % has γ > 1 before it is posted and γ ≤ 1 + tol after;
* γ over HTTP after the swap equals γ from numpy: `extrapolation_grade` of the model's descriptors
  with A inverted by numpy, A built from the new sidecar's environments through the public
  `model.descriptors` (each active atom as a cluster of its stored neighbours) and its floor rows;
* the sidecar beside the model file names the served sha256; `GET /v1/models/si` says γ is
  available; after SIGKILL and a restart γ is still available and the same; after a crash between
  the state's and the sidecar's writes (the old model and sidecar put back by hand) `recover`
  restores both;
* a model served without an active set stays without one, and says so;
* in process (the test's `ScratchFitter`): an extension that fails still swaps the model in;
  γ is then a 422 `no_active_set` quoting the reason, the status says it, and the log says why.
"""
from __future__ import annotations

import io
import logging
import shutil
import time

import httpx
import numpy as np
import pytest
from fastapi.testclient import TestClient

from aceserver.evaluation.uncertainty import extrapolation_grade
from aceserver.fitting import incremental
from aceserver.fitting.active_set_build import build_active_set
from aceserver.fitting.workflow import active_set_from_files
from aceserver.io import activeset_file
from aceserver.learning import learner as learner_module
from aceserver.loading import load_model

from _http_support import Server
from _learn_support import fitted_model, si_data, structure_doc
from test_fit_incremental import E0_SI, fit_config, read
from test_learn_service import AUTH as SERVICE_AUTH, app_for, copy_model, wait_ready, wait_status

pytestmark = pytest.mark.timeout(900)
SOLVER = {"name": "qr", "lambda": 1.0}
EPS = np.finfo(float).eps
TOL = 1e-9            # MaxVol's tol: every posted atom ends with γ ≤ 1 + TOL (in its own arithmetic)


@pytest.fixture(scope="module")
def fitted(tmp_path_factory):
    """The model with its fit state and its active set (from its training file), and the 8 frames
    it was not fitted on."""
    folder = tmp_path_factory.mktemp("learn-gamma")
    cfg = fit_config(folder, SOLVER, E0={"Si": E0_SI})
    model, _, _ = incremental.fit_with_state(cfg, plots=False, progress=False, threads=2, out=io.StringIO())
    active_set_from_files(model, [folder / "old.xyz"]).save(activeset_file.sidecar_path(cfg.output_model))
    return folder, cfg.output_model, read(folder / "old.xyz"), read(folder / "new.xyz")


def compressed(c, factor=0.9):
    """(numbers, positions, cell, pbc) of configuration c with its cell and positions scaled by `factor`."""
    return c.numbers, c.positions * factor, c.cell * factor, c.pbc


def labelled(model, numbers, positions, cell, pbc):
    """A structure document labelled with the model's own energy and forces (γ depends on the
    positions only; the labels only have to be valid)."""
    ev = model.evaluate(numbers, positions, cell, pbc)
    return {"numbers": numbers.tolist(), "positions": positions.tolist(), "cell": cell.tolist(),
            "pbc": pbc.tolist(), "energy": float(ev.energy), "forces": ev.forces.tolist()}


def http_gamma(url, structures):
    body = {"structures": [{k: s[k] for k in ("numbers", "positions", "cell", "pbc")} for s in structures],
            "properties": ["gamma", "max_gamma"]}
    r = httpx.post(f"{url}/v1/models/si/calculate", json=body, timeout=120)
    return r


def numpy_A(model, env):
    """A (L, L) of the sidecar's only element, built through `model.descriptors`: each active atom
    as a cluster (its neighbours at the stored vectors), then the floor rows value·e_k."""
    rows = []
    for k in range(len(env.centre_numbers)):
        lo, hi = env.offsets[k], env.offsets[k + 1]
        numbers = np.concatenate([[env.centre_numbers[k]], env.numbers[lo:hi]])
        positions = np.vstack([np.zeros(3), env.vectors[lo:hi]])
        rows.append(model.descriptors(numbers, positions, None, False, atoms=[0])[0])
    L = model.descriptor_sizes["Si"]
    F = np.zeros((len(env.floor_columns), L))
    F[np.arange(len(env.floor_columns)), env.floor_columns] = env.floor_values
    return np.vstack([np.array(rows).reshape(-1, L), F])


def bound(A):
    """Rounding of γ = max |b A⁻¹| between two backward-stable inversions of A (and of rows
    recomputed in another order of sums): a few L·κ(A_s)·ε relative, A_s the column-scaled A."""
    As = A / np.abs(A).max(axis=0)
    return 10 * len(A) * np.linalg.cond(As) * EPS


def wait_version(url, version, timeout=300):
    deadline = time.monotonic() + timeout
    while True:
        status = httpx.get(f"{url}/v1/models/si/data", timeout=30).json()
        if status["data_version"] >= version and status["refit"]["state"] != "running":
            return status
        assert time.monotonic() < deadline and status["refit"]["state"] != "failed", status
        time.sleep(0.1)


def test_gamma_survives_learning_swaps_and_restarts(fitted, tmp_path):
    folder, src, old, new = fitted
    for name in (src.name, incremental.state_path(src).name, activeset_file.sidecar_path(src).name):
        shutil.copy(folder / name, tmp_path / name)
    path = tmp_path / src.name
    before = load_model(str(path))
    c = next(c for c in old if c.natoms == 2 and c.pbc.all())
    comp = labelled(before, *compressed(c))
    probes = [comp] + [labelled(before, x.numbers, x.positions, x.cell, x.pbc) for x in (old[3], new[0], new[-1])]
    args = [f"si={path}", "--learn", "si", "--learn-dir", str(tmp_path / "learn")]
    with Server(args) as server:
        info = httpx.get(f"{server.url}/v1/models/si", timeout=30).json()
        assert info["gamma_available"] and info["learning"]["active_set"]["available"], info
        r = http_gamma(server.url, probes)
        assert r.status_code == 200, r.text
        g_before = r.json()["results"][0]["max_gamma"]
        assert g_before > 1.5, g_before                      # far from the training data
        r = httpx.post(f"{server.url}/v1/models/si/data", timeout=60,
                       json={"structures": [comp] + [structure_doc(x) for x in new[:3]]})
        assert r.status_code == 202 and r.json()["version"] == 2, r.text
        status = wait_version(server.url, 2)
        info = httpx.get(f"{server.url}/v1/models/si", timeout=30).json()
        r = http_gamma(server.url, probes)
        assert r.status_code == 200, r.text
        after = [np.array(res["gamma"]) for res in r.json()["results"]]
    sha = status["sha256"]
    assert sha != before.sha256 and info["sha256"] == sha and info["gamma_available"] is True
    learned = status["active_set"]
    assert learned["available"] is True and learned["reason"] is None and learned["seconds"] >= 0
    assert sum(learned["added"].values()) >= 1 and status["refit"]["seconds"] >= learned["seconds"]
    # the sidecar beside the model file, and its kept copy, belong to the served model
    model = load_model(str(path), active_set=False)
    env = activeset_file.read(activeset_file.sidecar_path(path))
    assert model.sha256 == sha == env.model_sha256
    kept = activeset_file.sidecar_path(tmp_path / "learn" / "models" / f"si.{sha}.json")
    assert kept.read_bytes() == activeset_file.sidecar_path(path).read_bytes()
    # γ over HTTP equals numpy's, from the sidecar's environments
    A = numpy_A(model, env)
    A_inv = np.linalg.inv(A)
    tol = bound(A)
    for p, g in zip(probes, after):
        D = model.descriptors(np.array(p["numbers"]), np.array(p["positions"]), np.array(p["cell"]),
                              np.array(p["pbc"]))
        ref = extrapolation_grade(D, A_inv)
        assert np.allclose(g, ref, rtol=tol, atol=0), (np.abs(g - ref) / ref).max()
    assert after[0].max() <= 1 + TOL + tol, after[0]         # the compressed cell is now spanned
    print(f"\nmax γ of the 10 %-compressed cell: {g_before:.3g} before its post, {after[0].max():.12f} after; "
          f"rows added {learned['added']}; extension {learned['seconds']} s of the refit's "
          f"{status['refit']['seconds']} s; rounding bound {tol:.1e}")

    # SIGKILL after the swap, then a restart: the sidecar attaches, γ is the same
    def gamma_after_restart():
        with Server(args) as server:
            info = httpx.get(f"{server.url}/v1/models/si", timeout=30).json()
            assert info["sha256"] == sha and info["gamma_available"], info
            assert info["learning"]["active_set"]["available"], info["learning"]
            r = http_gamma(server.url, probes)
            assert r.status_code == 200, r.text
            return [np.array(res["gamma"]) for res in r.json()["results"]]

    server = Server(args).wait_ready()
    server.stop()                                            # SIGKILL
    for g, g0 in zip(gamma_after_restart(), after):
        assert np.allclose(g, g0, rtol=tol, atol=0)
    # a crash between the writes of the state and of the sidecar: the old model file and the old
    # sidecar beside the new state; `recover` puts back the new model and its sidecar from their copies
    old_copy = tmp_path / "learn" / "models" / f"si.{before.sha256}.json"
    shutil.copy(old_copy, path)
    shutil.copy(activeset_file.sidecar_path(old_copy), activeset_file.sidecar_path(path))
    for g, g0 in zip(gamma_after_restart(), after):
        assert np.allclose(g, g0, rtol=tol, atol=0)
    assert activeset_file.read(activeset_file.sidecar_path(path)).model_sha256 == sha


def test_a_model_without_an_active_set_stays_without(fitted, tmp_path):
    folder, src, old, new = fitted
    for name in (src.name, incremental.state_path(src).name):
        shutil.copy(folder / name, tmp_path / name)
    path = tmp_path / src.name
    args = [f"si={path}", "--learn", "si", "--learn-dir", str(tmp_path / "learn")]
    with Server(args) as server:
        r = httpx.post(f"{server.url}/v1/models/si/data", timeout=60, json={"structures": [structure_doc(new[0])]})
        assert r.status_code == 202, r.text
        status = wait_version(server.url, 2)
        info = httpx.get(f"{server.url}/v1/models/si", timeout=30).json()
        r = http_gamma(server.url, [structure_doc(new[0])])
    assert status["active_set"]["available"] is False and "without an active set" in status["active_set"]["reason"]
    assert info["gamma_available"] is False and info["sha256"] == status["sha256"]
    assert r.status_code == 422 and r.json()["kind"] == "no_active_set"
    assert not activeset_file.sidecar_path(path).exists()


def test_a_failed_extension_swaps_the_model_without_gamma(tmp_path, monkeypatch, caplog):
    """In process, with the test's ScratchFitter (a refit from scratch) and an extension that raises."""
    path, model, rest = fitted_model(tmp_path / "base")
    build_active_set(model, si_data()[:30]).save(activeset_file.sidecar_path(path))
    path, rest = copy_model((path, model, rest), tmp_path / "m")
    shutil.copy(activeset_file.sidecar_path(tmp_path / "base" / path.name), activeset_file.sidecar_path(path))

    def broken(*args, **kwargs):
        raise RuntimeError("the test's extension fails")

    monkeypatch.setattr(learner_module, "extend_active_set", broken)
    caplog.set_level(logging.INFO, logger="aceserver.learning")
    with TestClient(app_for(path, tmp_path / "log")) as client:
        wait_ready(client)
        assert client.get("/v1/models/si", headers=SERVICE_AUTH).json()["gamma_available"] is True
        r = client.post("/v1/models/si/data", json={"structure": structure_doc(rest[0])}, headers=SERVICE_AUTH)
        assert r.status_code == 202, r.text
        status = wait_status(client, lambda s: s["data_version"] == 2 and s["refit"]["state"] == "idle")
        info = client.get("/v1/models/si", headers=SERVICE_AUTH).json()
        calc = {"structures": [{k: structure_doc(rest[1])[k] for k in ("numbers", "positions", "cell", "pbc")}],
                "properties": ["max_gamma"]}
        r = client.post("/v1/models/si/calculate", json=calc, headers=SERVICE_AUTH)
    assert status["sha256"] != model.sha256 and info["sha256"] == status["sha256"]
    assert info["gamma_available"] is False
    assert status["active_set"]["available"] is False and "the test's extension fails" in status["active_set"]["reason"]
    assert r.status_code == 422 and r.json()["kind"] == "no_active_set"
    assert "the test's extension fails" in r.json()["message"]
    assert any("could not be carried over" in rec.getMessage() and rec.exc_info for rec in caplog.records)
