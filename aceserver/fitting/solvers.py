"""Linear least-squares solvers on the weighted, prior-scaled system Ã c̃ ≈ ỹ (ace-spec §4.3).

All solvers receive Ã = diag(w)·A·diag(1/γ) and ỹ = w∘y and return c̃ (the caller maps back with
c = c̃/γ). They are deterministic for a given seed.

* ``qr``    Householder QR least squares; λ > 0 solves the augmented system [Ã; λI] c̃ = [ỹ; 0]
            (λ, not √λ, as ACEfit).
* ``blr``   Bayesian linear regression, c̃ ~ N(0, σ₀² I), ỹ = Ãc̃ + ε, ε ~ N(0, σ_e² I); σ₀², σ_e²
            maximise the log evidence computed from the thin SVD Ã = U S Vᵀ (ACEfit's
            ``factorization = :svd``); c̃ is the posterior mean; optionally a committee of K posterior
            draws c̃ + V diag(√covar) Vᵀ ξ, ξ ~ N(0, I).
* ``tsvd``  truncated SVD: keep the k largest singular values; k minimises the residual on a
            validation set when one is given, else k = #{s_i/s_max > rtol}.
* ``rrqr``  rank-revealing (column-pivoted) QR: columns whose |R_ii|/|R_11| ≤ rtol are dropped.
* ``asp``   active-set pursuit (lasso homotopy) and ``ard`` (automatic relevance determination):
            sparse solutions, on the triangular factor of the system (:mod:`.sparse`).

The thin SVD is computed as QR then SVD of the small triangle R, so that U (n_obs × M) is never
stored: only Uᵀỹ is needed.
"""
from __future__ import annotations

import logging
import math
from dataclasses import dataclass, field

import numpy as np
import scipy.linalg
import scipy.optimize

from . import sparse

log = logging.getLogger(__name__)


@dataclass
class Solution:
    coef: np.ndarray                      # c̃, length M
    committee: np.ndarray | None = None   # (K, M) in c̃ coordinates
    info: dict = field(default_factory=dict)


@dataclass
class SVDFactors:
    s: np.ndarray       # (r,) singular values, descending
    Vt: np.ndarray      # (r, M)
    b: np.ndarray       # (r,) Uᵀ y
    yy: float           # ‖y‖²
    n_obs: int
    resid: float | None = None   # ‖y‖² − ‖Uᵀy‖², computed without cancellation where known

    @property
    def residual(self) -> float:
        """‖y‖² − ‖b‖²: ``resid`` when known, else by subtraction (which loses the digits of ‖y‖²
        that the residual does not have, e.g. with large energy targets)."""
        if self.resid is not None:
            return self.resid
        return max(self.yy - float(np.sum(self.b ** 2)), 0.0)

    @property
    def condition_number(self) -> float:
        return float(self.s[0] / self.s[-1]) if self.s.size and self.s[-1] > 0 else math.inf


def qr_reduce(A: np.ndarray, Y: np.ndarray, overwrite_a: bool = False):
    """Householder QR of A (n × m): R (min(n, m) × m), QᵀY (min(n, m) × K) and the Gram matrix
    Zᵀ Z of the rest of QᵀY (the least-squares residuals' Gram matrix, summed from squares rather
    than obtained as YᵀY − (QᵀY)ᵀQᵀY, which cancels). Q is never formed."""
    A = np.asarray(A, dtype=float)
    Y = np.asarray(Y, dtype=float)
    Y = Y.reshape(A.shape[0], -1)
    n, m = A.shape
    r = min(n, m)
    if n == 0:
        return np.zeros((0, m)), np.zeros((0, Y.shape[1])), np.zeros((Y.shape[1], Y.shape[1]))
    (qr, tau), R = scipy.linalg.qr(A, mode="raw", overwrite_a=overwrite_a, check_finite=False)
    Z, _, info = scipy.linalg.lapack.dormqr("L", "T", qr[:, :r], tau, np.array(Y, order="F", copy=True),
                                            max(1, 64 * Y.shape[1]), overwrite_c=1)
    if info != 0:
        raise RuntimeError(f"LAPACK dormqr failed (info {info})")
    rest = Z[r:]
    return R[:r], np.array(Z[:r]), rest.T @ rest       # scipy's R is already upper triangular


def svd_factors(A: np.ndarray, y: np.ndarray, overwrite_a: bool = False) -> SVDFactors:
    """Thin SVD of A (via QR when A is tall) and Uᵀy, without forming U."""
    A = np.asarray(A, dtype=float)
    y = np.asarray(y, dtype=float)
    n, m = A.shape
    resid = None
    if n >= m:
        R, qty, G = qr_reduce(A, y, overwrite_a)
        Ur, s, Vt = scipy.linalg.svd(R, full_matrices=False, lapack_driver="gesdd")
        b = Ur.T @ qty[:, 0]
        resid = float(G[0, 0])
    else:
        U, s, Vt = scipy.linalg.svd(A, full_matrices=False, lapack_driver="gesdd")
        b = U.T @ y
    return SVDFactors(s=s, Vt=Vt, b=b, yy=float(y @ y), n_obs=n, resid=resid)


# ---------------------------------------------------------------------------------------------
# QR


def solve_qr(A, y, lam: float = 0.0, overwrite_a: bool = False) -> Solution:
    A = np.asarray(A, dtype=float)
    y = np.asarray(y, dtype=float)
    n, m = A.shape
    if lam < 0:
        raise ValueError("QR: lambda must be >= 0")
    if lam > 0:
        A = np.vstack([A, lam * np.eye(m)])
        y = np.concatenate([y, np.zeros(m)])
        overwrite_a = True
    elif n < m:
        raise ValueError(f"QR without ridge needs at least as many observations ({n}) as parameters ({m}); "
                         "use lambda > 0, blr or tsvd")
    qty, R = scipy.linalg.qr_multiply(A, y[None, :], mode="right", overwrite_a=overwrite_a)
    qty = qty.ravel()
    d = np.abs(np.diag(R))
    if d.min() <= 1e-14 * d.max():
        log.warning("QR: R is (numerically) singular, min|R_ii|/max|R_ii| = %.2e; the solution is "
                    "ill-determined. Consider lambda > 0, blr, tsvd or rrqr.", d.min() / d.max())
    coef = scipy.linalg.solve_triangular(R, qty, lower=False, check_finite=False)
    s = scipy.linalg.svdvals(R)
    return Solution(coef=coef, info={"solver": "qr", "lambda": lam,
                                     "condition_number": float(s[0] / s[-1]) if s[-1] > 0 else math.inf})


def solve_rrqr(A, y, rtol: float = 1e-12, overwrite_a: bool = False) -> Solution:
    """Column-pivoted QR; drops columns beyond the numerical rank (|R_kk| ≤ rtol |R_11|)."""
    A = np.asarray(A, dtype=float)
    y = np.asarray(y, dtype=float)
    m = A.shape[1]
    Q, R, piv = scipy.linalg.qr(A, mode="economic", pivoting=True, overwrite_a=overwrite_a)
    d = np.abs(np.diag(R))
    rank = int(np.sum(d > rtol * d[0])) if d.size and d[0] > 0 else 0
    coef = np.zeros(m)
    if rank:
        z = scipy.linalg.solve_triangular(R[:rank, :rank], Q[:, :rank].T @ y, lower=False)
        coef[piv[:rank]] = z
    return Solution(coef=coef, info={"solver": "rrqr", "rtol": rtol, "rank": rank, "n_params": m})


# ---------------------------------------------------------------------------------------------
# BLR


def log_evidence(f: SVDFactors, var0: float, vare: float, grad: bool = False):
    """Log marginal likelihood of y under c ~ N(0, var0 I), y = Ac + N(0, vare I).

    log L = Σ_i [-½ b_i²/t_i - ½ log t_i] - (‖y‖² - ‖b‖²)/(2 vare) - ½ (N - r) log vare - N/2 log 2π,
    t_i = var0 s_i² + vare, b = Uᵀy (ACEfit ``bayesian_linear_regression_svd``).
    Returns log L, and with ``grad`` also (∂/∂var0, ∂/∂vare).
    """
    s2 = f.s ** 2
    t = var0 * s2 + vare
    b2 = f.b ** 2
    r = f.s.size
    resid = f.residual
    n = f.n_obs
    val = float(-0.5 * np.sum(b2 / t) - 0.5 * np.sum(np.log(t)) - resid / (2 * vare)
                - 0.5 * (n - r) * math.log(vare) - 0.5 * n * math.log(2 * math.pi))
    if not grad:
        return val
    g0 = float(np.sum(0.5 * b2 * s2 / t ** 2 - 0.5 * s2 / t))
    ge = float(np.sum(0.5 * b2 / t ** 2 - 0.5 / t) + resid / (2 * vare ** 2) - 0.5 * (n - r) / vare)
    return val, (g0, ge)


def maximise_evidence(f: SVDFactors, var0_floor: float = 1e-8, vare_floor: float = 1e-8,
                      start: tuple[float, float] = (1.0, 1.0)) -> tuple[float, float, float]:
    """(var0, vare, log L) at the maximum of the log evidence, optimised over log-variances."""
    lo = np.log([var0_floor, vare_floor])

    def fun(x):
        v0, ve = np.exp(x)
        val, (g0, ge) = log_evidence(f, v0, ve, grad=True)
        return -val, -np.array([g0 * v0, ge * ve])

    best = None
    # start from ACEfit's (1, 1) and from a data-driven guess; keep the better optimum
    yy_per = max(f.yy / max(f.n_obs, 1), 1e-300)
    guesses = [np.log(np.maximum(start, [var0_floor, vare_floor]))]
    s2sum = float(np.sum(f.s ** 2))
    if s2sum > 0:
        guesses.append(np.log(np.maximum([f.yy / s2sum * f.s.size, 1e-2 * yy_per], [var0_floor, vare_floor])))
    for x0 in guesses:
        res = scipy.optimize.minimize(fun, x0, jac=True, method="L-BFGS-B",
                                      bounds=[(lo[0], 60.0), (lo[1], 60.0)],
                                      options={"ftol": 1e-15, "gtol": 1e-10, "maxiter": 2000})
        if best is None or res.fun < best.fun:
            best = res
    x = _newton_polish(fun, best.x, lo)
    v0, ve = np.exp(x)
    return float(v0), float(ve), float(-fun(x)[0])


def _newton_polish(fun, x, lo, steps: int = 20):
    """Newton steps on the 2-D log-variance problem from L-BFGS-B's stopping point, so that the
    optimum does not depend on where the quasi-Newton iteration happened to stop (two factorisations
    of the same system then give the same hyperparameters to rounding). Hessian by central
    differences of the analytic gradient; a step is kept only if it lowers the gradient norm and
    the objective does not rise; bounds are respected."""
    x = np.asarray(x, dtype=float).copy()
    fx, g = fun(x)
    for _ in range(steps):
        if not np.all(np.isfinite(g)) or np.linalg.norm(g) == 0.0:
            break
        h = 1e-5 * np.maximum(1.0, np.abs(x))
        H = np.empty((2, 2))
        for i in range(2):
            e = np.zeros(2)
            e[i] = h[i]
            H[:, i] = (fun(x + e)[1] - fun(x - e)[1]) / (2 * h[i])
        H = 0.5 * (H + H.T)
        try:
            if np.any(np.linalg.eigvalsh(H) <= 0):
                break
            step = np.linalg.solve(H, g)
        except np.linalg.LinAlgError:
            break
        xn = np.clip(x - step, lo, 60.0)
        fn, gn = fun(xn)
        if not (np.isfinite(fn) and fn <= fx + 1e-12 * abs(fx) and np.linalg.norm(gn) < np.linalg.norm(g)):
            break
        x, fx, g = xn, fn, gn
        if np.max(np.abs(step)) < 1e-13:
            break
    return x


def solve_blr(A, y, committee_size: int = 0, seed: int = 0, var0_floor: float = 1e-8,
              vare_floor: float = 1e-8, factors: SVDFactors | None = None,
              overwrite_a: bool = False) -> Solution:
    f = factors if factors is not None else svd_factors(A, y, overwrite_a)
    var0, vare, lml = maximise_evidence(f, var0_floor, vare_floor)
    s2 = f.s ** 2
    t = var0 * s2 + vare
    coef = f.Vt.T @ (var0 * f.s / t * f.b)
    committee = None
    if committee_size:
        covar = 1.0 / (s2 / vare + 1.0 / var0)
        rng = np.random.default_rng(seed)
        xi = rng.standard_normal((int(committee_size), f.Vt.shape[1]))
        committee = coef[None, :] + ((xi @ f.Vt.T) * np.sqrt(covar)[None, :]) @ f.Vt
    return Solution(coef=coef, committee=committee, info={
        "solver": "blr", "sigma0_sq": var0, "sigmae_sq": vare, "log_evidence": lml,
        "effective_parameters": float(np.sum(var0 * s2 / t)),
        "condition_number": f.condition_number, "committee_size": int(committee_size), "seed": seed})


# ---------------------------------------------------------------------------------------------
# truncated SVD


def solve_tsvd(A, y, A_val=None, y_val=None, rtol: float = 1e-9,
               factors: SVDFactors | None = None, overwrite_a: bool = False,
               val_offset: float = 0.0) -> Solution:
    """``val_offset``: a squared residual the validation rows do not show (a reduced validation system
    (R_v, Q_vᵀy_v) leaves out ‖y_v‖² − ‖Q_vᵀy_v‖²); it moves no minimum, only the reported residual."""
    f = factors if factors is not None else svd_factors(A, y, overwrite_a)
    keep = f.s > rtol * f.s[0]
    z = np.where(keep, f.b / np.where(keep, f.s, 1.0), 0.0)   # coefficients in the V basis
    info = {"solver": "tsvd", "rtol": rtol, "condition_number": f.condition_number}
    if A_val is not None and y_val is not None and len(y_val):
        P = (np.asarray(A_val) @ f.Vt.T) * z[None, :]      # validation prediction, term by term
        pred = np.cumsum(P, axis=1)                        # prediction with the first k terms
        res = np.sqrt(np.sum((pred - np.asarray(y_val)[:, None]) ** 2, axis=0) + max(val_offset, 0.0))
        res[~keep] = np.inf
        k = int(np.argmin(res)) + 1
        info.update(truncation=k, validation_residual=float(res[k - 1]), chosen_on="validation")
    else:
        k = int(keep.sum())
        info.update(truncation=k, chosen_on="rtol")
    coef = f.Vt[:k].T @ z[:k]
    info["n_singular_values"] = int(f.s.size)
    return Solution(coef=coef, info=info)


# ---------------------------------------------------------------------------------------------


SOLVERS = ("qr", "blr", "tsvd", "rrqr", "asp", "ard")


def solve_from_svd(spec: dict | str | None, factors: SVDFactors, committee_size: int = 0, seed: int = 0,
                   what: str = "selection") -> Solution:
    """The SVD-based solvers (``blr``, ``tsvd``) on given SVD factors: how selection and
    cross-validation fit each candidate from one shared factorisation. ``spec`` as for :func:`solve`
    (default BLR; its floors ``sig_0_floor``, ``sig_e_floor`` and tsvd's ``rtol`` are read);
    ``what`` names the caller in the error for any other solver."""
    spec = {"name": "blr"} if spec is None else ({"name": spec} if isinstance(spec, str) else dict(spec))
    name = str(spec.pop("name", "blr")).lower()
    if name == "blr":
        return solve_blr(None, None, committee_size=committee_size, seed=seed, factors=factors,
                         var0_floor=float(spec.get("sig_0_floor", 1e-4)) ** 2,
                         vare_floor=float(spec.get("sig_e_floor", 1e-4)) ** 2)
    if name == "tsvd":
        return solve_tsvd(None, None, rtol=float(spec.get("rtol", 1e-9)), factors=factors)
    raise ValueError(f"{what} supports the SVD-based solvers blr and tsvd, not {name!r}")


def solve(spec: dict | str | None, A, y, A_val=None, y_val=None, seed: int = 0,
          overwrite_a: bool = False, reduced: tuple[float, int] | None = None,
          val_offset: float = 0.0) -> Solution:
    """Dispatch on ``spec = {"name": ..., params...}``; default BLR (upstream's default).

    ``overwrite_a`` lets the factorisation destroy A (no copy when A is Fortran-ordered).
    ``reduced = (‖y − Ac_ls‖², n_obs)``: A and y are the triangular factor R and Qᵀy of a larger system
    (see :mod:`aceserver.fitting.streaming`); every solver gives the same answer from them, since
    QR, ridge, column-pivoted QR and the SVD of A are those of R, and BLR's evidence needs only
    the least-squares residual and the row count besides. ``val_offset``: see :func:`solve_tsvd`.
    """
    if spec is None:
        spec = {"name": "blr"}
    if isinstance(spec, str):
        spec = {"name": spec}
    spec = dict(spec)
    name = str(spec.pop("name", "blr")).lower()
    try:
        if name == "qr":
            lam = float(spec.pop("lambda", spec.pop("lam", 0.0)))
            _no_extra(name, spec)
            return solve_qr(A, y, lam=lam, overwrite_a=overwrite_a)
        if name == "blr":
            K = int(spec.pop("committee_size", 0))
            floors = dict(var0_floor=float(spec.pop("sig_0_floor", 1e-4)) ** 2,
                          vare_floor=float(spec.pop("sig_e_floor", 1e-4)) ** 2)
            spec.pop("factorization", None)
            _no_extra(name, spec)
            return solve_blr(A, y, committee_size=K, seed=seed, overwrite_a=overwrite_a,
                             factors=_reduced_factors(A, y, reduced, overwrite_a), **floors)
        if name in ("tsvd", "truncated_svd", "truncatedsvd"):
            rtol = float(spec.pop("rtol", 1e-9))
            _no_extra(name, spec)
            return solve_tsvd(A, y, A_val, y_val, rtol=rtol, overwrite_a=overwrite_a,
                              factors=_reduced_factors(A, y, reduced, overwrite_a), val_offset=val_offset)
        if name == "rrqr":
            rtol = float(spec.pop("rtol", 1e-12))
            _no_extra(name, spec)
            return solve_rrqr(A, y, rtol=rtol, overwrite_a=overwrite_a)
        if name in ("asp", "ard"):
            return _solve_sparse(name, spec, A, y, A_val, y_val, reduced, val_offset, overwrite_a, seed)
    except (TypeError, ValueError) as exc:
        raise ValueError(f"solver {name!r}: {exc}") from None
    raise ValueError(f"unknown solver {name!r}; choose one of {SOLVERS}")


def _triangular(A, y, reduced, overwrite_a):
    """(R, Qᵀy, least-squares residual, rows) of a system, or of an already reduced one."""
    if reduced is not None:
        return np.asarray(A, dtype=float), np.asarray(y, dtype=float), float(reduced[0]), int(reduced[1])
    R, qty, S = qr_reduce(A, y, overwrite_a)
    return R, qty[:, 0], float(S[0, 0]), int(np.shape(A)[0])


def _solve_sparse(name, spec, A, y, A_val, y_val, reduced, val_offset, overwrite_a, seed=0) -> Solution:
    """ASP or ARD (:mod:`.sparse`) from the spec's parameters (ACEfit's names accepted: actMax,
    itnMax); ASP's ``refit: blr`` refits the chosen support by BLR (:func:`blr_on_support`), with
    a committee of ``committee_size`` posterior draws on that support."""
    if name == "asp":
        select = spec.pop("select", {"byerror": 1.0})
        max_active = spec.pop("max_active", spec.pop("actMax", None))
        max_steps = spec.pop("max_steps", spec.pop("itnMax", None))
        kw = dict(select=select, max_active=None if max_active is None else int(max_active),
                  max_steps=None if max_steps is None else int(max_steps),
                  min_lambda=float(spec.pop("min_lambda", 0.0)), nstore=int(spec.pop("nstore", 100)))
        tsvd, rtol = bool(spec.pop("tsvd", False)), float(spec.pop("rtol", 1e-9))
        post = spec.pop("refit", None)
        if post not in (None, "blr"):
            raise ValueError(f"refit must be 'blr' (BLR on the chosen support) or absent, not {post!r}")
        floors = dict(var0_floor=float(spec.pop("sig_0_floor", 1e-4)) ** 2,
                      vare_floor=float(spec.pop("sig_e_floor", 1e-4)) ** 2)
        K = int(spec.pop("committee_size", 0))
        if K and post != "blr":
            raise ValueError("a committee (committee_size) needs refit: blr")
        _no_extra(name, spec)
        R, qty, resid, n = _triangular(A, y, reduced, overwrite_a)
        val = None
        if A_val is not None and y_val is not None and len(y_val):
            val = (np.asarray(A_val, dtype=float), np.asarray(y_val, dtype=float), float(val_offset))
            if reduced is None:     # validation rows reduced too: each knot's error costs O(m·k), not O(n_val·k)
                Rv, qv, Sv = qr_reduce(val[0], val[1])
                val = (Rv, qv[:, 0], float(Sv[0, 0]))
        refit = None if not tsvd else (lambda Ra, q, Rv, qv, off: solve_tsvd(Ra, q, Rv, qv, rtol=rtol,
                                                                           val_offset=off).coef)
        coef, info = sparse.solve_asp(R, qty, resid, validation=val, refit=refit, **kw)
        if post == "blr":
            sol = blr_on_support(R, qty, resid, n, np.flatnonzero(coef), committee_size=K, seed=seed, **floors)
            return Solution(coef=sol.coef, committee=sol.committee,
                            info=dict(info, refit="blr", refit_info=sol.info, committee_size=K))
        return Solution(coef=coef, info=info)
    kw = {k: float(spec.pop(k)) for k in ("tol", "alpha_1", "alpha_2", "lambda_1", "lambda_2", "threshold_lambda")
          if k in spec}
    if "max_iter" in spec:
        kw["max_iter"] = int(spec.pop("max_iter"))
    _no_extra(name, spec)
    R, qty, resid, n = _triangular(A, y, reduced, overwrite_a)
    coef, info = sparse.solve_ard(R, qty, resid, n, **kw)
    return Solution(coef=coef, info=info)


def blr_on_support(R, qty, resid: float, n_obs: int, support: np.ndarray, var0_floor: float = 1e-8,
                   vare_floor: float = 1e-8, committee_size: int = 0, seed: int = 0) -> Solution:
    """BLR on the columns ``support`` of a reduced system (R, Qᵀỹ, least-squares residual ``resid``
    of all columns, ``n_obs`` rows), coefficients zero elsewhere: ASP's ``refit: blr`` (a relaxed
    lasso: the path chooses the support, evidence maximisation removes the lasso's shrinkage). The
    support's own least-squares residual is ``resid`` plus that of Qᵀỹ against R[:, support]
    (summed from squares by :func:`svd_factors`, not by subtraction)."""
    support = np.asarray(support, dtype=np.int64)
    if not len(support):
        raise ValueError("BLR on an empty support")
    f = svd_factors(R[:, support], qty)
    f.resid = float(resid) + (f.residual if f.resid is not None else max(float(qty @ qty - f.b @ f.b), 0.0))
    f.yy, f.n_obs = float(resid) + float(qty @ qty), int(n_obs)
    sol = solve_blr(None, None, factors=f, var0_floor=var0_floor, vare_floor=vare_floor,
                    committee_size=committee_size, seed=seed)
    coef = np.zeros(R.shape[1])
    coef[support] = sol.coef
    committee = None
    if sol.committee is not None:
        committee = np.zeros((len(sol.committee), R.shape[1]))
        committee[:, support] = sol.committee
    return Solution(coef=coef, committee=committee, info=sol.info)


def _reduced_factors(R, qty, reduced, overwrite_a) -> SVDFactors | None:
    """SVD factors of a reduced system: those of R, with the full system's residual and row count."""
    if reduced is None:
        return None
    f = svd_factors(R, qty, overwrite_a)
    f.resid, f.n_obs = float(reduced[0]), int(reduced[1])
    f.yy = f.resid + float(qty @ qty)
    return f


def _no_extra(name, spec):
    if spec:
        raise ValueError(f"unknown parameter(s) {sorted(spec)} for solver {name!r}")
