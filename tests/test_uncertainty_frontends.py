"""γ and the per-atom committee spreads, served by every front end (issue 22, items 3 and 4).

One structure goes through HTTP (in-process `TestClient`, JSON and msgpack), the ASE calculator
and the i-PI driver (a real `Session` over a socket pair, reply bytes parsed as i-PI reads them):
all report the same `gamma`, `max_gamma`, `energies_std` and `forces_std`. They are checked against
independent references:

* γ_i = max_k |(D_i A⁻¹)_k| recomputed with numpy from `model.descriptors` and the attached A⁻¹;
* energies_std_i = the population std (ddof 0) over the members k of E0 + D_i·θ_k (numpy, from the
  descriptors and each member's parameter block);
* forces_std = the std over members of the forces of K separate models, one per member's θ_k.

The model is a small ace1 Si model (order 2, totaldegree 6: 23 functions) with random parameters, a
4-member committee and an active set built here by `maxvol` on its descriptors of the 229 atoms
of tests/data/Si_tiny.xyz. The structure is a compressed, rattled diamond cell, so that some atoms
extrapolate (γ > 1) and the spreads are not small.

A last test runs the real i-PI (4-bead PIMD) against the driver with a `max_gamma` extras
trajectory and `gamma_every=3`, and checks what i-PI prints.

Tolerances. The front ends read the same `Evaluation` fields, so HTTP (JSON floats round-trip
exactly, msgpack carries the raw float64 bytes) and ASE agree bit for bit; i-PI sends the spreads
in Hartree (Hartree/Bohr), one division and one multiplication back, each rounding by at most half
an ulp, hence 2 ulps relative there (γ is dimensionless and exact). Against the numpy references
the summation order differs: a dot product of L terms computed in two orders differs by at most
about 2·L·ε·Σ|terms| (the standard bound γ_L ≈ L·ε on each), so that is the bound used, with the
terms' absolute sums computed from the same arrays.
"""
from __future__ import annotations

import json
import math
import socket
import struct
import threading
import time
from pathlib import Path

import msgpack
import numpy as np
import pytest
from ase.build import bulk
from ase.io import read
from fastapi.testclient import TestClient
from ipi_support import recv_exact

import aceserver
from aceserver.calculator import ACECalculator
from aceserver.errors import ACEInputError
from aceserver.fitting.active_set import maxvol
from aceserver.fitting.data import read_configs, Keys
from aceserver.fitting.gamma_report import format_gamma_report, gamma_report
from aceserver.serving.http import ModelRegistry, ServedModel, Settings, create_app
from aceserver.serving.http.codec import unpack_arrays
from aceserver.serving.ipi import ACEPotential, Session
from aceserver.serving.ipi.adapter import BOHR, HARTREE, MAX_EXTRAS_ATOMS
from aceserver.serving.ipi.protocol import Channel

DATA = Path(__file__).parent / "data"
K = 4
EPS = np.finfo(float).eps
ULPS2 = 2 * EPS
# these rows' active set has cond(A) ≈ 2.5e9, so B A⁻¹ carries rounding errors of ~cond·ε ≈ 5e-7:
# MaxVol's tolerance must lie above that or its swaps can cycle (fitting/active_set.py)
MAXVOL_TOL = 1e-5
PROPS = ["energy", "forces", "gamma", "max_gamma", "energies_std", "forces_std"]


def si_model():
    model = aceserver.ace1_model(elements=["Si"], order=2, totaldegree=6, rcut=5.0, E0={"Si": -0.3})
    rng = np.random.default_rng(11)
    model.parameters = 0.05 * rng.standard_normal(model.length_basis)
    model.committee = model.parameters + 0.02 * rng.standard_normal((K, model.length_basis))
    return model


def training_frames():
    return read(DATA / "Si_tiny.xyz", ":")


def model_with_active_set():
    """`si_model` with the MaxVol active set of its descriptors of tests/data/Si_tiny.xyz attached."""
    m = si_model()
    blocks = [m.descriptors(a.numbers, a.positions, a.cell.array, a.pbc) for a in training_frames()]
    active = maxvol(blocks, tol=MAXVOL_TOL)
    m.attach_active_set({"Si": active.inverse}, m.sha256)
    return m


@pytest.fixture(scope="module")
def model():
    return model_with_active_set()


@pytest.fixture(scope="module")
def structure():
    """8 Si atoms, cell compressed by 8 % and rattled; (atoms in Å, i-PI's h and q in Bohr), with the
    Å values made from the Bohr ones exactly as the i-PI adapter does, so every front end
    evaluates the same bits."""
    atoms = bulk("Si", "diamond", a=5.43 * 0.92, cubic=True)
    atoms.rattle(0.15, seed=5)
    h, q = atoms.cell.array.T / BOHR, atoms.positions / BOHR
    atoms.set_cell(h.T * BOHR)
    atoms.positions = q * BOHR
    return atoms, h, q


def as_request(atoms) -> dict:
    return {"numbers": atoms.numbers.tolist(), "positions": atoms.positions.tolist(),
            "cell": atoms.cell.array.tolist(), "pbc": atoms.pbc.tolist()}


def client_for(model, name="m", settings=None) -> TestClient:
    registry = ModelRegistry([ServedModel(name, model, None)])
    return TestClient(create_app(registry, settings))


def wait_ready(client):
    deadline = time.monotonic() + 300
    while client.get("/readyz").status_code != 200:
        assert time.monotonic() < deadline, "the in-process server did not become ready"
        time.sleep(0.05)


# ---------------------------------------------------------------------------------- i-PI wire

def ipi_extras(potential, h, q) -> dict:
    """One POSDATA+GETFORCE through a real Session; the extras of the FORCEREADY reply, parsed."""
    server, client = socket.socketpair()
    server.settimeout(30)
    session = Session(Channel(client), potential)
    thread = threading.Thread(target=session.run, daemon=True)
    thread.start()
    try:
        hdr = lambda s: s.encode().ljust(12)       # noqa: E731
        server.sendall(hdr("STATUS"))
        assert recv_exact(server, 12) == b"NEEDINIT    "
        server.sendall(hdr("INIT") + struct.pack("<ii", 0, 0) + hdr("STATUS"))
        assert recv_exact(server, 12) == b"READY       "
        nat = len(q)
        server.sendall(hdr("POSDATA") + np.ascontiguousarray(h).tobytes() + np.zeros(9).tobytes()
                       + struct.pack("<i", nat) + np.ascontiguousarray(q).tobytes() + hdr("GETFORCE"))
        head = recv_exact(server, 12 + 8 + 4 + 24 * nat + 72 + 4)
        assert head[:12] == b"FORCEREADY  "
        (length,) = struct.unpack("<i", head[-4:])
        text = recv_exact(server, length).decode()
        server.sendall(hdr("EXIT"))
        thread.join(10)
    finally:
        server.close()
        client.close()
    extras = json.loads(text)
    assert isinstance(extras, dict) and "raw" not in extras      # what i-PI's parse_extra accepts
    return extras


# ---------------------------------------------------------------------------------- references

def numpy_references(model, atoms):
    """γ (N,), energies_std (N,) and their error bounds, from the descriptors with numpy."""
    D = model.descriptors(atoms.numbers, atoms.positions, atoms.cell.array, atoms.pbc)
    A_inv = model.active_set.inverses["Si"]
    L = A_inv.shape[0]
    assert D.shape == (len(atoms), L) == (len(atoms), model.descriptor_sizes["Si"])
    G = D @ A_inv
    gamma = np.abs(G).max(axis=1)
    gamma_tol = 2 * L * EPS * (np.abs(D) @ np.abs(A_inv)).max(axis=1)
    weights = np.stack([model.descriptor_weights(theta)[0] for theta in model.committee])   # (K, L)
    members = model.E0["Si"] + D @ weights.T                                                 # (N, K)
    energies_std = np.std(members, axis=1, ddof=0)
    # each member's site energy within 2·L·ε·(Σ|D θ| + |E0|); the std moves by at most that much
    energies_tol = 2 * (L + 1) * EPS * ((np.abs(D) @ np.abs(weights).T).max(axis=1) + abs(model.E0["Si"]))
    return gamma, gamma_tol, energies_std, energies_tol


def member_forces_std(model, atoms):
    """The forces' spread from K separate models, one per member's parameters (not the committee path)."""
    forces = []
    for theta in model.committee:
        single = aceserver.ACEModel(model.basis, parameters=theta, E0=model.E0)
        forces.append(single.evaluate(atoms.numbers, atoms.positions, atoms.cell.array, atoms.pbc).forces)
    forces = np.array(forces)
    return np.std(forces, axis=0, ddof=0), np.abs(forces).max()


# ---------------------------------------------------------------------------------- the test

def test_http_ase_and_ipi_agree_with_numpy(model, structure):
    atoms, h, q = structure
    gamma_ref, gamma_tol, estd_ref, estd_tol = numpy_references(model, atoms)
    assert gamma_ref.max() > 1.0, "the structure should extrapolate somewhere"
    assert estd_ref.min() > 0

    with client_for(model) as client:
        wait_ready(client)
        r = client.post("/v1/models/m/calculate", json={"structure": as_request(atoms), "properties": PROPS})
        assert r.status_code == 200, r.text
        http = r.json()["results"][0]
        r = client.post("/v1/models/m/calculate", content=msgpack.packb({"structure": as_request(atoms),
                                                                         "properties": PROPS}),
                        headers={"Content-Type": "application/msgpack", "Accept": "application/msgpack"})
        assert r.status_code == 200, r.text
        packed = unpack_arrays(msgpack.unpackb(r.content, raw=False))["results"][0]

    calc = ACECalculator(model, gamma=True, committee_forces=True, energies_std=True)
    calc.calculate(atoms.copy(), ["energy", "forces"])
    ase = calc.results

    potential = ACEPotential.from_atoms(model, atoms, extras=("gamma", "energies_std", "forces_std"))
    ipi = ipi_extras(potential, h, q)

    # numpy references
    np.testing.assert_array_less(np.abs(ase["gamma"] - gamma_ref), gamma_tol + 1e-300)
    assert ase["max_gamma"] == ase["gamma"].max()
    np.testing.assert_array_less(np.abs(ase["energies_std"] - estd_ref), estd_tol)
    fstd_ref, fscale = member_forces_std(model, atoms)
    # forces: sums over pairs of L-term products in two different orders (committee rows vs the
    # merged kernel), each force component a sum of ≲ 64 pairs × L terms
    np.testing.assert_allclose(ase["forces_std"], fstd_ref, rtol=0, atol=2 * 64 * model.length_basis * EPS * fscale)

    # the three front ends
    for name, got in (("HTTP JSON", http), ("HTTP msgpack", packed)):
        np.testing.assert_array_equal(np.asarray(got["gamma"]), ase["gamma"], err_msg=name)
        assert got["max_gamma"] == ase["max_gamma"], name
        np.testing.assert_array_equal(np.asarray(got["energies_std"]), ase["energies_std"], err_msg=name)
        np.testing.assert_array_equal(np.asarray(got["forces_std"]), ase["forces_std"], err_msg=name)
    np.testing.assert_array_equal(ipi["gamma"], ase["gamma"])
    assert ipi["max_gamma"] == ase["max_gamma"]
    np.testing.assert_allclose(np.asarray(ipi["energies_std"]) * HARTREE, ase["energies_std"], rtol=ULPS2, atol=0)
    np.testing.assert_allclose(np.asarray(ipi["forces_std"]) * (HARTREE / BOHR), ase["forces_std"],
                               rtol=ULPS2, atol=1e-300)


# ---------------------------------------------------------------------------------- γ every n-th call

def test_gamma_every_skips_calls_in_ase_and_ipi(model, structure):
    atoms, h, q = structure
    calc = ACECalculator(model, gamma=True, gamma_every=2, committee=False)
    seen = []
    for step in range(4):
        a = atoms.copy()
        a.positions[0, 0] += 0.01 * step          # a new structure every step
        a.calc = calc
        a.get_potential_energy()
        a.get_forces()                          # cached: not a new calculation
        seen.append("max_gamma" in calc.results)
    assert seen == [True, False, True, False] and calc.calculations == 4
    # by default a committee model reports energy_std but not the (costlier) per-atom spread
    plain = ACECalculator(model)
    plain.calculate(atoms.copy(), ["energy"])
    assert "energy_std" in plain.results and "energies_std" not in plain.results and "max_gamma" not in plain.results

    potential = ACEPotential.from_atoms(model, atoms, extras=("max_gamma",), gamma_every=3)
    maxima = [json.loads(potential.compute(h, q)[3])["max_gamma"] for _ in range(4)]
    assert maxima[0] == maxima[3] == pytest.approx(ACECalculator(model, gamma=True).get_property(
        "max_gamma", atoms.copy()), rel=0, abs=0)
    assert math.isnan(maxima[1]) and math.isnan(maxima[2])   # same keys every call: i-PI needs them


def test_front_ends_refuse_gamma_without_an_active_set(structure):
    atoms, h, q = structure
    plain = si_model()
    with pytest.raises(ACEInputError, match="aceserver activeset"):
        ACECalculator(plain, gamma=True)
    with pytest.raises(ValueError, match="gamma_every"):
        ACECalculator(plain, gamma_every=0)
    with pytest.raises(ACEInputError, match="active set"):
        ACEPotential.from_atoms(plain, atoms, extras=("max_gamma",))
    big = bulk("Si", cubic=True).repeat((14, 14, 13))
    assert len(big) > MAX_EXTRAS_ATOMS
    with pytest.raises(ValueError, match="at most 10000 atoms"):
        ACEPotential.from_atoms(plain, big, extras=("energies_std",))
    with client_for(plain, "plain") as client:
        wait_ready(client)
        info = client.get("/v1/models/plain").json()
        assert info["gamma_available"] is False and info["active_set"] is None
        r = client.post("/v1/models/plain/calculate", json={"structure": as_request(atoms),
                                                            "properties": ["energy", "max_gamma"]})
        assert r.status_code == 422
        body = r.json()
        assert body["kind"] == "no_active_set" and body["field"] == "properties"
        assert "'plain'" in body["message"] and "aceserver activeset" in body["message"]


# ---------------------------------------------------------------------------------- HTTP details

def test_http_descriptors_model_info_and_limits(model, structure):
    atoms = structure[0]
    L = model.descriptor_sizes["Si"]
    limit = 2 * len(atoms) * L
    with client_for(model, settings=Settings(max_descriptor_values=limit)) as client:
        wait_ready(client)
        info = client.get("/v1/models/m").json()
        assert info["gamma_available"] is True and info["active_set"] == {"Si": L}
        assert info["descriptor_sizes"] == {"Si": L}
        r = client.post("/v1/models/m/calculate", json={"structure": as_request(atoms),
                                                        "properties": ["descriptors", "max_gamma"]})
        assert r.status_code == 200, r.text
        result = r.json()["results"][0]
        assert set(result) >= {"descriptors", "max_gamma"} and "energy" not in result
        np.testing.assert_array_equal(result["descriptors"], model.descriptors(
            atoms.numbers, atoms.positions, atoms.cell.array, atoms.pbc))
        # three structures of 8 atoms ask for 3 × 8 × L values, more than the limit: refused before work
        r = client.post("/v1/models/m/calculate", json={"structures": [as_request(atoms)] * 3,
                                                        "properties": ["descriptors"]})
        assert r.status_code == 413 and r.json()["kind"] == "too_large" and r.json()["field"] == "properties"
        assert f"at most {limit}" in r.json()["message"]
        # extended XYZ names its properties in the query (the web page's form); not in both places
        xyz = "8\nLattice=\"{}\" Properties=species:S:1:pos:R:3 pbc=\"T T T\"\n{}\n".format(
            " ".join(f"{x:.10f}" for x in atoms.cell.array.ravel()),
            "\n".join(f"Si {x:.10f} {y:.10f} {z:.10f}" for x, y, z in atoms.positions))
        r = client.post("/v1/models/m/calculate?properties=energy,max_gamma", content=xyz,
                        headers={"Content-Type": "chemical/x-extxyz"})
        assert r.status_code == 200, r.text
        assert set(r.json()["results"][0]) == {"energy", "free_energy", "max_gamma"}
        r = client.post("/v1/models/m/calculate?properties=energy", json={"structure": as_request(atoms),
                                                                         "properties": ["energy"]})
        assert r.status_code == 422 and "query parameter" in r.json()["message"]
        r = client.post("/v1/models/m/calculate?properties=energy,speed", content=xyz,
                        headers={"Content-Type": "chemical/x-extxyz"})
        assert r.status_code == 422 and r.json()["field"].startswith("properties")
        doc = client.get("/openapi.json").json()
        result_schema = doc["components"]["schemas"]["Result"]["properties"]
        assert "dimensionless" in result_schema["gamma"]["description"]
        assert "eV" in result_schema["energies_std"]["description"]
        assert "eV/Å" in result_schema["forces_std"]["description"]
        enum = doc["components"]["schemas"]["Property"]["enum"]
        assert {"gamma", "max_gamma", "energies_std", "forces_std", "descriptors"} <= set(enum)


# ---------------------------------------------------------------------------------- aceserver eval

def test_gamma_report_statistics(model):
    configs = read_configs(DATA / "Si_tiny.xyz", Keys("dft_energy", "dft_force", "dft_virial"), elements=["Si"])
    report = gamma_report(model, configs, threads=1, top=3)
    # numpy on the descriptors of every frame
    A_inv = model.active_set.inverses["Si"]
    per_frame = [np.abs(model.descriptors(c.numbers, c.positions, c.cell, c.pbc) @ A_inv).max(axis=1)
                 for c in configs]
    g = np.concatenate(per_frame)
    si = report["species"]["Si"]
    assert si["atoms"] == len(g) == 229
    tol = 1e-12 * max(1.0, g.max())           # γ of O(1); the BLAS order changes the last bits only
    for key, value in (("min", g.min()), ("median", np.median(g)), ("p95", np.percentile(g, 95)),
                       ("max", g.max())):
        assert si[key] == pytest.approx(value, rel=0, abs=tol), key
    # MaxVol over these very atoms: none extrapolates beyond 1 + its tolerance
    assert si["max"] <= 1 + MAXVOL_TOL and si["above_5"] == 0.0
    # the L active atoms have γ = 1 up to rounding (~5e-7, see MAXVOL_TOL) and the rest at most
    # 1 + MAXVOL_TOL: the fraction above 1 lies between these two counts
    assert np.mean(g > 1 + MAXVOL_TOL) <= si["above_1"] <= np.mean(g > 1 - MAXVOL_TOL)
    worst = np.argsort([-x.max() for x in per_frame], kind="stable")[:3]
    assert [f["index"] for f in report["frames"]] == list(worst)
    assert report["frames"][0]["max_gamma"] == pytest.approx(per_frame[worst[0]].max(), rel=0, abs=tol)
    text = format_gamma_report(report, "title")
    assert "Si" in text and "most extrapolative frames" in text and "Si_tiny.xyz:" in text


def test_eval_command_prints_gamma(model, monkeypatch, capsys):
    import argparse

    from aceserver.commands import eval as eval_cmd
    from aceserver.fitting import config as fconfig

    monkeypatch.setattr(fconfig, "load_model_file", lambda path: model)
    parser = argparse.ArgumentParser()
    eval_cmd.add_arguments(parser)
    argv = ["model.json", str(DATA / "Si_tiny.xyz"), "--energy-key", "dft_energy", "--force-key", "dft_force",
            "--virial-key", "dft_virial", "--threads", "1", "--top", "2"]
    assert eval_cmd.run(parser.parse_args(argv)) == 0
    text = capsys.readouterr().out
    assert "meV/atom" in text and "extrapolation grade γ per species" in text and "most extrapolative" in text
    assert eval_cmd.run(parser.parse_args(argv + ["--json"])) == 0
    doc = json.loads(capsys.readouterr().out)
    assert set(doc) == {"rmse", "mae", "gamma"}
    assert doc["gamma"]["species"]["Si"]["atoms"] == 229 and len(doc["gamma"]["frames"]) == 2
    assert eval_cmd.run(parser.parse_args(argv + ["--json", "--no-gamma"])) == 0
    assert "gamma" not in json.loads(capsys.readouterr().out)


def test_ipi_command_refuses_gamma_it_cannot_send(tmp_path, structure, caplog):
    """`aceserver ipi` stops before connecting (status 2) when γ cannot be sent, saying why."""
    from aceserver.cli import main

    path = tmp_path / "plain.json"
    si_model().save(path)                      # a committee, no active set
    structure[0].write(tmp_path / "s.extxyz")
    base = ["ipi", str(path), "--structure", str(tmp_path / "s.extxyz"), "--unix", "never", "--connect-timeout", "0"]
    assert main(base + ["--gamma-every", "5"]) == 2
    assert "--gamma-every needs 'gamma' or 'max_gamma' in --extras" in caplog.text
    assert main(base + ["--extras", "committee,max_gamma"]) == 2
    assert "need a model with an active set" in caplog.text and "aceserver activeset" in caplog.text
    assert main(base + ["--extras", "max_gamma", "--gamma-every", "0"]) == 2
    assert "gamma_every must be a positive integer, got 0" in caplog.text


def test_real_ipi_prints_max_gamma_of_every_bead(tmp_path, model):
    """i-PI 3 itself runs 4-bead PIMD against the driver (in this process, on the fixture model) with
    `extra_type="max_gamma"` trajectories: the run finishes (the keys are the same for every bead,
    also on calls without γ), and every printed value is either NaN (a call that skipped γ:
    gamma_every=3 over 4 beads) or the max γ of that bead's positions as i-PI printed them."""
    from ipi_support import Children, bead_frames, ipi_input, si_structure, unique_name, wait

    from aceserver.serving.ipi import Address, Driver

    structure = tmp_path / "init.extxyz"
    si_structure().write(structure)
    name = unique_name("gamma")
    xml = ipi_input(tmp_path, structure, nbeads=4, steps=4, unix=name)
    xml.write_text(xml.read_text().replace(
        "</output>", "<trajectory filename='gamma' stride='1' extra_type='max_gamma'> extras </trajectory></output>"))
    potential = ACEPotential.from_atoms(model, read(structure), extras=("max_gamma",), gamma_every=3)
    driver = Driver(potential, Address.unix(name), connect_timeout=60, guard=False)
    thread = threading.Thread(target=driver.run, daemon=True)
    with Children(tmp_path) as children:
        server = children.ipi(xml)
        thread.start()
        assert wait(server, 120) == 0, (tmp_path / "ipi.log").read_text()[-3000:]
    thread.join(30)
    assert driver.calls == 4 * 5                      # 4 beads, the initial step and 4 more
    printed, expected = [], []
    for bead in range(4):
        values = [float(line.split()[0]) for line in (tmp_path / f"sim.gamma_{bead}").read_text().splitlines()
                  if line.strip() and not line.lstrip().startswith("#")]
        frames = bead_frames(tmp_path, bead)
        assert len(values) == len(frames) == 5
        for g, frame in zip(values, frames):
            if not math.isnan(g):
                # i-PI prints positions to 1e-8 Å relative (%.16e here, but in its Bohr): γ moves by
                # |∂γ/∂x|·δx, well below 1e-6 for γ of O(1-10)
                ref = model.evaluate(frame.numbers, frame.positions, frame.cell.array, frame.pbc, gamma=True)
                printed.append(g)
                expected.append(ref.max_gamma)
    assert 0 < len(printed) < 20                      # some calls skipped γ, some did not
    np.testing.assert_allclose(printed, expected, rtol=1e-6)
