"""Real spherical harmonics in SpheriCart's convention and order (flat index l² + l + m), with
gradients with respect to the (unnormalised) direction vector.

Y_l^0 = K_l^0 q_l^0(z), Y_l^{±m} = √2 K_l^m q_l^m(z) · (c_m | s_m)(x, y) on the unit sphere, where
q_l^m = d^m P_l/dz^m and c_m + i s_m = (x + i y)^m: no Condon-Shortley phase. The gradient of any
smooth extension of Y off the sphere, projected on the tangent plane and divided by r, is ∇Y; the
polynomial extension above has simple derivatives (∂c_m/∂x = m c_{m-1}, ∂q_l^m/∂z = q_l^{m+1}),
so nothing is singular at the poles.
"""
from __future__ import annotations

import math

import numpy as np
from numba import njit


@njit(cache=True, nogil=True)
def ylm_norms(lmax):
    """K_l^m = sqrt((2l+1)/(4π) (l-m)!/(l+m)!) times √2 for m > 0, indexed [l, m]."""
    K = np.zeros((lmax + 1, lmax + 2))
    for l in range(lmax + 1):
        for m in range(l + 1):
            ratio = 1.0
            for k in range(l - m + 1, l + m + 1):
                ratio /= k
            K[l, m] = math.sqrt((2 * l + 1) / (4.0 * math.pi) * ratio)
            if m > 0:
                K[l, m] *= math.sqrt(2.0)
    return K


@njit(cache=True, nogil=True, inline="always")
def ylm_grad(x0, x1, x2, lmax, K, q, cs, Y, dY, row):
    """Fill Y[row, :(lmax+1)²] and dY[row, :, :] for the vector (x0, x1, x2), r > 0.

    dY holds the gradient of the polynomial extension at the unit vector, NOT yet projected:
    ∂Y/∂R = (dY - (dY·R̂) R̂)/r, see `project`. The projection is linear, so the reverse pass
    applies it once per neighbour instead of once per harmonic.
    q (lmax+1, lmax+2) and cs (lmax+1, 2) are caller-owned scratch arrays.
    """
    r = math.sqrt(x0 * x0 + x1 * x1 + x2 * x2)
    x, y, z = x0 / r, x1 / r, x2 / r
    # q[l, m] = d^m P_l / dz^m for m <= l, and q[l, l+1] = 0
    dfact = 1.0                              # (2m-1)!!
    for m in range(lmax + 1):
        if m > 0:
            dfact *= 2 * m - 1
        q[m, m] = dfact
        q[m, m + 1] = 0.0
        if m + 1 <= lmax:
            q[m + 1, m] = (2 * m + 1) * z * dfact
        for l in range(m + 2, lmax + 1):
            q[l, m] = ((2 * l - 1) * z * q[l - 1, m] - (l + m - 1) * q[l - 2, m]) / (l - m)
    cs[0, 0] = 1.0
    cs[0, 1] = 0.0
    for m in range(1, lmax + 1):
        cs[m, 0] = x * cs[m - 1, 0] - y * cs[m - 1, 1]
        cs[m, 1] = x * cs[m - 1, 1] + y * cs[m - 1, 0]
    for l in range(lmax + 1):
        base = l * l + l
        Y[row, base] = K[l, 0] * q[l, 0]
        dY[row, base, 0] = 0.0
        dY[row, base, 1] = 0.0
        dY[row, base, 2] = K[l, 0] * q[l, 1]
        for m in range(1, l + 1):
            kq = K[l, m] * q[l, m]
            kqm = kq * m
            kq1 = K[l, m] * q[l, m + 1]
            c, s = cs[m, 0], cs[m, 1]
            cm1, sm1 = cs[m - 1, 0], cs[m - 1, 1]
            Y[row, base + m] = kq * c
            Y[row, base - m] = kq * s
            dY[row, base + m, 0] = kqm * cm1
            dY[row, base + m, 1] = -kqm * sm1
            dY[row, base + m, 2] = kq1 * c
            dY[row, base - m, 0] = kqm * sm1
            dY[row, base - m, 1] = kqm * cm1
            dY[row, base - m, 2] = kq1 * s


@njit(cache=True, nogil=True, inline="always")
def project(g0, g1, g2, u0, u1, u2, inv_r):
    """Tangential part of g at the unit vector u, divided by r: turns the extension's gradient
    into the true gradient of Y(R/|R|) with respect to R."""
    d = g0 * u0 + g1 * u1 + g2 * u2
    return (g0 - d * u0) * inv_r, (g1 - d * u1) * inv_r, (g2 - d * u2) * inv_r


def real_sph_harm(vectors: np.ndarray, lmax: int):
    """Convenience wrapper: (Y (n, (lmax+1)²), dY (n, (lmax+1)², 3)) for an array of vectors."""
    vectors = np.ascontiguousarray(vectors, dtype=np.float64).reshape(-1, 3)
    return _batch(vectors, lmax)


@njit(cache=True, nogil=True)
def _batch(vectors, lmax):
    n = vectors.shape[0]
    nlm = (lmax + 1) ** 2
    Y = np.empty((n, nlm))
    dY = np.empty((n, nlm, 3))
    K = ylm_norms(lmax)
    q = np.empty((lmax + 1, lmax + 2))
    cs = np.empty((lmax + 1, 2))
    for i in range(n):
        x0, x1, x2 = vectors[i, 0], vectors[i, 1], vectors[i, 2]
        ylm_grad(x0, x1, x2, lmax, K, q, cs, Y, dY, i)
        r = math.sqrt(x0 * x0 + x1 * x1 + x2 * x2)
        for lm in range(nlm):
            dY[i, lm, 0], dY[i, lm, 1], dY[i, lm, 2] = project(
                dY[i, lm, 0], dY[i, lm, 1], dY[i, lm, 2], x0 / r, x1 / r, x2 / r, 1.0 / r)
    return Y, dY
