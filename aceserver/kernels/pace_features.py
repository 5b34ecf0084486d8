"""The pieces of the site pass that only tabulated (pacemaker) potentials use: radials R_nl per
species pair from cubic Hermite tables, the A accumulation with l-dependent radials, the embedding
F(ρ_1..ρ_P) with the core-repulsion cut-off or the ZBL switch. The pass itself is
`site_pass._fast_range`; the tables are `site_tables.SiteTables`."""
from __future__ import annotations

import math

import numpy as np
from numba import njit

from .ylm import ylm_grad


@njit(cache=True, nogil=True, inline="always")
def smooth_step(x, x_in, delta):
    """1 for x <= x_in - Δ, 0 for x >= x_in, quintic in between; value and d/dx."""
    if x <= x_in - delta:
        return 1.0, 0.0
    if x >= x_in:
        return 0.0, 0.0
    u = 1.0 - 2.0 * (1.0 + (x - x_in) / delta)
    u2 = u * u
    return (0.5 + 3.75 * u * (0.25 - u2 / 6.0 + u2 * u2 / 20.0),
            3.75 * (0.25 - u2 / 2.0 + u2 * u2 / 4.0) * (-2.0 / delta))


@njit(cache=True, nogil=True, inline="always")
def neighbour_vector(p, jj, R, zat, nbr, zj, rinv, rhat):
    """Pair slot p as neighbour jj: stores its species, 1/r and unit vector rhat[:, jj];
    returns r and the species."""
    x0, x1, x2 = R[p, 0], R[p, 1], R[p, 2]
    r = math.sqrt(x0 * x0 + x1 * x1 + x2 * x2)
    z = zat[nbr[p]]
    zj[jj] = z
    rinv[jj] = 1.0 / r
    rhat[0, jj] = x0 / r
    rhat[1, jj] = x1 / r
    rhat[2, jj] = x2 / r
    return r, z


@njit(cache=True, nogil=True)
def table_features(i, J, slot, R, zat, nbr, T, K, Q, C, S, zj, rhat, rinv, rad, drad, Y, dY,
                   row):
    """Per neighbour jj of atom i (pair slot slot[jj]): species, unit vector, 1/r, harmonics,
    and every tabulated radial function with its r-derivative into rad[f, jj], drad[f, jj]
    (cubic Hermite on the node values and derivatives; zero at and beyond the pair's cut-off).
    Returns the neighbour that decides the ZBL switch (smallest r - (r_in - Δ_in) within the
    cut-off; -1 if none or not a ZBL potential). row: (2, ≥ nf) scratch."""
    zi = zat[i]
    nf = T.tab.shape[4]
    best = np.inf
    jstar = -1
    for jj in range(J):
        r, z = neighbour_vector(slot[jj], jj, R, zat, nbr, zj, rinv, rhat)
        rc = T.tab_rc[zi, z]
        if r >= rc:
            for f in range(nf):
                rad[f, jj] = 0.0
                drad[f, jj] = 0.0
            continue
        h = T.tab_h[zi, z]
        u = r / h
        k = int(u)
        n_last = int(rc / h + 0.5) - 1
        if k > n_last:
            k = n_last
        t = u - k
        t2 = t * t
        t3 = t2 * t
        h00 = 2.0 * t3 - 3.0 * t2 + 1.0
        h10 = (t3 - 2.0 * t2 + t) * h
        h01 = 3.0 * t2 - 2.0 * t3
        h11 = (t3 - t2) * h
        d00 = 6.0 * (t2 - t) / h
        d10 = 3.0 * t2 - 4.0 * t + 1.0
        d11 = 3.0 * t2 - 2.0 * t
        v0, s0 = T.tab[zi, z, k, 0], T.tab[zi, z, k, 1]
        v1, s1 = T.tab[zi, z, k + 1, 0], T.tab[zi, z, k + 1, 1]
        rj, dj = row[0], row[1]
        for f in range(nf):          # contiguous: vectorises; then one strided copy
            rj[f] = h00 * v0[f] + h10 * s0[f] + h01 * v1[f] + h11 * s1[f]
            dj[f] = d00 * (v0[f] - v1[f]) + d10 * s0[f] + d11 * s1[f]
        for f in range(nf):
            rad[f, jj] = rj[f]
            drad[f, jj] = dj[f]
        if T.inner == 2:
            d = r - (T.zin[zi, z, 0] - T.zin[zi, z, 1])
            if d < best:
                best = d
                jstar = jj
    ylm_grad(J, rhat, T.lmax, K, Q, C, S, Y, dY)
    return jstar


@njit(cache=True, nogil=True)
def embedding(kind, rho, m):
    """F(ρ) and F'(ρ) of one density with exponent m (prefactor applied by the caller)."""
    a = abs(rho)
    s = 1.0 if rho > 0 else (-1.0 if rho < 0 else 0.0)
    if kind == 0:                                 # FinnisSinclair: |ρ|^m, linear near 0
        w = 1e6
        lam = w ** (1.0 - m)
        if a <= 1e-10:
            return lam * rho, lam
        wa3 = (w * a) ** 3
        g = math.exp(-wa3) if wa3 <= 30.0 else 0.0
        dg = -3.0 * wa3 / a * g
        am = a ** m
        return (s * ((1.0 - g) * am + lam * g * a),
                -dg * am + (1.0 - g) * m * am / a + lam * (dg * a + g))
    if abs(m - 1.0) < 1e-10:                      # FinnisSinclairShiftedScaled
        return rho, 1.0
    nu = 1.0 / m
    e = math.exp(-a)
    x_off = nu ** (nu / (1.0 - nu)) * e
    y_off = nu ** (1.0 / (1.0 - nu)) * e
    return s * ((x_off + a) ** m - y_off), y_off + m * (1.0 - x_off) * (x_off + a) ** (m - 1.0)


@njit(cache=True, nogil=True)
def embed(zi, J, rho, rad, zj, T, seed, jstar, slot, R):
    """Site energy (without E0) from the densities rho and the core repulsion; fills seed[p] =
    ∂E/∂ρ_p and returns (E, ∂E/∂ρ_core, ∂E/∂r of the ZBL-switch neighbour jstar)."""
    nf = rad.shape[0]
    core = 0.0
    for jj in range(J):
        core += rad[nf - 1, jj]
    Fs = 0.0
    for p in range(rho.shape[0]):
        w = T.emb_par[zi, p, 0]
        if w == 0.0:
            seed[p] = 0.0
            continue
        F, dF = embedding(T.emb_kind[zi], rho[p], T.emb_par[zi, p, 1])
        Fs += w * F
        seed[p] = w * dF
    if T.inner == 2:
        f, df = 1.0, 0.0
        if jstar >= 0:
            rv = R[slot[jstar]]
            r = math.sqrt(rv[0] * rv[0] + rv[1] * rv[1] + rv[2] * rv[2])
            r_in, d_in = T.zin[zi, zj[jstar], 0], T.zin[zi, zj[jstar], 1]
            f, dfx = smooth_step(r_in - r, d_in, d_in)
            df = -dfx
        for p in range(rho.shape[0]):
            seed[p] *= f
        return Fs * f + core * (1.0 - f), 1.0 - f, (Fs - core) * df
    fc, dfc = smooth_step(core, T.rho_cut[zi, 0], T.rho_cut[zi, 1])
    for p in range(rho.shape[0]):
        seed[p] *= fc
    return Fs * fc + core, 1.0 + Fs * dfc, 0.0
