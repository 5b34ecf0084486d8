"""Radial part of the .yace export (construction-time numpy): our radial functions written as
Σ_k c_k g_k(r) in a PACE radial basis, fitted by least squares, with the error measured.

Our radials are natural cubic splines in the Agnesi coordinate y(r) times an envelope; the PACE
bases (yace-format.md §4) are Chebyshev polynomials of a fixed map x(r) on [0, rcut]. No PACE basis
holds our functions exactly, so each is fitted on [r_min, rcut] (values and slopes) and the error
of what pyace / LAMMPS will evaluate -- the fitted sum, tabulated on their grid of spacing
deltaSplineBins and interpolated with cubic Hermite polynomials -- is measured on a fine grid.
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
from numba import njit

from ..kernels.radial import agnesi, mb_radials, pair_envelope, spline_eval_one, spline_interval


# ---- our functions, through the kernels' own radial code ---------------------------------------
@njit(cache=True, nogil=True)
def model_radials(r, mb_t, zi, zj, mb_spl):
    """Many-body radials R_n(r) of centre zi, neighbour zj and dR_n/dr, shape (len(r), n_poly)."""
    R = np.zeros((mb_spl.shape[2], r.shape[0]))
    dR = np.zeros((mb_spl.shape[2], r.shape[0]))
    mb_radials(r.shape[0], r, mb_t, zi, np.full(r.shape[0], zj), mb_spl, R, dR)
    return R.T.copy(), dR.T.copy()


@njit(cache=True, nogil=True)
def model_pair(r, pr_t, zi, zj, pair_p, pair_spl):
    """Merged pair potential V(r) = s(y) f_env(r) of centre zi, neighbour zj and dV/dr, from the
    fast form's pair_spl (M, NZ, NZ, n_int, 4), parameter set 0."""
    V = np.zeros(r.shape[0])
    dV = np.zeros(r.shape[0])
    for i in range(r.shape[0]):
        y, dy = agnesi(r[i], pr_t, zi, zj)
        f, df = pair_envelope(r[i], pr_t[zi, zj, 3], pr_t[zi, zj, 5], pair_p)
        k, t = spline_interval(y, pair_spl.shape[3])
        s, ds = spline_eval_one(pair_spl, 0, zi, zj, k, t)
        V[i] = s * f
        dV[i] = ds * dy * f + s * df
    return V, dV


# ---- PACE radial bases (yace-format.md §4), our own implementation ------------------------------
def _chebyshev(x, K):
    """T_k(x) and dT_k/dx for k = 0..K, shape (len(x), K+1)."""
    T = np.empty((x.size, K + 1))
    dT = np.empty((x.size, K + 1))
    U = np.empty((x.size, K + 1))         # U_k, second kind: dT_k/dx = k U_{k-1}
    T[:, 0], U[:, 0], dT[:, 0] = 1.0, 1.0, 0.0
    if K >= 1:
        T[:, 1], U[:, 1], dT[:, 1] = x, 2 * x, 1.0
    for k in range(2, K + 1):
        T[:, k] = 2 * x * T[:, k - 1] - T[:, k - 2]
        U[:, k] = 2 * x * U[:, k - 1] - U[:, k - 2]
    for k in range(2, K + 1):
        dT[:, k] = k * U[:, k - 1]
    return T, dT


def pace_basis(name: str, lam: float, rcut: float, dcut: float, K: int, r):
    """g_k(r) and dg_k/dr, k = 0..K-1, shape (len(r), K); zero for r >= rcut."""
    r = np.asarray(r, dtype=float)
    inside = r < rcut
    if name == "ChebExpCos":
        e = np.exp(-lam * r / rcut)
        el = math.exp(-lam)
        x = 1.0 - 2.0 * (e - el) / (1.0 - el)
        dx = 2.0 * lam / rcut * e / (1.0 - el)
        T, dT = _chebyshev(x, K - 1)
        cheb = np.concatenate([np.ones((r.size, 1)), 0.5 * (1.0 - T[:, 1:])], axis=1)
        dcheb = np.concatenate([np.zeros((r.size, 1)), -0.5 * dT[:, 1:] * dx[:, None]], axis=1)
        env = 0.5 * (1.0 + np.cos(np.pi * r / rcut))
        denv = -0.5 * np.pi / rcut * np.sin(np.pi * r / rcut)
        tail = r > rcut - dcut                     # the extra cosine cut-off of the last dcut
        arg = np.pi * (r - rcut + dcut) / dcut
        env2 = np.where(tail, 0.5 * (1.0 + np.cos(arg)), 1.0)
        denv2 = np.where(tail, -0.5 * np.pi / dcut * np.sin(arg), 0.0)
        envelope, denvelope = env * env2, denv * env2 + env * denv2
        g = cheb * envelope[:, None]
        dg = dcheb * envelope[:, None] + cheb * denvelope[:, None]
    elif name == "ChebPow":
        base = np.clip(1.0 - r / rcut, 0.0, None)
        y = base**lam
        dy = -lam / rcut * base ** (lam - 1.0)
        x = 1.0 - 2.0 * y
        T, dT = _chebyshev(x, K)
        g = 0.5 * (1.0 - T[:, 1:])
        dg = -0.5 * dT[:, 1:] * (-2.0 * dy)[:, None]
    else:
        raise ValueError(f"unsupported PACE radial basis {name!r}")
    return np.where(inside[:, None], g, 0.0), np.where(inside[:, None], dg, 0.0)


def hermite_as_pace(node_values, node_slopes, h, r):
    """What pyace / ML-PACE evaluate from a tabulated function: value and slope at the nodes
    n·h joined by cubic Hermite polynomials (yace-format.md §9). node_values/node_slopes:
    (n_nodes, m) at nodes 0, h, 2h, ...; returns (f, df) at r, shape (len(r), m)."""
    k = np.floor(r / h).astype(np.int64)
    f0, f1, d0, d1 = node_values[k], node_values[k + 1], node_slopes[k], node_slopes[k + 1]
    t = ((r - k * h) / h)[:, None]
    t2, t3 = t * t, t * t * t
    f = ((2 * t3 - 3 * t2 + 1) * f0 + (t3 - 2 * t2 + t) * h * d0 + (-2 * t3 + 3 * t2) * f1
         + (t3 - t2) * h * d1)
    df = ((6 * t2 - 6 * t) * (f0 - f1) / h + (3 * t2 - 4 * t + 1) * d0 + (3 * t2 - 2 * t) * d1)
    return f, df


@dataclass
class RadialFit:
    """Least-squares coefficients (m functions x K) of targets in one bond's PACE basis, with
    the measured max abs errors of what pyace evaluates (value, slope) on [r_min, rcut]."""
    coefficients: np.ndarray
    max_error: np.ndarray          # per function
    max_slope_error: np.ndarray    # per function, per Å


def fit_bond(target, name, lam, rcut, dcut, K, r_min, delta, slope_weight=0.3, n_fit=None,
             n_check=20000):
    """Fit the functions target(r) -> (f (n, m), df (n, m)) on [r_min, rcut] as Σ_k c_k g_k.

    Rows: values and slope_weight·slopes (Å) at n_fit points clustered towards both ends (four
    per basis function, 800 at least); columns scaled to unit norm and tiny singular values cut, so
    the coefficients stay bounded although g_k live on [0, rcut]. The error is measured on
    n_check random points of [r_min, rcut) through pyace's Hermite tables of spacing
    h = rcut / int(rcut / delta)."""
    n_fit = n_fit or max(800, 8 * K)
    r = r_min + (rcut - r_min) * 0.5 * (1 - np.cos(np.linspace(0, np.pi, n_fit)))
    r = r[r < rcut]
    f, df = target(r)
    g, dg = pace_basis(name, lam, rcut, dcut, K, r)
    M = np.vstack([g, slope_weight * dg])
    B = np.vstack([f, slope_weight * df])
    col = np.linalg.norm(M, axis=0)
    col[col == 0] = 1.0
    coef = np.linalg.lstsq(M / col, B, rcond=1e-13)[0] / col[:, None]     # (K, m)
    h = rcut / int(rcut / delta)
    rc = np.random.default_rng(0).uniform(r_min, rcut, n_check)
    rc = rc[rc < rcut - h]                  # the last interval ends at rcut, where pyace gives 0
    k0 = int(np.floor(rc.min() / h))
    nodes = np.arange(k0, int(np.floor(rc.max() / h)) + 2) * h
    gn, dgn = pace_basis(name, lam, rcut, dcut, K, nodes)
    fit_v, fit_d = hermite_as_pace(gn @ coef, dgn @ coef, h, rc - k0 * h)
    tv, td = target(rc)
    return RadialFit(coef.T.copy(), np.abs(fit_v - tv).max(axis=0), np.abs(fit_d - td).max(axis=0))
