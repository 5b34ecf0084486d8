"""First-order perturbation bounds for comparing two least-squares fits of the same problem.

Two backward-stable solvers (Householder QR, SVD, the streaming QR tree in any order) each return
the exact solution of a problem whose matrix and targets lie within η (normwise, relative) of the
given A and b. We take η = √m·ε, m the number of columns: the size Householder QR's backward error
has in practice (Higham, Accuracy and Stability of Numerical Algorithms, 2nd ed., §19.3; the
worst-case bound grows like m·n·ε and is not approached in practice). Two such solutions differ by at most
twice the first-order change of one, for x (Higham Thm 20.1) and for the fitted values ŷ = Ax:

    ‖δx‖ / ‖x‖ ≤ η κ (2 + (κ + 1) ‖r‖ / (‖A‖ ‖x‖))
    ‖δŷ‖       ≤ η (‖b‖ + ‖A‖ ‖x‖ + κ ‖r‖)          (δŷ = P(δb − δA x) + (A⁺)ᵀ δAᵀ r)

κ = σ_max/σ_min, r = b − Ax. Ridge (and BLR's posterior mean) is the least-squares problem of
[A; λI] x ≈ [b; 0], so κ_λ = √((σ_max² + λ²)/(σ_min² + λ²)) and r includes −λx. Truncated SVD
keeps the k largest singular values; its kept subspace turns by at most η σ_1/(σ_k − σ_{k+1})
(Wedin's sin θ theorem), so κ there is σ_1/σ_k times the gap factor σ_k/(σ_k − σ_{k+1}).

These bounds are what a different CPU, BLAS build or thread count (a different summation order)
may change; a bug (a wrong weight, column or target) moves the answer by far more.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from aceserver.fitting import assembly

EPS = np.finfo(float).eps


@dataclass
class Bounds:
    kappa: float         # condition number the bounds use
    eta: float           # backward error of one solution (relative, normwise)
    x_rel: float         # bound on ‖x₁ − x₂‖ / ‖x‖
    fitted_rel: float    # bound on ‖A x₁ − A x₂‖ / ‖A x‖


def lsq_bounds(A, b, x, lam: float = 0.0, rtol: float | None = None, extra_resid_sq: float = 0.0) -> Bounds:
    """Bounds for two backward-stable solutions of min ‖Ax − b‖² + λ²‖x‖², ``x`` one of them; with
    ``rtol`` the truncated-SVD problem that keeps σ > rtol·σ_1. ``extra_resid_sq``: residual that
    (A, b) do not show (a reduced system R, Qᵀb leaves out ‖b‖² − ‖Qᵀb‖²)."""
    A, b, x = np.asarray(A, float), np.asarray(b, float), np.asarray(x, float)
    s = np.linalg.svd(A, compute_uv=False)
    if rtol is not None:
        k = int(np.sum(s > rtol * s[0]))
        gap = s[k - 1] / (s[k - 1] - s[k]) if k < s.size else 1.0
        kappa = s[0] / s[k - 1] * gap
    else:
        kappa = float(np.sqrt((s[0] ** 2 + lam ** 2) / (s[-1] ** 2 + lam ** 2)))
    eta = np.sqrt(A.shape[1]) * EPS
    fitted = A @ x
    r_sq = float(np.sum((b - fitted) ** 2)) + extra_resid_sq + lam ** 2 * float(x @ x)
    r = np.sqrt(r_sq)
    norm_A = float(np.sqrt(s[0] ** 2 + lam ** 2))
    norm_b = float(np.sqrt(b @ b + extra_resid_sq))
    nx = float(np.linalg.norm(x))
    x_rel = 2 * eta * kappa * (2 + (kappa + 1) * r / (norm_A * nx))
    fitted_rel = 2 * eta * (norm_b + norm_A * nx + kappa * r) / float(np.linalg.norm(fitted))
    return Bounds(kappa=float(kappa), eta=float(eta), x_rel=float(x_rel), fitted_rel=float(fitted_rel))


def scaled_system(system, configs, weights, gamma, rows=None, cols=None, y=None):
    """The matrix and targets a fit solves, diag(w)·A·diag(1/γ) and w∘y (aceserver.fitting.assembly),
    optionally of a subset of rows and columns (a cross-validation fold, a nested basis)."""
    w = assembly.row_weights(system, configs, weights)
    y = system.y if y is None else y
    rows = slice(None) if rows is None else rows
    A = system.A[rows] if cols is None else system.A[rows][:, cols]
    return A * w[rows, None] / gamma[None, :], w[rows] * y[rows]


def prediction_bound(A_val, gamma, c, c_rel) -> float:
    """Bound on the change of any validation RMSE or MAE (per row, or per atom for energies) when the
    prior-scaled parameters c move by at most c_rel·‖c‖: every row's prediction moves by at most
    ‖A_val·diag(1/γ)‖₂ ‖δc‖, and an RMSE or MAE by no more than its largest row."""
    return float(np.linalg.norm(np.asarray(A_val) / gamma[None, :], 2) * c_rel * np.linalg.norm(c))


def hyper_rel(info_a: dict, info_b: dict) -> float:
    """Relative difference of BLR's λ² = σ_e²/σ₀² between two fits (0 for other solvers): it moves
    c by at most that fraction of ‖c‖ (‖(AᵀA + λ²)⁻¹λ²c‖ ≤ ‖c‖)."""
    if "sigma0_sq" not in info_a:
        return 0.0
    la = info_a["sigmae_sq"] / info_a["sigma0_sq"]
    return abs(info_b["sigmae_sq"] / info_b["sigma0_sq"] / la - 1)


def solver_bounds(A, b, c, info: dict) -> Bounds:
    """lsq_bounds for the problem the solver that reported ``info`` solved (BLR: ridge with
    λ² = σ_e²/σ₀²; truncated SVD: its rtol, or the truncation it chose; QR: λ or none)."""
    name = info.get("solver")
    if name == "blr":
        return lsq_bounds(A, b, c, lam=float(np.sqrt(info["sigmae_sq"] / info["sigma0_sq"])))
    if name == "tsvd":
        s = np.linalg.svd(A, compute_uv=False)
        k = int(info["truncation"])
        rtol = (0.5 * (s[k - 1] + s[k]) if k < s.size else 0.5 * s[-1]) / s[0]   # keeps exactly k
        return lsq_bounds(A, b, c, rtol=rtol)
    return lsq_bounds(A, b, c, lam=float(info.get("lambda") or 0.0))


def perturbation_estimate(A, fn, samples: int = 3, seed: int = 0) -> float:
    """How far a backward error of η = √m ε moves the number fn(A), where no closed form is at hand:
    the largest change under ``samples`` random perturbations of spectral norm η‖A‖₂ (statistical
    condition estimation, Kenney & Laub, SIAM J. Sci. Comput. 15 (1994) 36). A random direction
    underestimates the worst case by a modest factor; callers multiply by a stated constant."""
    A = np.asarray(A, float)
    rng = np.random.default_rng(seed)
    eta = np.sqrt(A.shape[1]) * EPS
    norm_A = np.linalg.norm(A, 2)
    f0 = fn(A)
    worst = 0.0
    for _ in range(samples):
        E = rng.standard_normal(A.shape)
        E *= eta * norm_A / np.linalg.norm(E, 2)
        worst = max(worst, abs(fn(A + E) - f0))
    return float(worst)
