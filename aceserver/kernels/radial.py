"""Radial pieces evaluated per pair: Agnesi transform, natural cubic splines on uniform nodes of
[-1, 1], and the envelopes. Parameters come packed as built in `aceserver.basis`."""
from __future__ import annotations

from numba import njit


@njit(cache=True, nogil=True, inline="always")
def agnesi(r, prm, zi, zj):
    """y(r) and dy/dr for species pair (zi, zj); prm[zi, zj] = (a, p, q, r0, rin, rcut, x_cut).
    y = 1 (flat) at and beyond rcut."""
    a, r0, rin, rcut, xcut = prm[zi, zj, 0], prm[zi, zj, 3], prm[zi, zj, 4], prm[zi, zj, 5], prm[zi, zj, 6]
    p = int(prm[zi, zj, 1])      # integer powers compile to multiplications, not pow()
    q = int(prm[zi, zj, 2])
    if r >= rcut:
        return 1.0, 0.0
    if r <= rin:
        return -1.0, 0.0
    ds = 1.0 / (r0 - rin)
    s = (r - rin) * ds
    sq = s ** q
    sqp = s ** (q - p)
    den = 1.0 + sqp
    u = a * sq / den
    du = a * (q * sq * den - sq * (q - p) * sqp) / (s * den * den)
    x = 1.0 / (1.0 + u)
    dx = -du * x * x
    scale = 2.0 / (xcut - 1.0)
    y = -1.0 + (x - 1.0) * scale
    dy = dx * scale * ds
    if y > 1.0:
        return 1.0, 0.0
    if y < -1.0:
        return -1.0, 0.0
    return y, dy


@njit(cache=True, nogil=True, inline="always")
def spline_interval(y, n_intervals):
    """Interval index k and local coordinate t = y - y_k for uniform nodes on [-1, 1]."""
    h = 2.0 / n_intervals
    k = int((y + 1.0) / h)
    if k < 0:
        k = 0
    elif k > n_intervals - 1:
        k = n_intervals - 1
    return k, y - (-1.0 + k * h)


@njit(cache=True, nogil=True)
def mb_radials(J, r, mb_t, zi, zj, mb_spl, P, dP):
    """Many-body radials spline_n(y) (1 - y²)² of centre zi for neighbours j < J (species
    zj[j] at distance r[j]) and their r-derivatives, into P[:, j] and dP[:, j]; mb_spl
    (n_intervals, 4, n_poly). One call per site, not per neighbour: inlined per neighbour,
    numba's reference counting of the four arrays cost ace1 models ~25 % of site_features."""
    for j in range(J):
        y, dy = agnesi(r[j], mb_t, zi, zj[j])
        w = 1.0 - y * y
        env = w * w
        denv = -4.0 * y * w
        k, t = spline_interval(y, mb_spl.shape[0])
        for n in range(mb_spl.shape[2]):
            c0, c1, c2, c3 = mb_spl[k, 0, n], mb_spl[k, 1, n], mb_spl[k, 2, n], mb_spl[k, 3, n]
            v = ((c0 * t + c1) * t + c2) * t + c3
            dv = (3.0 * c0 * t + 2.0 * c1) * t + c2
            P[n, j] = v * env
            dP[n, j] = (dv * env + v * denv) * dy


@njit(cache=True, nogil=True, inline="always")
def spline_eval_all(coef, y, out, dout):
    """All spline functions at y: coef (n_intervals, 4, n_fun) -> out[n], dout[n] (d/dy)."""
    k, t = spline_interval(y, coef.shape[0])
    c = coef[k]
    for n in range(coef.shape[2]):
        out[n] = ((c[0, n] * t + c[1, n]) * t + c[2, n]) * t + c[3, n]
        dout[n] = (3.0 * c[0, n] * t + 2.0 * c[1, n]) * t + c[2, n]


@njit(cache=True, nogil=True, inline="always")
def spline_eval_one(coef, m, zi, zj, k, t):
    """One spline function per parameter set and species pair, coef (M, NZ, NZ, n_intervals, 4),
    on interval k at local coordinate t (see spline_interval): value and d/dy."""
    c0, c1, c2, c3 = coef[m, zi, zj, k, 0], coef[m, zi, zj, k, 1], coef[m, zi, zj, k, 2], coef[m, zi, zj, k, 3]
    return ((c0 * t + c1) * t + c2) * t + c3, (3.0 * c0 * t + 2.0 * c1) * t + c2


@njit(cache=True, nogil=True, inline="always")
def pair_envelope(r, r0, rcut, p):
    """ACE1 pair envelope s^-p - sc^-p + p sc^(-p-1) (s - sc) (s = r/r0) and its r-derivative."""
    if r >= rcut:
        return 0.0, 0.0
    s_inv = r0 / r
    sc_inv = r0 / rcut
    sp = s_inv ** p          # p is an integer: multiplications, not pow()
    scp = sc_inv ** p
    f = sp - scp + p * scp * sc_inv * (r - rcut) / r0
    df = (-p * sp * s_inv + p * scp * sc_inv) / r0
    return f, df
