"""kernels/sums: numpy's summation order in numba, np.std's bits for the committee spread, and the
committee members' energies unchanged (numpy's einsums, the one-body sum in numpy's order).

Every kernel here promises numpy's own bits (ndarray.sum, np.std with ddof 0), so the tests
compare exactly, for every length of numpy's block of 128 and longer runs (which numpy halves
pairwise), with values spanning 12 decades: another order of the additions shows in the last bits.
"""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from ase.build import bulk

import aceserver
from aceserver.evaluation import postprocess
from aceserver.kernels import site_pass as K
from aceserver.kernels.sums import BLOCK, e0_total, numpy_sum, spread

MODEL = Path(__file__).resolve().parents[1] / "models" / "Si-tiny" / "Si-tiny.json"


def values(n, seed):
    rng = np.random.default_rng(seed)
    return rng.normal(size=n) * 10.0 ** rng.uniform(-6, 6, size=n)


@pytest.mark.parametrize("n", [*range(BLOCK + 1), 129, 136, 137, 255, 256, 1000, 8192, 8193, 100_003])
def test_numpy_sum_is_numpys(n):
    x = values(n + 5, n)
    for a in (0, 3):
        got, want = numpy_sum(x, a, a + n), x[a:a + n].sum()
        assert got == want or (n == 0 and got == 0.0), (n, a, got, want)


@pytest.mark.parametrize("k", [1, 2, 3, 7, 8, 9, 10, 16, 17, 64, 127, 128, 129, 300, 5000])
def test_spread_is_np_std(k):
    x = -1000.0 + values(k, 100 + k) * 1e-3
    assert spread(x) == float(np.std(x, ddof=0))
    assert postprocess.energy_spread(x) == float(np.std(x, ddof=0))


@pytest.mark.parametrize("n", [0, 1, 5, 64, 300])
def test_e0_total_is_numpys(n):
    e0 = np.array([-158.54496821, -1.3, 7.25e-3])
    z = np.random.default_rng(n).integers(0, 3, n)
    assert e0_total(e0, z) == float(e0[z].sum())


@pytest.fixture(scope="module")
def model():
    m = aceserver.load_model(str(MODEL))
    assert m.committee is not None and len(m.committee) >= 2
    return m


@pytest.mark.parametrize("repeat", [1, 3])     # 8 atoms and 216 (a one-body sum numpy halves)
def test_committee_energies_are_the_einsums(model, repeat):
    atoms = bulk("Si", "diamond", 5.43, cubic=True).repeat(repeat)
    atoms.rattle(0.05, seed=repeat)
    T = model._tables(True)
    z, first, nbr, R = model._neighbours(atoms.numbers, atoms.positions, atoms.cell.array, atoms.pbc)
    E, G, SAA, H = K._serial_ace1(first, nbr, R, z, T, True)
    want = (np.einsum("mzk,zk->m", T.coef[1:], SAA) + np.einsum("mabkc,abkc->m", T.pair_spl[1:], H)
            + float(T.e0[z].sum()))
    assert np.array_equal(K.committee_energies(T, z, SAA, H), want)
    ev = model.evaluate(atoms.numbers, atoms.positions, atoms.cell.array, atoms.pbc, committee=True,
                        threads=1)
    assert np.array_equal(ev.energy_committee, want)
    assert ev.energy_std == float(np.std(want))
