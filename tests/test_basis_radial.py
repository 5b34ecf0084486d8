"""Transforms, envelopes and polynomials against the reference values of ace-spec §1.3-1.5."""
import numpy as np
import pytest

from aceserver.basis.envelopes import envelope_pair_ace1, envelope_y
from aceserver.basis.polynomials import (jacobi_orthonormal, legendre_orthonormal,
                                         natural_spline_coefficients, spline_nodes)
from aceserver.basis.transforms import AgnesiTransform, agnesi_a
from aceserver.kernels.radial import agnesi

R = np.array([0.5, 1, 2, 2.4, 3, 4, 5, 5.5, 6])


def test_agnesi_a():
    assert agnesi_a(2, 4) == pytest.approx(20 / 26, abs=1e-12)
    assert agnesi_a(1, 3) == pytest.approx(4 / 14, abs=1e-12)
    assert agnesi_a(2, 2) == pytest.approx(8 / 12, abs=1e-12)
    assert agnesi_a(1, 4) == pytest.approx(6 / 22, abs=1e-12)


def test_agnesi_reference_values():
    # reference values printed to 8 decimals: atol = half a unit of the last digit (ours err by ~ε)
    y24 = AgnesiTransform(2, 4, 2.4, 0.0, 5.5)(R)
    y13 = AgnesiTransform(1, 3, 2.4, 0.0, 5.5)(R)
    np.testing.assert_allclose(y24, [-0.99640891, -0.94983729, -0.53493321, -0.28073803,
                                     0.09510044, 0.58226382, 0.89206244, 1, 1], atol=5e-9)
    np.testing.assert_allclose(y13, [-0.98607913, -0.90246139, -0.49891791, -0.29547859,
                                     0.00789902, 0.46166268, 0.83763906, 1, 1], atol=5e-9)


def test_kernel_agnesi_matches_numpy_and_its_derivative():
    t = AgnesiTransform(2, 4, 2.4, 0.0, 5.5)
    prm = t.params()[None, None, :]
    r = np.linspace(0.3, 5.45, 60)
    y = np.array([agnesi(x, prm, 0, 0)[0] for x in r])
    dy = np.array([agnesi(x, prm, 0, 0)[1] for x in r])
    np.testing.assert_allclose(y, t(r), atol=1e-14)
    # central differences: rounding ε|y|/h ~ 2e-10 (|y| ≤ 1), truncation h²/6·|y'''| ~ 1e-12·|y'''|;
    # the tolerance 1e-9 + 1e-6|y'| is above both (measured 3e-10)
    h = 1e-6
    np.testing.assert_allclose(dy, (t(r + h) - t(r - h)) / (2 * h), rtol=1e-6, atol=1e-9)


def test_envelopes_reference_values():
    # reference values printed to 7 significant digits: relative rounding ≤ 5e-7 (≤ 5e-6 absolute for
    # 22.50338), within rtol·|f| + atol = 1e-6·(|f| + 1)
    f = envelope_pair_ace1(np.array([0.5, 1, 2, 2.4, 3, 4, 5]), r0=2.4, rcut=5.5, p=2)
    np.testing.assert_allclose(f, [22.50338, 5.258002, 1.007243, 0.594939, 0.276484, 0.065725,
                                   0.005366], rtol=1e-6, atol=1e-6)
    assert envelope_pair_ace1(5.5, 2.4, 5.5) == pytest.approx(0.0, abs=1e-15)
    np.testing.assert_allclose(envelope_y([-1, 0, 0.5, 1, 2]), [0, 1, 0.5625, 0, 0])


def test_jacobi_orthonormal_reference_and_orthonormality():
    # reference printed to 9 decimals (atol 2e-9 > half a unit); the Gram matrices by 60-point Gauss
    # quadrature are exact for these degrees up to rounding: ~m ε (measured 8e-14) against 1e-12
    np.testing.assert_allclose(jacobi_orthonormal(5, [0.3])[0],
                               [1.109264959, 1.103704699, -0.008943180, -1.009889800,
                                -0.689824581], atol=2e-9)
    x, w = np.polynomial.legendre.leggauss(60)
    P = jacobi_orthonormal(12, x)
    gram = (P * (w * (1 - x) ** 4 * (1 + x) ** 4)[:, None]).T @ P
    np.testing.assert_allclose(gram, np.eye(12), atol=1e-12)
    L = legendre_orthonormal(12, x)
    np.testing.assert_allclose((L * w[:, None]).T @ L, np.eye(12), atol=1e-12)


def test_natural_spline_interpolates_and_is_accurate():
    nodes = spline_nodes(100)
    vals = jacobi_orthonormal(8, nodes)
    c = natural_spline_coefficients(vals)
    h = nodes[1] - nodes[0]
    # the piece of interval k evaluated at t = 0 reproduces node k; second derivative 0 at the ends
    np.testing.assert_allclose(c[:, 3, :], vals[:-1], atol=1e-14)
    np.testing.assert_allclose(c[0, 1, :], 0.0, atol=1e-9)
    end = 6 * c[-1, 0, :] * h + 2 * c[-1, 1, :]
    np.testing.assert_allclose(end, 0.0, atol=1e-9)
    # mean relative error of the 100-node splined radials R = S(y)(1-y²)², as upstream (< 1e-5)
    y = np.linspace(-1, 1, 1001)[1:-1]
    k = np.minimum(((y + 1) / h).astype(int), 98)
    t = y - nodes[k]
    s = ((c[k, 0] * t[:, None] + c[k, 1]) * t[:, None] + c[k, 2]) * t[:, None] + c[k, 3]
    env = ((1 - y**2) ** 2)[:, None]
    exact = jacobi_orthonormal(8, y) * env
    assert np.mean(np.abs(s * env - exact)) / np.mean(np.abs(exact)) < 1e-5
