"""postprocess.periodic_stress: the kernel path (`kernels.scatter.stress_voigt`, float64 arrays)
gives numpy's σ = -W/V in Voigt order bit for bit (the same operations), and None where the
stress is not defined (a cell not periodic in 3-D, or of zero volume); the virial's
symmetrisation kernel gives numpy's 0.5 (W + Wᵀ) bit for bit."""
from __future__ import annotations

import numpy as np

from aceserver.evaluation import postprocess as P


def test_kernel_path_is_numpys_bits():
    rng = np.random.default_rng(0)
    for _ in range(2000):
        cell = rng.normal(size=(3, 3)) * 10 ** rng.uniform(-1, 2)
        W = rng.normal(size=(3, 3)) * 10 ** rng.uniform(-3, 3)
        want = P.voigt(-W / P.volume(cell))
        got = P.periodic_stress(W, cell, np.ones(3, dtype=bool))
        assert got.dtype == np.float64 and np.array_equal(got, want)
        # the generic path (lists) agrees too
        assert np.array_equal(P.periodic_stress(W.tolist(), cell.tolist(), [True] * 3), want)


def test_no_stress_where_undefined():
    W = np.eye(3)
    assert P.periodic_stress(W, np.zeros((3, 3)), np.ones(3, dtype=bool)) is None
    assert P.periodic_stress(W, np.eye(3), np.array([True, True, False])) is None
    assert P.periodic_stress(W, None, False) is None


def test_symmetrised_is_numpys_bits():
    from aceserver.kernels.scatter import symmetrised
    rng = np.random.default_rng(2)
    for _ in range(1000):
        W = rng.normal(size=(3, 3)) * 10 ** rng.uniform(-3, 3)
        assert np.array_equal(symmetrised(W), 0.5 * (W + W.T))
