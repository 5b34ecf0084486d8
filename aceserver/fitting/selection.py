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
    and score it on ``val_sys``. Systems must have been assembled with ``model.E0``."""
    results = []
    for cand in candidates:
        E0 = cand.get("E0") or dict(model.E0)
        yt = assembly.with_E0(train_sys, train, model.E0, E0)
        yv = assembly.with_E0(val_sys, validation, model.E0, E0)
        wt = assembly.row_weights(train_sys, train, weights)
        wv = assembly.row_weights(val_sys, validation, weights)
        gamma = priors.make_prior(model.basis_labels, cand.get("prior"))
        A = np.array(train_sys.A, order="F", copy=True)
        for a in range(0, A.shape[0], 4096):
            A[a:a + 4096] *= wt[a:a + 4096, None] / gamma[None, :]
        sol = solvers.solve(cand.get("solver", "blr"), A, wt * yt, seed=seed, overwrite_a=True)
        del A
        theta = sol.coef / gamma
        errs = row_errors(val_sys, validation, theta, yv)
        loss = float(math.sqrt(np.mean((wv * (val_sys.A @ theta - yv)) ** 2)))
        res = {"candidate": cand, "validation": errs, "weighted_rmse": loss,
               "solver_info": {k: v for k, v in sol.info.items() if isinstance(v, (int, float, str))}}
        results.append(res)
        if log:
            e, f = errs["mae"]["E"], errs["mae"]["F"]
            log(f"  {cand}: validation MAE E {e * 1e3:.3f} meV/atom, F {f:.4f} eV/Å; weighted RMSE {loss:.5g}")
    return sorted(results, key=lambda r: r["weighted_rmse"])
