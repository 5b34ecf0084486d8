"""Model file: exact round trip, identity, committee, and clear errors for bad files."""
import json

import numpy as np
import pytest
from ase.build import bulk

import aceserver
from aceserver.errors import ModelFileError


def test_round_trip_is_exact(tial_model, tmp_path):
    path = tmp_path / "m.json"
    tial_model.committee = np.random.default_rng(0).normal(size=(3, tial_model.length_basis))
    tial_model.metadata = {"fit": {"rmse": {"set": {"E": 0.001}}}}
    try:
        sha = tial_model.save(path)
        loaded = aceserver.load_model(path)
    finally:
        tial_model.committee = None
        tial_model.metadata = {}
    assert loaded.sha256 == sha and len(sha) == 64
    np.testing.assert_array_equal(loaded.parameters, tial_model.parameters)
    np.testing.assert_array_equal(loaded.committee.shape, (3, tial_model.length_basis))
    assert loaded.E0 == tial_model.E0 and loaded.metadata["fit"]["rmse"]["set"]["E"] == 0.001
    at = bulk("Al", "fcc", a=4.05, cubic=True) * (2, 1, 1)
    at.numbers[[1, 4]] = 22
    at.rattle(0.1, seed=1)
    a = tial_model.evaluate(at.numbers, at.positions, at.cell[:], True)
    b = loaded.evaluate(at.numbers, at.positions, at.cell[:], True, committee=True)
    assert a.energy == b.energy
    np.testing.assert_array_equal(a.forces, b.forces)
    np.testing.assert_array_equal(a.virial, b.virial)
    assert b.energy_committee.shape == (3,)
    # committee energies equal θ_m · basis energy + ΣE0
    e, _, _ = loaded.basis_rows(at.numbers, at.positions, at.cell[:], True, forces=False)
    e0 = sum(loaded.E0[s] for s in at.get_chemical_symbols())
    np.testing.assert_allclose(b.energy_committee, loaded.committee @ e + e0, rtol=1e-12)
    # saving again gives the same identity
    assert loaded.save(tmp_path / "again.json") == sha


def test_sha_changes_with_parameters(si_model, tmp_path):
    sha = si_model.sha256
    m = aceserver.ACEModel(si_model.basis, parameters=si_model.parameters * 1.0000001,
                           E0=si_model.E0)
    assert m.sha256 != sha


@pytest.mark.parametrize("damage, message", [
    (lambda t: t[: len(t) // 2], "not valid JSON"),
    (lambda t: t.replace('"schema_version": 1', '"schema_version": 99'), "schema version 99"),
    (lambda t: t.replace('"format": "aceserver-model"', '"format": "other"'), "not an aceserver"),
    (lambda t: t.replace('"Si": -158.5', '"Si": -158.6'), "sha256"),
    (lambda t: "[1, 2, 3]", "not an aceserver"),
])
def test_bad_files_are_rejected_clearly(si_model, tmp_path, damage, message):
    path = tmp_path / "m.json"
    si_model.save(path)
    path.write_text(damage(path.read_text()))
    with pytest.raises(ModelFileError, match=message):
        aceserver.load_model(path)


def test_missing_file_and_inconsistent_content(si_model, tmp_path):
    with pytest.raises(ModelFileError, match="does not exist"):
        aceserver.load_model(tmp_path / "nope.json")
    doc = json.loads((lambda p: (si_model.save(p), p.read_text())[1])(tmp_path / "m.json"))
    del doc["basis"]["a_spec"]
    from aceserver.io import modelfile
    modelfile.write(tmp_path / "broken.json", {k: v for k, v in doc.items() if k != "sha256"})
    with pytest.raises(ModelFileError, match="a_spec"):
        aceserver.load_model(tmp_path / "broken.json")


def test_committee_members_equal_models_with_their_parameters(tial_model):
    rng = np.random.default_rng(5)
    members = tial_model.parameters + 0.1 * rng.normal(size=(4, tial_model.length_basis))
    model = aceserver.ACEModel(tial_model.basis, parameters=tial_model.parameters,
                               E0=tial_model.E0, committee=members)
    at = bulk("Al", "fcc", a=4.05, cubic=True) * (2, 2, 1)
    at.numbers[::3] = 22
    at.rattle(0.1, seed=2)
    r = model.evaluate(at.numbers, at.positions, at.cell[:], True, committee=True,
                       committee_forces=True)
    plain = model.evaluate(at.numbers, at.positions, at.cell[:], True)
    assert r.energy == plain.energy
    np.testing.assert_array_equal(r.forces, plain.forces)
    for k in (0, 3):
        member = aceserver.ACEModel(tial_model.basis, parameters=members[k], E0=tial_model.E0)
        m = member.evaluate(at.numbers, at.positions, at.cell[:], True)
        assert r.energy_committee[k] == pytest.approx(m.energy, rel=1e-12)
        np.testing.assert_allclose(r.forces_committee[k], m.forces, atol=1e-10)


def test_calculator_reports_committee_spread(tial_model):
    from aceserver.calculator import ACECalculator
    members = tial_model.parameters + 0.05 * np.random.default_rng(6).normal(
        size=(5, tial_model.length_basis))
    model = aceserver.ACEModel(tial_model.basis, parameters=tial_model.parameters,
                               E0=tial_model.E0, committee=members)
    at = bulk("Al", "fcc", a=4.05, cubic=True)
    at.numbers[0] = 22
    at.rattle(0.05, seed=3)
    at.calc = ACECalculator(model, committee_forces=True)
    e = at.get_potential_energy()
    ec = at.calc.results["energy_committee"]
    assert ec.shape == (5,) and at.calc.results["energy_std"] == pytest.approx(np.std(ec))
    assert at.calc.results["energy_std"] > 0 and abs(np.mean(ec) - e) < 10 * np.std(ec)
    assert at.calc.results["forces_committee"].shape == (5, len(at), 3)
    at.calc = ACECalculator(model, committee=False)
    assert at.get_potential_energy() == e and "energy_std" not in at.calc.results
