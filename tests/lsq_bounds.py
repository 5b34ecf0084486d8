"""First-order perturbation bounds for comparing two least-squares fits of the same problem.

Two backward-stable solvers (Householder QR, SVD, the streaming QR tree in any order) each return
the exact solution of a problem whose matrix and targets lie within η (normwise, relative) of the
given A and b. We take η = √m·ε, m the number of columns: the size Householder QR's backward error
has in practice (Higham, Accuracy and Stability of Numerical Algorithms, 2nd ed., §19.3; the
worst-case bound grows like m·n·ε and is never approached). Two such solutions differ by at most
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


def rel(a, b) -> float:
    """‖a − b‖ / ‖b‖ (2-norm)."""
    return float(np.linalg.norm(np.asarray(a) - np.asarray(b)) / np.linalg.norm(np.asarray(b)))
