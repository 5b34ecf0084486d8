"""Real spherical harmonics (SpheriCart convention) against scipy and finite differences."""
import numpy as np
import pytest
from scipy.special import sph_harm_y

from aceserver.kernels.ylm import real_sph_harm


def scipy_real(v, lmax):
    r = np.linalg.norm(v, axis=1)
    th, ph = np.arccos(np.clip(v[:, 2] / r, -1, 1)), np.arctan2(v[:, 1], v[:, 0])
    out = np.zeros((len(v), (lmax + 1) ** 2))
    for l in range(lmax + 1):
        for m in range(-l, l + 1):
            c = sph_harm_y(l, abs(m), th, ph)
            if m == 0:
                out[:, l * l + l] = c.real
            else:   # real SH without Condon-Shortley phase
                out[:, l * l + l + m] = np.sqrt(2) * (-1) ** m * (c.real if m > 0 else c.imag)
    return out


@pytest.mark.parametrize("lmax", [0, 1, 3, 8])
def test_values_equal_scipy(lmax):
    v = np.random.default_rng(lmax).normal(size=(200, 3)) * 3
    Y, _ = real_sph_harm(v, lmax)
    np.testing.assert_allclose(Y, scipy_real(v, lmax), atol=1e-12)


def test_y1_is_sqrt3_over_4pi_yzx():
    v = np.random.default_rng(1).normal(size=(20, 3))
    Y, _ = real_sph_harm(v, 1)
    u = v / np.linalg.norm(v, axis=1)[:, None]
    np.testing.assert_allclose(Y[:, 1:4], np.sqrt(3 / (4 * np.pi)) * u[:, [1, 2, 0]], atol=1e-14)


def test_gradients_equal_finite_differences():
    v = np.random.default_rng(2).normal(size=(50, 3)) * 2
    _, dY = real_sph_harm(v, 6)
    # central differences: rounding ε|Y|/h ≤ 3e-10 (|Y| ≤ 1.4 for l ≤ 6), truncation h²/6·|∂³Y| with
    # |v| ≥ 1.1 here (|∂³Y| ~ l³/|v|³ ≤ 200): ≤ 4e-11; tolerance 1e-7 (measured 7e-10)
    h = 1e-6
    for a in range(3):
        e = np.zeros(3)
        e[a] = h
        fd = (real_sph_harm(v + e, 6)[0] - real_sph_harm(v - e, 6)[0]) / (2 * h)
        np.testing.assert_allclose(dY[:, :, a], fd, atol=1e-7)


def test_poles_and_scale_invariance():
    v = np.array([[0, 0, 1.0], [0, 0, -2.5], [1e-9, 0, 3.0]])
    Y, dY = real_sph_harm(v, 5)
    np.testing.assert_allclose(Y[:2], scipy_real(v[:2], 5), atol=1e-12)
    # next to the pole scipy's angles lose precision; Y_1^1 = sqrt(3/4π) x/r is exact
    assert Y[2, 3] == pytest.approx(np.sqrt(3 / (4 * np.pi)) * 1e-9 / np.linalg.norm(v[2]), rel=1e-12)
    assert np.all(np.isfinite(dY))
    Y2, _ = real_sph_harm(7.3 * v, 5)
    np.testing.assert_allclose(Y, Y2, atol=1e-13)
    # gradient is tangential: no radial component
    np.testing.assert_allclose(np.einsum("nla,na->nl", dY, v), 0, atol=1e-12)


def test_normalisation_on_the_sphere():
    x, w = np.polynomial.legendre.leggauss(30)
    phi = np.linspace(0, 2 * np.pi, 61)[:-1]
    X, P = np.meshgrid(x, phi, indexing="ij")
    s = np.sqrt(1 - X**2)
    v = np.stack([s * np.cos(P), s * np.sin(P), X], axis=-1).reshape(-1, 3)
    wt = (w[:, None] * np.full_like(P, 2 * np.pi / 60)).reshape(-1)
    Y, _ = real_sph_harm(v, 4)
    np.testing.assert_allclose((Y * wt[:, None]).T @ Y, np.eye(25), atol=1e-12)
