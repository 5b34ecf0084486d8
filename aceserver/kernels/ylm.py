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


@njit(cache=True, nogil=True)
def ylm_grad(rvec, lmax, K, q, cs, Y, dY):
    """Fill Y[(lmax+1)²] and dY[(lmax+1)², 3] (= ∂Y/∂rvec) for one vector rvec (r > 0).

    q (lmax+2, lmax+2) and cs (lmax+1, 2) are caller-owned scratch arrays.
    """
    r = math.sqrt(rvec[0] ** 2 + rvec[1] ** 2 + rvec[2] ** 2)
    x, y, z = rvec[0] / r, rvec[1] / r, rvec[2] / r
    # q[l, m] = d^m P_l / dz^m, zero for m > l
    for l in range(lmax + 2):
        for m in range(lmax + 2):
            q[l, m] = 0.0
    dfact = 1.0                              # (2m-1)!!
    for m in range(lmax + 1):
        if m > 0:
            dfact *= 2 * m - 1
        q[m, m] = dfact
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
        # m = 0
        Y[base] = K[l, 0] * q[l, 0]
        gx, gy, gz = 0.0, 0.0, K[l, 0] * q[l, 1]
        _project(dY, base, gx, gy, gz, x, y, z, r)
        for m in range(1, l + 1):
            k = K[l, m]
            c, s = cs[m, 0], cs[m, 1]
            cm1, sm1 = cs[m - 1, 0], cs[m - 1, 1]
            Y[base + m] = k * q[l, m] * c
            Y[base - m] = k * q[l, m] * s
            _project(dY, base + m, k * q[l, m] * m * cm1, -k * q[l, m] * m * sm1,
                     k * q[l, m + 1] * c, x, y, z, r)
            _project(dY, base - m, k * q[l, m] * m * sm1, k * q[l, m] * m * cm1,
                     k * q[l, m + 1] * s, x, y, z, r)


@njit(cache=True, nogil=True, inline="always")
def _project(dY, i, gx, gy, gz, x, y, z, r):
    d = gx * x + gy * y + gz * z
    dY[i, 0] = (gx - d * x) / r
    dY[i, 1] = (gy - d * y) / r
    dY[i, 2] = (gz - d * z) / r


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
    q = np.empty((lmax + 2, lmax + 2))
    cs = np.empty((lmax + 1, 2))
    for i in range(n):
        ylm_grad(vectors[i], lmax, K, q, cs, Y[i], dY[i])
    return Y, dY
