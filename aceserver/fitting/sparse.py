"""Sparse solvers on the reduced least-squares system: ASP (lasso homotopy) and ARD.

Both work on the triangular factor R (r × m) and Qᵀy of the weighted, prior-scaled system
Ã = diag(w)·A·P⁻¹, ỹ = w∘y (the streaming factors of :mod:`.streaming`, or the QR of a dense
system): ÃᵀÃ = RᵀR, Ãᵀỹ = RᵀQᵀỹ and ‖Ãc̃ − ỹ‖² = ‖Rc̃ − Qᵀỹ‖² + ρ with ρ = min‖Ãc − ỹ‖² the
least-squares residual, so every quantity either method needs comes from (R, Qᵀỹ, ρ, N) and memory
stays O(m²). The smoothness prior enters as the column scaling P⁻¹ (the caller's c = c̃/γ): the lasso
penalty on c̃ is Σ_k γ_k |c_k|, and ARD's starting precisions and pruning threshold act on c̃.

* ASP (ACEfit's ``ASP``, active-set pursuit): the homotopy of min_c̃ ½‖Ãc̃ − ỹ‖² + λ‖c̃‖₁ from
  λ = max|Ãᵀỹ| (empty model) down, one knot per event (a function enters, or leaves when its
  coefficient crosses zero), stopped at ``max_active`` active functions, ``min_lambda`` or
  ``max_steps`` knots. The active columns R_A are kept as a QR factorisation (R_A = Q_A T_A, extended by
  classical Gram–Schmidt with reorthogonalisation, shrunk by Givens rotations), so the direction solves T_AᵀT_A d = sign never
  square the condition number. A knot is chosen by ACEfit's rules: ``final``, ``{"bysize": n}``
  (the best knot with at most n functions) or ``{"byerror": q}`` (the first knot whose error is
  within q times the smallest), the error being the validation residual when a validation system is
  given, else the training residual. ``tsvd``: each of ``nstore`` evenly spaced knots is refitted on
  its active columns by the truncated SVD (the validation set choosing the truncation), as ACEfit's
  ``tsvd = true``.
* ARD (automatic relevance determination; MacKay's fixed-point updates, in the order of
  scikit-learn's ``ARDRegression``): c̃_k ~ N(0, 1/λ_k), noise precision α, Gamma(1e-6, 1e-6)
  hyperpriors; each iteration Σ = (diag λ + α RᵀR)⁻¹ on the kept functions, μ = αΣRᵀQᵀỹ,
  γ_k = 1 − λ_k Σ_kk, λ_k = (γ_k + 2λ₁)/(μ_k² + 2λ₂), α = (N − Σγ + 2α₁)/(‖Ãμ − ỹ‖² + 2α₂);
  functions with λ_k ≥ ``threshold_lambda`` are pruned (set to zero). Start: λ = 1, α = N/‖ỹ‖²
  (scikit-learn: 1/var(ỹ); the same for centred targets).

Units: those of the system (c̃ in prior-scaled units; the caller maps back with c = c̃/γ).
"""
from __future__ import annotations

import math

import numpy as np
import scipy.linalg


# ---------------------------------------------------------------------------------------------
# lasso homotopy


class LassoPath:
    """Knots of a lasso homotopy: λ, the active indices and their coefficients at each knot."""

    def __init__(self, lambdas, active, coefs, events):
        self.lambdas = np.asarray(lambdas, dtype=float)
        self.active = active          # list of int arrays
        self.coefs = coefs            # list of float arrays (same lengths)
        self.events = events          # list of ("add" | "drop", index)

    def __len__(self):
        return len(self.lambdas)

    def dense(self, i: int, m: int) -> np.ndarray:
        c = np.zeros(m)
        c[self.active[i]] = self.coefs[i]
        return c

    def sizes(self) -> np.ndarray:
        return np.array([len(a) for a in self.active], dtype=np.int64)


def lasso_homotopy(R: np.ndarray, qty: np.ndarray, max_active: int | None = None, min_lambda: float = 0.0,
                   max_steps: int | None = None, dependent_rtol: float = 1e-10) -> LassoPath:
    """The lasso path of min_c ½‖Rc − qty‖² + λ‖c‖₁ (the same as for any (A, y) with AᵀA = RᵀR,
    Aᵀy = Rᵀqty). Knot 0 is λ_max with the first function entering (coefficient 0). A column whose
    part orthogonal to the active ones is below ``dependent_rtol`` of its norm is numerically
    dependent on them and never enters. Stops at ``max_active`` functions (default min(r, m)),
    λ ≤ ``min_lambda``, or ``max_steps`` knots (default 8·max_active)."""
    R = np.asarray(R, dtype=float)
    qty = np.asarray(qty, dtype=float)
    r, m = R.shape
    if qty.shape != (r,):
        raise ValueError(f"Qᵀy of shape {qty.shape} for a factor of shape {R.shape}")
    kmax = min(r, m) if max_active is None else min(int(max_active), r, m)
    if kmax < 1:
        raise ValueError("max_active must be at least 1")
    max_steps = 8 * kmax if max_steps is None else int(max_steps)
    colnorm = np.sqrt(np.einsum("ij,ij->j", R, R))
    Q = np.zeros((r, kmax))                 # orthonormal basis of the active columns (in order)
    T = np.zeros((kmax, kmax))              # R_A = Q T
    active: list[int] = []
    sign = np.zeros(kmax)
    beta = np.zeros(kmax)
    in_active = np.zeros(m, dtype=bool)
    excluded = colnorm == 0.0
    c = R.T @ qty
    lambdas, act_out, coef_out, events = [], [], [], []

    def orth(x):
        k = len(active)
        Qk = Q[:, :k]
        w = Qk.T @ x
        x = x - Qk @ w
        w2 = Qk.T @ x                       # second pass: orthogonality to working precision
        return x - Qk @ w2, w + w2

    def add(j, s):
        k = len(active)
        x, w = orth(R[:, j])
        t = float(np.linalg.norm(x))
        if not t > dependent_rtol * colnorm[j]:
            excluded[j] = True
            return False
        Q[:, k] = x / t
        T[:k, k] = w
        T[k, k] = t
        T[k, :k] = 0.0
        active.append(j)
        sign[k] = s
        beta[k] = 0.0
        in_active[j] = True
        return True

    def remove(pos):
        """Drop active column ``pos`` from R_A = Q T by Givens rotations (O(r·k), not a new QR)."""
        k = len(active)
        q, t = scipy.linalg.qr_delete(Q[:, :k], T[:k, :k], pos, 1, which="col", check_finite=False)
        Q[:, :k - 1], T[:k - 1, :k - 1] = q[:, :k - 1], t[:k - 1]    # k = r: scipy returns the full Q

    free = ~excluded
    if not free.any():
        raise ValueError("all columns of the system are zero")
    j = int(np.argmax(np.where(free, np.abs(c), -1.0)))
    lam = float(abs(c[j]))
    add(j, math.copysign(1.0, c[j]))
    lambdas.append(lam)
    act_out.append(np.array(active, dtype=np.int64))
    coef_out.append(beta[:1].copy())
    events.append(("add", j))
    last_dropped, dropped_sign = -1, 0.0
    while len(lambdas) < max_steps and lam > min_lambda and active:
        k = len(active)
        full = k >= kmax
        Tk = T[:k, :k]
        d = scipy.linalg.solve_triangular(Tk, scipy.linalg.solve_triangular(Tk, sign[:k], trans="T", check_finite=False),
                                          check_finite=False)
        a = R.T @ (Q[:, :k] @ (Tk @ d))     # change of the correlations per unit decrease of λ
        cand = ~(in_active | excluded)
        with np.errstate(divide="ignore", invalid="ignore"):
            g1 = (lam - c) / (1.0 - a)      # c_j reaches +λ
            g2 = (lam + c) / (1.0 + a)      # c_j reaches −λ
        g1[~(g1 > 0) | ~cand] = np.inf
        g2[~(g2 > 0) | ~cand] = np.inf
        if last_dropped >= 0:               # a function that just left sits at c = ±λ: it may come
            (g1 if dropped_sign > 0 else g2)[last_dropped] = np.inf   # back only at the other sign
        gmin = np.minimum(g1, g2)
        j = int(np.argmin(gmin))
        g_add = float(gmin[j])
        with np.errstate(divide="ignore", invalid="ignore"):
            gd = -beta[:k] / d              # an active coefficient crosses zero
        gd[~(gd > 0)] = np.inf
        kd = int(np.argmin(gd))
        g_drop = float(gd[kd])
        g = min(g_add, g_drop, lam - min_lambda)
        beta[:k] += g * d
        lam -= g
        last_dropped = -1
        if g == g_drop:
            jd = active[kd]
            keep = [i for i in range(k) if i != kd]
            dropped_sign = sign[kd]
            remove(kd)
            active[:] = [active[i] for i in keep]
            sign[:k - 1], beta[:k - 1] = sign[keep], beta[keep]
            in_active[jd] = False
            last_dropped = jd
            events.append(("drop", jd))
        elif g == g_add and not full:
            if not add(j, 1.0 if g1[j] <= g2[j] else -1.0):
                k = len(active)
                c = R.T @ (qty - Q[:, :k] @ (T[:k, :k] @ beta[:k]))
                continue
            events.append(("add", j))
        else:
            events.append(("end", -1))      # λ reached min_lambda, or a function would exceed max_active
        k = len(active)
        c = R.T @ (qty - Q[:, :k] @ (T[:k, :k] @ beta[:k]))   # recomputed, not updated: no drift
        lambdas.append(lam)
        act_out.append(np.array(active, dtype=np.int64))
        coef_out.append(beta[:k].copy())
        if events[-1][0] == "end":
            break
    return LassoPath(lambdas, act_out, coef_out, events)


def _path_sq_errors(path: LassoPath, R, qty, offset: float) -> np.ndarray:
    """‖R c_i − qty‖² + offset at each knot (c_i sparse)."""
    return np.array([float(np.sum((R[:, a] @ v - qty) ** 2)) + offset for a, v in zip(path.active, path.coefs)])


def _parse_select(select) -> tuple[str, float]:
    if select in ("final", None):
        return "final", 0.0
    if isinstance(select, dict) and len(select) == 1:
        (kind, p), = select.items()
        if kind == "byerror" and float(p) >= 1.0:
            return kind, float(p)
        if kind == "bysize" and int(p) >= 1:
            return kind, float(int(p))
    raise ValueError(f"select must be 'final', {{byerror: q}} (q >= 1) or {{bysize: n}} (n >= 1), not {select!r}")


def asp_select(sq_errors: np.ndarray, sizes: np.ndarray, select) -> int:
    """ACEfit's ``asp_select``: the index of the chosen knot. ``select``: "final", {"byerror": q}
    (the first knot whose error is at most q times the smallest) or {"bysize": n} (among the knots
    before the first with more than n functions, the first with the smallest error)."""
    kind, p = _parse_select(select)
    err = np.sqrt(np.maximum(sq_errors, 0.0))
    if kind == "final":
        return len(err) - 1
    q, last = p, len(err)
    if kind == "bysize":
        over = np.flatnonzero(sizes > p)
        last = int(over[0]) if over.size else len(err)
        if last == 0:
            raise ValueError(f"no knot of the path has at most {int(p)} functions")
        q = 1.0
    best = float(np.min(err[:last]))
    return int(np.flatnonzero(err[:last] <= q * best)[0])


def solve_asp(R, qty, resid: float = 0.0, validation=None, select="final", max_active: int | None = None,
              min_lambda: float = 0.0, max_steps: int | None = None, nstore: int = 100,
              refit=None) -> tuple[np.ndarray, dict]:
    """ASP on a reduced system (R, Qᵀỹ, ρ = ``resid``); returns (c̃, info). ``validation =
    (R_v, Q_vᵀỹ_v, ρ_v)``, reduced the same way (or the validation rows themselves with ρ_v = 0),
    measures the knots' errors for ``select`` (else the training residual does). ``refit(R_a, qty,
    R_va, qty_v, ρ_v) -> coefficients``: ACEfit's ``tsvd`` post-processing of ``nstore`` knots (the
    caller passes the truncated SVD)."""
    _parse_select(select)
    R = np.asarray(R, dtype=float)
    qty = np.asarray(qty, dtype=float)
    m = R.shape[1]
    path = lasso_homotopy(R, qty, max_active=max_active, min_lambda=min_lambda, max_steps=max_steps)
    q = len(path)
    if refit is not None:                         # ACEfit: nstore evenly spaced knots, each refitted
        idx = np.unique(np.round(np.append(np.arange(0, q, max(1.0, q / int(nstore))), q - 1)).astype(int))
        coefs = []
        for i in idx:
            a = path.active[i]
            Av = yv = None
            off = 0.0
            if validation is not None:
                Av, yv, off = validation[0][:, a], validation[1], validation[2]
            coefs.append(np.asarray(refit(R[:, a], qty, Av, yv, off), dtype=float))
        path = LassoPath(path.lambdas[idx], [path.active[i] for i in idx], coefs, [path.events[i] for i in idx])
    if validation is not None:
        sq = _path_sq_errors(path, validation[0], validation[1], float(validation[2]))
        on, has_err = "validation", True
    else:
        has_err = _parse_select(select)[0] != "final"
        sq = _path_sq_errors(path, R, qty, float(resid)) if has_err else np.zeros(len(path))
        on = "training"
    i = asp_select(sq, path.sizes(), select)
    coef = path.dense(i, m)
    sizes = path.sizes()
    info = {"solver": "asp", "select": select if isinstance(select, str) else dict(select),
            "n_active": int(np.count_nonzero(coef)), "n_params": int(m), "lambda": float(path.lambdas[i]),
            "knot": int(i), "n_knots": int(len(path)), "chosen_on": on, "tsvd": refit is not None,
            "max_active": int(sizes.max()), "residual": float(np.sqrt(sq[i])) if has_err else None}
    show = np.unique(np.linspace(0, len(path) - 1, min(len(path), 50)).round().astype(int))
    info["path"] = {"knot": show.tolist(), "n_active": sizes[show].tolist(), "lambda": path.lambdas[show].tolist(),
                    "residual": np.sqrt(sq[show]).tolist() if has_err else None}   # ≤ 50 knots, for plots
    return coef, info


# ---------------------------------------------------------------------------------------------
# ARD


def _posterior(G, keep, lam, alpha):
    """Σ = (diag λ + α G)⁻¹ on the kept functions (Cholesky; eigendecomposition when that fails)."""
    H = alpha * G[np.ix_(keep, keep)]
    H[np.diag_indices_from(H)] += lam[keep]
    try:
        L = scipy.linalg.cholesky(H, lower=True, check_finite=False)
        Li = scipy.linalg.solve_triangular(L, np.eye(len(H)), lower=True, check_finite=False)
        return Li.T @ Li
    except np.linalg.LinAlgError:
        return scipy.linalg.pinvh(H)


def solve_ard(R, qty, resid: float = 0.0, n_obs: int | None = None, max_iter: int = 300, tol: float = 1e-3,
              alpha_1: float = 1e-6, alpha_2: float = 1e-6, lambda_1: float = 1e-6, lambda_2: float = 1e-6,
              threshold_lambda: float = 1e4) -> tuple[np.ndarray, dict]:
    """ARD on a reduced system of ``n_obs`` rows (R, Qᵀỹ, least-squares residual ``resid``); returns
    (c̃, info); see the module doc. Stops when Σ|Δμ| < ``tol`` or after ``max_iter`` iterations, then recomputes μ with
    the final precisions (as scikit-learn)."""
    R = np.asarray(R, dtype=float)
    qty = np.asarray(qty, dtype=float)
    m = R.shape[1]
    n = R.shape[0] if n_obs is None else int(n_obs)
    G = R.T @ R
    b = R.T @ qty
    yy = float(resid) + float(qty @ qty)
    alpha = n / (yy + np.finfo(float).eps * n) if yy > 0 else 1.0 / np.finfo(float).eps
    lam = np.ones(m)
    keep = np.ones(m, dtype=bool)
    coef = np.zeros(m)
    coef_old = None
    it = 0
    converged = False
    for it in range(int(max_iter)):
        kidx = np.flatnonzero(keep)
        S = _posterior(G, kidx, lam, alpha)
        coef[:] = 0.0
        coef[kidx] = alpha * (S @ b[kidx])
        r = R[:, kidx] @ coef[kidx] - qty
        sse = float(r @ r) + float(resid)
        gamma = 1.0 - lam[kidx] * np.diag(S)
        lam[kidx] = (gamma + 2 * lambda_1) / (coef[kidx] ** 2 + 2 * lambda_2)
        alpha = (n - gamma.sum() + 2 * alpha_1) / (sse + 2 * alpha_2)
        keep = lam < threshold_lambda
        coef[~keep] = 0.0
        if it > 0 and float(np.sum(np.abs(coef_old - coef))) < tol:
            converged = True
            break
        coef_old = coef.copy()
        if not keep.any():
            break
    if keep.any():
        kidx = np.flatnonzero(keep)
        S = _posterior(G, kidx, lam, alpha)
        coef[:] = 0.0
        coef[kidx] = alpha * (S @ b[kidx])
    return coef, {
        "solver": "ard", "n_active": int(np.count_nonzero(coef)), "n_params": int(m),
        "iterations": int(it + 1), "converged": bool(converged), "noise_precision": float(alpha),
        "sigmae_sq": float(1.0 / alpha), "threshold_lambda": float(threshold_lambda), "tol": float(tol)}


__all__ = ["LassoPath", "lasso_homotopy", "asp_select", "solve_asp", "solve_ard"]
