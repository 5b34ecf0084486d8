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


@njit(cache=True, nogil=True, fastmath=True)
def ylm_grad(J, u, lmax, K, Q, C, S, Y, dY):
    """Fill Y[:(lmax+1)², j] and dY[a, lm, j] for the unit vectors u[:, j], j < J.

    Neighbours are the last (contiguous) axis and the innermost loop, so the recursions run as
    vector loops over neighbours. dY holds the gradient of the polynomial extension at the unit
    vector, NOT yet projected: ∂Y/∂R = (dY - (dY·R̂) R̂)/r, see `project`. The projection is
    linear, so the reverse pass applies it once per neighbour instead of once per harmonic.
    Q (lmax+1, lmax+2, ≥J), C and S (lmax+1, ≥J) are caller-owned scratch arrays.
    """
    x, y, z = u[0, :J], u[1, :J], u[2, :J]
    c0, s0 = C[0, :J], S[0, :J]
    for j in range(J):
        c0[j] = 1.0
        s0[j] = 0.0
    for m in range(1, lmax + 1):            # c_m + i s_m = (x + i y)^m
        cp, sp, cm, sm = C[m - 1, :J], S[m - 1, :J], C[m, :J], S[m, :J]
        for j in range(J):
            cm[j] = x[j] * cp[j] - y[j] * sp[j]
            sm[j] = x[j] * sp[j] + y[j] * cp[j]
    # Q[l, m] = d^m P_l / dz^m for m <= l, and Q[l, l+1] = 0
    dfact = 1.0                              # (2m-1)!!
    for m in range(lmax + 1):
        if m > 0:
            dfact *= 2 * m - 1
        qmm, qm1 = Q[m, m, :J], Q[m, m + 1, :J]
        for j in range(J):
            qmm[j] = dfact
            qm1[j] = 0.0
        if m + 1 <= lmax:
            q = Q[m + 1, m, :J]
            f = (2 * m + 1) * dfact
            for j in range(J):
                q[j] = f * z[j]
        for l in range(m + 2, lmax + 1):
            a = (2 * l - 1) / (l - m)
            b = (l + m - 1) / (l - m)
            q, q1, q2 = Q[l, m, :J], Q[l - 1, m, :J], Q[l - 2, m, :J]
            for j in range(J):
                q[j] = a * z[j] * q1[j] - b * q2[j]
    for l in range(lmax + 1):
        base = l * l + l
        k0 = K[l, 0]
        q0, q1 = Q[l, 0, :J], Q[l, 1, :J]
        yb, d0, d1, d2 = Y[base, :J], dY[0, base, :J], dY[1, base, :J], dY[2, base, :J]
        for j in range(J):
            yb[j] = k0 * q0[j]
            d0[j] = 0.0
            d1[j] = 0.0
            d2[j] = k0 * q1[j]
        for m in range(1, l + 1):
            km = K[l, m]
            kmm = km * m
            qm, qm1 = Q[l, m, :J], Q[l, m + 1, :J]
            c, s, cm1, sm1 = C[m, :J], S[m, :J], C[m - 1, :J], S[m - 1, :J]
            yp, ym = Y[base + m, :J], Y[base - m, :J]
            p0, p1, p2 = dY[0, base + m, :J], dY[1, base + m, :J], dY[2, base + m, :J]
            n0, n1, n2 = dY[0, base - m, :J], dY[1, base - m, :J], dY[2, base - m, :J]
            for j in range(J):
                kq = km * qm[j]
                kqm = kmm * qm[j]
                kq1 = km * qm1[j]
                yp[j] = kq * c[j]
                ym[j] = kq * s[j]
                p0[j] = kqm * cm1[j]
                p1[j] = -kqm * sm1[j]
                p2[j] = kq1 * c[j]
                n0[j] = kqm * sm1[j]
                n1[j] = kqm * cm1[j]
                n2[j] = kq1 * s[j]


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
    u = np.empty((3, n))
    rinv = np.empty(n)
    for i in range(n):
        r = math.sqrt(vectors[i, 0] ** 2 + vectors[i, 1] ** 2 + vectors[i, 2] ** 2)
        rinv[i] = 1.0 / r
        for a in range(3):
            u[a, i] = vectors[i, a] / r
    Yt = np.empty((nlm, n))
    dYt = np.empty((3, nlm, n))
    ylm_grad(n, u, lmax, ylm_norms(lmax), np.empty((lmax + 1, lmax + 2, n)),
             np.empty((lmax + 1, n)), np.empty((lmax + 1, n)), Yt, dYt)
    Y = np.empty((n, nlm))
    dY = np.empty((n, nlm, 3))
    for i in range(n):
        for lm in range(nlm):
            Y[i, lm] = Yt[lm, i]
            dY[i, lm, 0], dY[i, lm, 1], dY[i, lm, 2] = project(
                dYt[0, lm, i], dYt[1, lm, i], dYt[2, lm, i], u[0, i], u[1, i], u[2, i], rinv[i])
    return Y, dY
