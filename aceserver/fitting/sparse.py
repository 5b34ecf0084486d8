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
    """Knots of a lasso homotopy: λ, the number of active functions and the event at every knot; the
    active indices and coefficients at the stored knots (``stored[i] = (indices, coefficients)``)."""

    def __init__(self, lambdas, sizes, events, stored):
        self.lambdas = np.asarray(lambdas, dtype=float)
        self.sizes = np.asarray(sizes, dtype=np.int64)
        self.events = events          # list of ("add" | "drop" | "end", index)
        self.stored = stored          # dict knot -> (int array, float array)

    def __len__(self):
        return len(self.lambdas)

    def support(self, i: int) -> np.ndarray:
        return self.stored[i][0]

    def dense(self, i: int, m: int) -> np.ndarray:
        c = np.zeros(m)
        a, v = self.stored[i]
        c[a] = v
        return c


def lasso_homotopy(R: np.ndarray, qty: np.ndarray, max_active: int | None = None, min_lambda: float = 0.0,
                   max_steps: int | None = None, dependent_rtol: float = 1e-10, store=None,
                   on_knot=None) -> LassoPath:
    """The lasso path of min_c ½‖Rc − qty‖² + λ‖c‖₁ (the same as for any (A, y) with AᵀA = RᵀR,
    Aᵀy = Rᵀqty). Knot 0 is λ_max with the first function entering (coefficient 0). A column whose
    part orthogonal to the active ones is below ``dependent_rtol`` of its norm is numerically
    dependent on them and never enters. Stops at ``max_active`` functions (default min(r, m)),
    λ ≤ ``min_lambda``, or ``max_steps`` knots (default 8·max_active). ``store``: the knots whose
    coefficients are kept (default all; a path of s knots holds up to s·max_active numbers, so long
    paths keep a few and are re-run); ``on_knot(i, λ, indices, coefficients)`` sees every knot."""
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
    lambdas, sizes, events, stored = [], [], [], {}

    def knot(lam_):
        k_ = len(active)
        i = len(lambdas)
        lambdas.append(lam_)
        sizes.append(k_)
        if store is None or i in store or on_knot is not None:
            idx, val = np.array(active, dtype=np.int64), beta[:k_].copy()
            if store is None or i in store:
                stored[i] = (idx, val)
            if on_knot is not None:
                on_knot(i, lam_, idx, val)

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
    events.append(("add", j))
    knot(lam)
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
        knot(lam)
        if events[-1][0] == "end":
            break
    return LassoPath(lambdas, sizes, events, stored)


def _sq_error(R, qty, offset, idx, val) -> float:
    """‖R c − qty‖² + offset for c with coefficients ``val`` on columns ``idx`` (c scattered into a
    full vector: one matrix-vector product, no copy of R's columns)."""
    c = np.zeros(R.shape[1])
    c[idx] = val
    r = R @ c - qty
    return float(r @ r) + offset


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
    caller passes the truncated SVD).

    Two passes over the path, so that memory stays O(m·max_active): the first measures every knot's
    error (or, with ``refit``, only the path's length), the second keeps the chosen knot (or the
    ``nstore`` knots to refit). ``select="final"`` without validation needs one pass."""
    kind, _ = _parse_select(select)
    R = np.asarray(R, dtype=float)
    qty = np.asarray(qty, dtype=float)
    m = R.shape[1]
    if validation is not None:
        eR, eq, eo, on = validation[0], validation[1], float(validation[2]), "validation"
    else:
        eR, eq, eo, on = R, qty, float(resid), "training"
    has_err = validation is not None or kind != "final"
    kw = dict(max_active=max_active, min_lambda=min_lambda, max_steps=max_steps)
    if refit is None and not has_err:             # the final knot: one pass, keeping the latest knot
        last: dict = {}
        first = lasso_homotopy(R, qty, store=set(), on_knot=lambda i, lam, idx, val: last.update(idx=idx, val=val),
                               **kw)
        sq, i = np.zeros(len(first)), len(first) - 1
        coef, lam, n_knots, sizes = np.zeros(m), float(first.lambdas[i]), len(first), first.sizes
        coef[last["idx"]] = last["val"]
        lambdas, shown = first.lambdas, np.arange(len(first))
    elif refit is None:
        errs: list = []
        first = lasso_homotopy(R, qty, store=set(), on_knot=(lambda i, lam, idx, val: errs.append(
            _sq_error(eR, eq, eo, idx, val))) if has_err else None, **kw)
        sq = np.array(errs) if has_err else np.zeros(len(first))
        i = asp_select(sq, first.sizes, select)
        path = lasso_homotopy(R, qty, store={i}, **dict(kw, max_steps=i + 1))
        coef, lam, n_knots, sizes = path.dense(i, m), float(path.lambdas[i]), len(first), first.sizes
        lambdas, shown = first.lambdas, np.arange(len(first))
    else:                                         # ACEfit: nstore evenly spaced knots, each refitted
        first = lasso_homotopy(R, qty, store=set(), **kw)
        q = len(first)
        idx = np.unique(np.round(np.append(np.arange(0, q, max(1.0, q / int(nstore))), q - 1)).astype(int))
        path = lasso_homotopy(R, qty, store=set(idx.tolist()), **kw)
        coefs = []
        for k in idx:
            a = path.support(k)
            Av = yv = None
            if validation is not None:
                Av, yv = validation[0][:, a], validation[1]
            coefs.append(np.asarray(refit(R[:, a], qty, Av, yv, eo if validation is not None else 0.0), dtype=float))
        sq = np.array([_sq_error(eR, eq, eo, path.support(k), v) for k, v in zip(idx, coefs)])
        sizes = first.sizes[idx]
        j = asp_select(sq, sizes, select)
        i, coef = int(idx[j]), np.zeros(m)
        coef[path.support(i)] = coefs[j]
        lam, n_knots, lambdas, shown = float(first.lambdas[i]), q, first.lambdas[idx], idx
    info = {"solver": "asp", "select": select if isinstance(select, str) else dict(select),
            "n_active": int(np.count_nonzero(coef)), "n_params": int(m), "lambda": lam, "knot": int(i),
            "n_knots": int(n_knots), "chosen_on": on, "tsvd": refit is not None, "max_active": int(first.sizes.max()),
            "residual": float(np.sqrt(_sq_error(eR, eq, eo, np.flatnonzero(coef), coef[coef != 0])))
            if has_err or refit is not None else None}
    pick = np.unique(np.linspace(0, len(shown) - 1, min(len(shown), 50)).round().astype(int))
    info["path"] = {"knot": shown[pick].tolist(), "n_active": np.asarray(sizes)[pick].tolist(),
                    "lambda": np.asarray(lambdas)[pick].tolist(),
                    "residual": np.sqrt(np.asarray(sq)[pick]).tolist() if has_err or refit is not None else None}
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
