"""kernels/committee: numpy's summation order in numba, np.std's bits for the committee spread,
and the committee members' energies from the site pass's sums against numpy re-computations.

* `numpy_sum` and `spread` promise numpy's bits (ndarray.sum, np.std with ddof 0): compared
  exactly, for every length up to numpy's block of 128 and longer runs (halved pairwise), with
  values spanning 12 decades (so that another order of the additions shows in the last bits).
* `committee_totals` sums the two contractions in another order than the einsums it replaced;
  the difference of two orders of summing n products is bounded by 2·n·ε·Σ|products| (each
  order's error is at most (n-1)·ε·Σ|terms|, Higham's bound), which is the tolerance, and which
  here is also below 1e-14 of the energy (asserted, as the issue's limit for this change).
"""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from ase.build import bulk

import aceserver
from aceserver.evaluation import postprocess
from aceserver.kernels import site_pass as K
from aceserver.kernels.committee import BLOCK, committee_totals, numpy_sum, spread

EPS = np.finfo(float).eps
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


@pytest.mark.parametrize("k", [1, 2, 3, 7, 8, 9, 10, 16, 17, 64, 127, 128])
def test_spread_is_np_std(k):
    x = -1000.0 + values(k, 100 + k) * 1e-3
    assert spread(x) == float(np.std(x, ddof=0))
    assert postprocess.energy_spread(x) == float(np.std(x, ddof=0))


@pytest.mark.parametrize("k", [129, 300, 5000])
def test_spread_of_a_large_committee_is_np_std(k):
    x = values(k, k)
    assert spread(x) == float(np.std(x, ddof=0))


@pytest.fixture(scope="module")
def model():
    m = aceserver.load_model(str(MODEL))
    assert m.committee is not None and len(m.committee) >= 2
    return m


@pytest.mark.parametrize("repeat", [1, 3])     # 8 atoms (one e0 run) and 216 (a longer one)
def test_committee_totals_against_einsum(model, repeat):
    atoms = bulk("Si", "diamond", 5.43, cubic=True).repeat(repeat)
    atoms.rattle(0.05, seed=repeat)
    T = model._tables(True)
    z, first, nbr, R = model._neighbours(atoms.numbers, atoms.positions, atoms.cell.array, atoms.pbc)
    E, G, SAA, H = K._serial_ace1(first, nbr, R, z, T, True)
    got = committee_totals(T.coef, T.pair_spl, T.e0, z, SAA, H)
    mb = np.einsum("mzk,zk->m", T.coef[1:], SAA)
    pair = np.einsum("mabkc,abkc->m", T.pair_spl[1:], H)
    want = mb + pair + float(T.e0[z].sum())
    n = SAA.size + H.size + len(z)
    scale = (np.abs(T.coef[1:] * SAA).reshape(len(want), -1).sum(axis=1)
             + np.abs(T.pair_spl[1:] * H).reshape(len(want), -1).sum(axis=1) + np.abs(T.e0[z]).sum())
    assert np.all(np.abs(got - want) <= 2 * n * EPS * scale)
    assert np.all(np.abs(got - want) <= 1e-14 * np.abs(want))
    # and what evaluate reports is that kernel's result
    ev = model.evaluate(atoms.numbers, atoms.positions, atoms.cell.array, atoms.pbc, committee=True,
                        threads=1)
    assert np.array_equal(ev.energy_committee, got)
    assert ev.energy_std == float(np.std(got))
