"""Radial part of the .yace export (construction-time numpy): our radial functions written as
Σ_k c_k g_k(r) in a PACE radial basis, fitted by least squares, with the error measured.

Our radials are natural cubic splines in the Agnesi coordinate y(r) times an envelope; the PACE
bases (yace-format.md §4) are Chebyshev polynomials of a fixed map x(r) on [0, rcut]. No PACE basis
holds our functions exactly, so each is fitted on [r_min, rcut] (values and slopes) and the error
of what pyace / LAMMPS will evaluate -- the fitted sum, tabulated on their grid of spacing
deltaSplineBins and interpolated with cubic Hermite polynomials -- is measured on a fine grid.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from numba import njit

from ..kernels.radial import agnesi, mb_radials, pair_envelope, spline_eval_one, spline_interval
from .radial_basis import basis_functions


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


# ---- PACE radial bases (yace-format.md §4): radial_basis's, in the fits' layout ------------------
def pace_basis(name: str, lam: float, rcut: float, dcut: float, K: int, r):
    """g_k(r) and dg_k/dr, k = 0..K-1, shape (len(r), K): `radial_basis.basis_functions`
    transposed, and zero for r >= rcut (pyace evaluates nothing there)."""
    r = np.asarray(r, dtype=float)
    g, dg = basis_functions(name, r, K, lam, rcut, dcut)
    inside = (r < rcut)[:, None]
    return np.where(inside, g.T, 0.0), np.where(inside, dg.T, 0.0)


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
