"""The HTTP API against a real server: results equal in-process evaluation, in JSON and msgpack."""
from __future__ import annotations

import json

import httpx
import msgpack
import numpy as np
import pytest
from ase import units
from ase.md.verlet import VelocityVerlet

from _http_support import model_file, shared_server, si_structures

pytestmark = pytest.mark.timeout(300)
TOL = 1e-12


@pytest.fixture(scope="module")
def server():
    return shared_server()


@pytest.fixture(scope="module")
def local():
    import aceserver

    return aceserver.ACECalculator(str(model_file("si")))


def _local_results(calc, atoms):
    a = atoms.copy()
    a.calc = calc
    out = {"energy": a.get_potential_energy(), "forces": a.get_forces(), "energies": a.get_potential_energies()}
    if a.pbc.all():
        out["stress"] = a.get_stress()
    return out


def _array(x):
    if isinstance(x, dict):   # msgpack array map
        assert x["dtype"] == "<f8"
        return np.frombuffer(x["data"], dtype="<f8").reshape(x["shape"])
    return np.asarray(x, dtype=float)


def _post(url, body, fmt):
    if fmt == "json":
        r = httpx.post(url, content=json.dumps(body), headers={"Content-Type": "application/json"}, timeout=60)
        assert r.headers["content-type"].startswith("application/json")
        return r, (r.json() if r.status_code == 200 else None)
    r = httpx.post(url, content=msgpack.packb(body), timeout=60,
                   headers={"Content-Type": "application/msgpack", "Accept": "application/msgpack"})
    assert r.headers["content-type"].startswith("application/msgpack" if r.status_code == 200 else "application/json")
    return r, (msgpack.unpackb(r.content) if r.status_code == 200 else None)


def _structure(atoms, fmt):
    if fmt == "msgpack":
        def pack(a, dtype):
            a = np.ascontiguousarray(a, dtype=dtype)
            return {"dtype": dtype, "shape": list(a.shape), "data": a.tobytes()}
        return {"numbers": pack(atoms.numbers, "<i8"), "positions": pack(atoms.positions, "<f8"),
                "cell": pack(np.asarray(atoms.cell), "<f8"), "pbc": atoms.pbc.tolist()}
    return {"numbers": atoms.numbers.tolist(), "positions": atoms.positions.tolist(),
            "cell": np.asarray(atoms.cell).tolist(), "pbc": atoms.pbc.tolist()}


@pytest.mark.parametrize("fmt", ["json", "msgpack"])
def test_results_equal_in_process(server, local, fmt):
    structures = si_structures()
    body = {"structures": [_structure(a, fmt) for a in structures]}
    r, reply = _post(f"{server.url}/v1/models/si/calculate", body, fmt)
    assert r.status_code == 200, r.text
    assert reply["model"] == "si" and len(reply["results"]) == len(structures)
    for atoms, res in zip(structures, reply["results"]):
        ref = _local_results(local, atoms)
        assert abs(res["energy"] - ref["energy"]) <= TOL * max(1, abs(ref["energy"]))
        assert res["free_energy"] == res["energy"]
        np.testing.assert_allclose(_array(res["forces"]), ref["forces"], rtol=0, atol=TOL)
        np.testing.assert_allclose(_array(res["energies"]), ref["energies"], rtol=0, atol=TOL)
        assert _array(res["virial"]).shape == (3, 3)
        if "stress" in ref:
            np.testing.assert_allclose(_array(res["stress"]), ref["stress"], rtol=0, atol=TOL)
            # virial and stress agree: W = -V sigma
            w = _array(res["virial"])
            voigt = -np.array([w[0, 0], w[1, 1], w[2, 2], w[1, 2], w[0, 2], w[0, 1]]) / atoms.cell.volume
            np.testing.assert_allclose(voigt, ref["stress"], rtol=0, atol=TOL)
        else:
            assert res["stress"] is None


def test_single_structure_symbols_and_scalar_pbc(server, local):
    atoms = si_structures()[2]
    body = {"structure": {"symbols": atoms.get_chemical_symbols(), "positions": atoms.positions.tolist(),
                          "cell": atoms.cell.tolist(), "pbc": True}}
    r = httpx.post(f"{server.url}/v1/models/si/calculate", json=body, timeout=60)
    assert r.status_code == 200, r.text
    (res,) = r.json()["results"]
    assert abs(res["energy"] - _local_results(local, atoms)["energy"]) < 1e-9


def test_properties_select_outputs(server):
    atoms = si_structures()[0]
    body = {"structure": _structure(atoms, "json"), "properties": ["energy"]}
    r = httpx.post(f"{server.url}/v1/models/si/calculate", json=body, timeout=60)
    assert r.status_code == 200, r.text
    (res,) = r.json()["results"]
    assert set(res) == {"energy", "free_energy"}


def test_committee_spread(server):
    import aceserver

    atoms = si_structures()[2]
    model = aceserver.load_model(str(model_file("sic")))
    ev = model.evaluate(atoms.numbers, atoms.positions, np.asarray(atoms.cell), atoms.pbc,
                        committee=True, committee_forces=True)
    body = {"structure": _structure(atoms, "msgpack"), "properties": ["energy", "committee", "forces_committee"]}
    r, reply = _post(f"{server.url}/v1/models/sic/calculate", body, "msgpack")
    assert r.status_code == 200, r.text
    (res,) = reply["results"]
    np.testing.assert_allclose(_array(res["energy_committee"]), ev.energy_committee, rtol=0, atol=TOL)
    assert res["energy_std"] == pytest.approx(np.std(ev.energy_committee), abs=TOL)
    np.testing.assert_allclose(_array(res["forces_committee"]), ev.forces_committee, rtol=0, atol=TOL)
    # default properties include the committee where the model has one, not where it has none
    default = httpx.post(f"{server.url}/v1/models/sic/calculate", json={"structure": _structure(atoms, "json")},
                         timeout=60).json()["results"][0]
    assert len(default["energy_committee"]) == 4 and "forces_committee" not in default
    plain = httpx.post(f"{server.url}/v1/models/si/calculate", json={"structure": _structure(atoms, "json")},
                       timeout=60).json()["results"][0]
    assert "energy_committee" not in plain


def test_model_listing_and_info(server):
    import aceserver

    listing = httpx.get(f"{server.url}/v1/models", timeout=10).json()
    assert listing["default"] == "si"
    assert [m["name"] for m in listing["models"]] == ["si", "sic"]
    info = httpx.get(f"{server.url}/v1/models/sic", timeout=10).json()
    model = aceserver.load_model(str(model_file("sic")))
    assert info["species"] == ["Si"] and info["rcut"] == model.rcut
    assert info["length_basis"] == model.length_basis and info["sha256"] == model.sha256
    assert info["committee_size"] == 4
    assert info["fit_errors"]["train"]["rmse"]["set"]["E"] == 0.0015
    assert info["fit_error_units"]["F"] == "eV/Å"
    assert info["units"]["energy"] == "eV" and info["units"]["length"] == "Å"


def test_health_ready_metrics(server):
    assert httpx.get(f"{server.url}/healthz", timeout=10).json()["status"] == "ok"
    assert httpx.get(f"{server.url}/readyz", timeout=10).json()["status"] == "ready"
    httpx.post(f"{server.url}/v1/models/si/calculate", json={"structure": _structure(si_structures()[0], "json")},
               timeout=60)
    httpx.post(f"{server.url}/v1/models/nope/calculate", json={}, timeout=60)
    r = httpx.get(f"{server.url}/metrics", timeout=10)
    assert r.headers["content-type"].startswith("text/plain")
    samples = {}
    for line in r.text.splitlines():
        if line and not line.startswith("#"):
            name, value = line.rsplit(" ", 1)
            samples[name] = float(value)
    assert samples['aceserver_http_requests_total{method="POST",route="/v1/models/{name}/calculate",status="200"}'] >= 1
    assert samples['aceserver_atoms_evaluated_total{model="si"}'] >= 2
    assert samples['aceserver_errors_total{kind="unknown_model"}'] >= 1
    assert samples['aceserver_ready'] == 1
    inf = samples['aceserver_http_request_duration_seconds_bucket{route="/v1/models/{name}/calculate",le="+Inf"}']
    assert inf == samples['aceserver_http_request_duration_seconds_count{route="/v1/models/{name}/calculate"}']


def test_openapi_documents_units(server):
    spec = httpx.get(f"{server.url}/openapi.json", timeout=10).json()
    calc = spec["paths"]["/v1/models/{name}/calculate"]["post"]
    assert set(calc["requestBody"]["content"]) == {"application/json", "application/msgpack"}
    props = spec["components"]["schemas"]["Structure"]["properties"]
    assert "Å" in props["positions"]["description"] and "Å" in props["cell"]["description"]
    result = spec["components"]["schemas"]["Result"]["properties"]
    for field, unit in [("energy", "eV"), ("forces", "eV/Å"), ("stress", "eV/Å³"), ("virial", "eV")]:
        assert unit in result[field]["description"], field


@pytest.mark.parametrize("binary", [True, False])
def test_client_calculator_equals_local(server, local, binary):
    from aceclient import ACEServerCalculator

    with ACEServerCalculator(server.url, model="si", binary=binary) as remote:
        for atoms in si_structures():
            a = atoms.copy()
            a.calc = remote
            ref = _local_results(local, atoms)
            assert abs(a.get_potential_energy() - ref["energy"]) <= TOL * max(1, abs(ref["energy"]))
            np.testing.assert_allclose(a.get_forces(), ref["forces"], rtol=0, atol=TOL)
            np.testing.assert_allclose(a.get_potential_energies(), ref["energies"], rtol=0, atol=TOL)
            if "stress" in ref:
                np.testing.assert_allclose(a.get_stress(), ref["stress"], rtol=0, atol=TOL)
        many = remote.calculate_many(si_structures())
        for atoms, res in zip(si_structures(), many):
            np.testing.assert_allclose(res["forces"], _local_results(local, atoms)["forces"], rtol=0, atol=TOL)


def test_client_default_model(server):
    from aceclient import ACEServerCalculator

    with ACEServerCalculator(server.url) as remote:
        assert remote.model == "si" and remote.model_info["species"] == ["Si"]


def test_remote_md_equals_local_md(server, local):
    from aceclient import ACEServerCalculator

    def run(calc):
        atoms = si_structures()[3].copy()
        atoms.set_momenta(np.zeros_like(atoms.positions))
        atoms.calc = calc
        dyn = VelocityVerlet(atoms, timestep=1.0 * units.fs)
        energies = []
        dyn.attach(lambda: energies.append(atoms.get_total_energy()))
        dyn.run(10)
        return atoms.positions.copy(), atoms.get_velocities(), np.array(energies)

    with ACEServerCalculator(server.url, model="si") as remote:
        p_remote, v_remote, e_remote = run(remote)
    p_local, v_local, e_local = run(local)
    assert len(e_local) == 11
    np.testing.assert_allclose(p_remote, p_local, rtol=0, atol=1e-12)
    np.testing.assert_allclose(v_remote, v_local, rtol=0, atol=1e-12)
    np.testing.assert_allclose(e_remote, e_local, rtol=0, atol=1e-12)


def test_client_stress_only_for_periodic_cells(server):
    from ase.calculators.calculator import PropertyNotImplementedError

    from aceclient import ACEServerCalculator

    cluster = si_structures()[-1]
    assert not cluster.pbc.any()
    with ACEServerCalculator(server.url, model="si") as remote:
        cluster.calc = remote
        cluster.get_potential_energy()
        with pytest.raises(PropertyNotImplementedError):
            cluster.get_stress()
