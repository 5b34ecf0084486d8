"""Orthonormal polynomials on [-1, 1] and their natural cubic splines (ace-spec §1.5, §1.11)."""
from __future__ import annotations

import numpy as np
from scipy.interpolate import CubicSpline
from scipy.special import eval_jacobi, eval_legendre, gammaln


def jacobi_orthonormal(n_max: int, y, alpha: float = 4.0, beta: float = 4.0) -> np.ndarray:
    """P_n^(α,β)(y)/sqrt(h_n) for n = 0..n_max-1, shape (len(y), n_max); L²-orthonormal with weight
    (1-y)^α (1+y)^β, positive leading coefficient (as P4ML's jacobi_basis(normalize=true))."""
    y = np.atleast_1d(np.asarray(y, dtype=float))
    out = np.empty((y.size, n_max))
    for n in range(n_max):
        log_h = ((alpha + beta + 1) * np.log(2.0) - np.log(2 * n + alpha + beta + 1)
                 + gammaln(n + alpha + 1) + gammaln(n + beta + 1)
                 - gammaln(n + alpha + beta + 1) - gammaln(n + 1))
        out[:, n] = eval_jacobi(n, alpha, beta, y) * np.exp(-0.5 * log_h)
    return out


def legendre_orthonormal(n_max: int, y) -> np.ndarray:
    """sqrt((2n+1)/2) P_n(y) for n = 0..n_max-1, shape (len(y), n_max)."""
    y = np.atleast_1d(np.asarray(y, dtype=float))
    return np.stack([np.sqrt((2 * n + 1) / 2.0) * eval_legendre(n, y) for n in range(n_max)], axis=1)


def spline_nodes(n_nodes: int) -> np.ndarray:
    """Uniform nodes on [-1, 1] (upstream's default is 100)."""
    return np.linspace(-1.0, 1.0, n_nodes)


def natural_spline_coefficients(values: np.ndarray) -> np.ndarray:
    """Natural cubic spline through values sampled on uniform nodes of [-1, 1].

    values: (n_nodes, ...) -> coefficients (n_nodes-1, 4, ...) of the local form
    c0 t³ + c1 t² + c2 t + c3 with t = y - y_k on interval k (scipy's PPoly layout, transposed).
    This is upstream's Interpolations.jl `Cubic(Line(OnGrid()))` interpolant.
    """
    values = np.asarray(values, dtype=float)
    nodes = spline_nodes(values.shape[0])
    spline = CubicSpline(nodes, values, axis=0, bc_type="natural")
    return np.ascontiguousarray(np.moveaxis(spline.c, 0, 1))
