"""Hyperparameter selection on a validation split, reusing one assembly of each split.

Prior, solver, weights and E0 do not change the design matrix, so candidates that differ only in
those are fitted on a training system assembled once (or on its :class:`streaming.GroupFactors`)
and scored on the rows of a validation system assembled once.

Errors: energy per atom (eV/atom), force components (eV/Å), virial per atom (eV/atom).
"""
from __future__ import annotations

import json
import math

import numpy as np
import scipy.linalg

from .. import assembly, priors, solvers, streaming
from ..data import Config
from ..error_tables import kind_errors


def row_errors(system: assembly.LsqSystem, configs: list[Config], theta: np.ndarray,
               y: np.ndarray | None = None) -> dict:
    """RMSE/MAE of E (eV/atom), F (eV/Å), V (eV/atom) from assembled rows and parameters θ."""
    y = system.y if y is None else y
    r = system.A @ theta - y
    natoms = np.array([c.natoms for c in configs], dtype=float)
    return kind_errors(r, system.kind, natoms[system.config])


def _system_factors(model, train: list[Config], train_sys: assembly.LsqSystem, E0s: list[dict]):
    """Row count and per group (config_type, kind, R_g, (Q_gᵀ y_g) per E0, ‖y_g‖² per E0) of an
    assembled training system."""
    Yall = np.stack([assembly.with_E0(train_sys, train, model.E0, E0) for E0 in E0s])
    groups, scale = assembly.row_groups(train_sys, train)
    factors = []
    for ct, kind, rows in groups:
        A = np.array(train_sys.A[rows], order="F", copy=True)
        for a in range(0, A.shape[0], 4096):
            A[a:a + 4096] *= scale[rows[a:a + 4096], None]
        Y = Yall[:, rows] * scale[rows][None, :]
        QtY, R = scipy.linalg.qr_multiply(A, Y, mode="right", overwrite_a=True)
        del A
        factors.append((ct, kind, R, QtY, (Y ** 2).sum(axis=1)))
    return train_sys.shape[0], factors


def _reduced_factors(model, gf: streaming.GroupFactors, E0s: list[dict]):
    """The same per-group factors from :class:`streaming.GroupFactors` (built under ``model.E0``):
    E0 is a combination α of their target columns, ‖y_g‖² = ‖Q_gᵀY_gα‖² + αᵀS_gα."""
    elements = list(model.basis.elements)
    alphas = [streaming.e0_alpha(elements, model.E0, E0) for E0 in E0s]
    factors = []
    for ct, kind in gf.labels:
        R, QtY, S, _ = gf.factor((ct, kind))
        qty = np.stack([QtY @ a for a in alphas])
        factors.append((ct, "EFV".index(kind), R, qty, np.array([q @ q + a @ S @ a for q, a in zip(qty, alphas)])))
    return factors


def evaluate_candidates(model, train: list[Config], validation: list[Config],
                        train_sys: assembly.LsqSystem, val_sys: assembly.LsqSystem,
                        candidates: list[dict], weights: dict, seed: int = 0, log=print,
                        key=None) -> list[dict]:
    """Fit each candidate ``{"prior": ..., "solver": ..., "E0": {el: eV} | None, "weights": {...} | None}``
    on ``train_sys`` and score it on ``val_sys``. Systems must have been assembled with ``model.E0``;
    ``train_sys`` may also be the :class:`streaming.GroupFactors` of the training configurations;
    a candidate without "weights" uses ``weights``.

    Weights only scale rows, and every row of one (config_type, kind) group is scaled by the same
    factor under any weight set. So each group's weight-free rows are factorised once, A_g = Q_g·R_g;
    a candidate stacks c_g·R_g (c_g its weight for the group), divides by its prior's column scales
    (W·A·P⁻¹ has the same singular values and Uᵀ(Wy) as the stack [c_g·R_g·P⁻¹], with targets
    [c_g·Q_gᵀy_g]) and E0 only changes the targets: each (weights, prior) pair costs one SVD of a
    matrix with about as many rows as parameters, shared by consecutive candidates that differ only in E0.

    Ranked by ``key(result)`` (smallest first); default: the weighted validation RMSE under the
    candidate's own weights (the fit's objective; comparable only among candidates with equal weights).
    """
    E0s = []
    for cand in candidates:
        E0 = cand.get("E0") or dict(model.E0)
        if E0 not in E0s:
            E0s.append(E0)
    if isinstance(train_sys, streaming.GroupFactors):       # reduced (streaming / Dask) training factors
        n, factors = train_sys.total_rows, _reduced_factors(model, train_sys, E0s)
    else:
        n, factors = _system_factors(model, train, train_sys, E0s)
    if n < model.length_basis:
        raise ValueError("selection needs at least as many training observations as parameters")
    val_groups, val_scale = assembly.row_groups(val_sys, validation)
    results = []
    svds = {}           # (weights, prior) -> (group factors, prior scales, SVD): E0 only moves targets
    for cand in candidates:
        E0 = cand.get("E0") or dict(model.E0)
        k = E0s.index(E0)
        cw = cand.get("weights") or weights
        tag = json.dumps([cw, cand.get("prior")], sort_keys=True, default=str)
        if tag not in svds:
            c = [assembly.group_factor(ct, kind, cw) for ct, kind, *_ in factors]
            gamma = priors.make_prior(model.basis_labels, cand.get("prior"))
            Rs = np.vstack([ci * f[2] for ci, f in zip(c, factors)])
            svds = {tag: (c, gamma, scipy.linalg.svd(Rs / gamma[None, :], full_matrices=False))}
            del Rs
        c, gamma, (Ur, sv, Vt) = svds[tag]
        bs = np.concatenate([ci * f[3][k] for ci, f in zip(c, factors)])
        yy = float(sum(ci ** 2 * f[4][k] for ci, f in zip(c, factors)))
        f = solvers.SVDFactors(s=sv, Vt=Vt, b=Ur.T @ bs, yy=yy, n_obs=n)
        sol = solvers.solve_from_svd(cand.get("solver", "blr"), f, what="selection")
        theta = sol.coef / gamma
        yv = assembly.with_E0(val_sys, validation, model.E0, E0)
        wv = val_scale.copy()
        for ct, kind, rows in val_groups:
            wv[rows] *= assembly.group_factor(ct, kind, cw)
        errs = row_errors(val_sys, validation, theta, yv)
        loss = float(math.sqrt(np.mean((wv * (val_sys.A @ theta - yv)) ** 2)))
        res = {"candidate": cand, "validation": errs, "weighted_rmse": loss,
               "solver_info": {k2: v for k2, v in sol.info.items() if isinstance(v, (int, float, str))}}
        results.append(res)
        if log:
            e, f_ = errs["mae"]["E"], errs["mae"]["F"]
            log(f"  {cand}: validation MAE E {e * 1e3:.3f} meV/atom, F {f_:.4f} eV/Å; weighted RMSE {loss:.5g}")
    return sorted(results, key=key or (lambda r: r["weighted_rmse"]))
