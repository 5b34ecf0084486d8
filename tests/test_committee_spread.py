"""One committee spread for every front end: for the same model and structure, HTTP's `energy_std`,
the ASE calculator's `energy_std` and the i-PI driver's `committee_uncertainty` are the same number,
the population standard deviation (ddof 0) of the committee members' energies.

The structure is written in i-PI's units (Bohr) and converted to Å exactly as the i-PI adapter
converts it, so that every front end evaluates the same bits. The i-PI value goes through Hartree
(one division by HARTREE, one multiplication back, each rounding by at most half an ulp), hence a
tolerance of 2 ulps there; the other front ends report the members' spread exactly.
"""
from __future__ import annotations

import json
import time

import numpy as np
import pytest
from ase.build import bulk
from fastapi.testclient import TestClient

import aceserver
from aceserver.calculator import ACECalculator
from aceserver.serving.http import ModelRegistry, ServedModel, create_app
from aceserver.serving.ipi import ACEPotential
from aceserver.serving.ipi.adapter import BOHR, HARTREE

from _http_support import model_file

K = 4                               # members of the "sic" test model's committee
HARTREE_ROUND_TRIP = 2 * np.finfo(float).eps


@pytest.fixture(scope="module")
def path():
    return model_file("sic")


@pytest.fixture(scope="module")
def structure():
    """8 rattled Si atoms; (atoms in Å, i-PI's cell h in Bohr with vectors as columns, positions in Bohr)."""
    atoms = bulk("Si", "diamond", a=5.43, cubic=True)
    atoms.rattle(0.05, seed=3)
    h, q = atoms.cell.array.T / BOHR, atoms.positions / BOHR
    atoms.set_cell(h.T * BOHR)      # the adapter's own conversion: the same Å values everywhere
    atoms.positions = q * BOHR
    return atoms, h, q


@pytest.fixture(scope="module")
def reference(path, structure):
    """The members' energies (eV) evaluated in-process, and their population std."""
    atoms = structure[0]
    ev = aceserver.load_model(str(path)).evaluate(atoms.numbers, atoms.positions, atoms.cell.array, atoms.pbc,
                                                  committee=True)
    members = np.asarray(ev.energy_committee)
    assert members.shape == (K,)
    return members, float(np.std(members, ddof=0))


def http_spread(path, atoms) -> tuple[np.ndarray, float, np.ndarray, np.ndarray]:
    registry = ModelRegistry([ServedModel("sic", aceserver.load_model(str(path)), str(path))])
    with TestClient(create_app(registry)) as client:
        deadline = time.monotonic() + 300
        while client.get("/readyz").status_code != 200:
            assert time.monotonic() < deadline, "the in-process server did not become ready"
            time.sleep(0.05)
        structure = {"numbers": atoms.numbers.tolist(), "positions": atoms.positions.tolist(),
                     "cell": atoms.cell.array.tolist(), "pbc": atoms.pbc.tolist()}
        r = client.post("/v1/models/sic/calculate",
                        json={"structure": structure, "properties": ["energy", "committee", "forces_committee"]})
    assert r.status_code == 200, r.text
    result = r.json()["results"][0]
    return (np.array(result["energy_committee"]), result["energy_std"],
            np.array(result["forces_committee"]), np.array(result["forces_std"]))


def test_http_ase_and_ipi_report_the_same_energy_spread(path, structure, reference):
    atoms, h, q = structure
    members, spread = reference
    assert spread > 0

    http_members, http_std, forces_committee, forces_std = http_spread(path, atoms)
    np.testing.assert_array_equal(http_members, members)
    assert http_std == spread
    np.testing.assert_array_equal(forces_std, np.std(forces_committee, axis=0, ddof=0))

    calc = ACECalculator(str(path))
    calc.calculate(atoms.copy(), ["energy"])
    np.testing.assert_array_equal(calc.results["energy_committee"], members)
    assert calc.results["energy_std"] == spread

    potential = ACEPotential.from_atoms(aceserver.load_model(str(path)), atoms, extras=("committee",))
    extras = json.loads(potential.compute(h, q)[3])
    np.testing.assert_array_equal(extras["committee_pot"], members / HARTREE)
    assert extras["committee_uncertainty"] * HARTREE == pytest.approx(spread, rel=HARTREE_ROUND_TRIP, abs=0)

    # the definition, written out: sqrt(Σ_k (E_k - Ē)² / K), not the sample (ddof 1) value
    assert spread == pytest.approx(np.sqrt(np.sum((members - members.mean()) ** 2) / K), rel=1e-15, abs=0)
    assert abs(np.std(members, ddof=1) / spread - np.sqrt(K / (K - 1))) < 1e-12
