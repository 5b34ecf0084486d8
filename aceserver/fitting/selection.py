"""Hyperparameter selection on a validation split, reusing one assembly.

Prior, solver, weights and E0 do not change the design matrix, so candidates that differ only in
those are compared on systems assembled once. Each candidate is fitted on the training system and
scored on the validation system's rows: per-atom energy and force-component RMSE/MAE, and the
weighted validation residual (the fit's own objective) used for ranking.
"""
from __future__ import annotations

import math

import numpy as np

from . import assembly, priors, solvers
from .data import Config


def row_errors(system: assembly.LsqSystem, configs: list[Config], theta: np.ndarray,
               y: np.ndarray | None = None) -> dict:
    """RMSE/MAE of E (eV/atom), F (eV/Å), V (eV/atom) from assembled rows and parameters θ."""
    y = system.y if y is None else y
    r = system.A @ theta - y
    natoms = np.array([c.natoms for c in configs], dtype=float)
    out = {"rmse": {}, "mae": {}}
    for k, code, per_atom in (("E", assembly.KIND_E, True), ("F", assembly.KIND_F, False),
                              ("V", assembly.KIND_V, True)):
        sel = system.kind == code
        if not sel.any():
            out["rmse"][k] = out["mae"][k] = None
            continue
        rk = r[sel] / natoms[system.config[sel]] if per_atom else r[sel]
        out["rmse"][k] = float(np.sqrt(np.mean(rk ** 2)))
        out["mae"][k] = float(np.mean(np.abs(rk)))
    return out


def evaluate_candidates(model, train: list[Config], validation: list[Config],
                        train_sys: assembly.LsqSystem, val_sys: assembly.LsqSystem,
                        candidates: list[dict], weights: dict, seed: int = 0, log=print) -> list[dict]:
    """Fit each candidate ``{"prior": ..., "solver": ..., "E0": {el: eV} | None}`` on ``train_sys``
    and score it on ``val_sys``. Systems must have been assembled with ``model.E0``.

    One QR factorisation of the weighted design matrix W·A = Q·R serves every candidate with an
    SVD-based solver (blr, tsvd): the prior only rescales columns, W·A·P⁻¹ = Q·(R·P⁻¹), and E0 only
    changes the targets, so each candidate costs an SVD of the small triangle R·P⁻¹.
    """
    import scipy.linalg

    wt = assembly.row_weights(train_sys, train, weights)
    wv = assembly.row_weights(val_sys, validation, weights)
    E0s = []
    for cand in candidates:
        E0 = cand.get("E0") or dict(model.E0)
        if E0 not in E0s:
            E0s.append(E0)
    Y = np.stack([wt * assembly.with_E0(train_sys, train, model.E0, E0) for E0 in E0s])
    A = np.array(train_sys.A, order="F", copy=True)
    for a in range(0, A.shape[0], 4096):
        A[a:a + 4096] *= wt[a:a + 4096, None]
    n = A.shape[0]
    if n < A.shape[1]:
        raise ValueError("selection needs at least as many training observations as parameters")
    QtY, R = scipy.linalg.qr_multiply(A, Y, mode="right", overwrite_a=True)   # rows: (Qᵀ y)ᵀ
    del A
    yy = (Y ** 2).sum(axis=1)
    results = []
    for cand in candidates:
        E0 = cand.get("E0") or dict(model.E0)
        k = E0s.index(E0)
        gamma = priors.make_prior(model.basis_labels, cand.get("prior"))
        spec = cand.get("solver", "blr")
        spec = {"name": spec} if isinstance(spec, str) else dict(spec)
        Ur, sv, Vt = scipy.linalg.svd(R / gamma[None, :], full_matrices=False)
        f = solvers.SVDFactors(s=sv, Vt=Vt, b=Ur.T @ QtY[k], yy=float(yy[k]), n_obs=n)
        name = spec.pop("name").lower()
        if name == "blr":
            sol = solvers.solve_blr(None, None, committee_size=0, factors=f, **{
                k2: float(v) ** 2 for k2, v in (("var0_floor", spec.get("sig_0_floor", 1e-4)),
                                                ("vare_floor", spec.get("sig_e_floor", 1e-4)))})
        elif name == "tsvd":
            sol = solvers.solve_tsvd(None, None, rtol=float(spec.get("rtol", 1e-9)), factors=f)
        else:
            raise ValueError(f"selection supports the SVD-based solvers blr and tsvd, not {name!r}")
        theta = sol.coef / gamma
        yv = assembly.with_E0(val_sys, validation, model.E0, E0)
        errs = row_errors(val_sys, validation, theta, yv)
        loss = float(math.sqrt(np.mean((wv * (val_sys.A @ theta - yv)) ** 2)))
        res = {"candidate": cand, "validation": errs, "weighted_rmse": loss,
               "solver_info": {k2: v for k2, v in sol.info.items() if isinstance(v, (int, float, str))}}
        results.append(res)
        if log:
            e, f_ = errs["mae"]["E"], errs["mae"]["F"]
            log(f"  {cand}: validation MAE E {e * 1e3:.3f} meV/atom, F {f_:.4f} eV/Å; weighted RMSE {loss:.5g}")
    return sorted(results, key=lambda r: r["weighted_rmse"])
