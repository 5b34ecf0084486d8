"""Hyperparameter selection reusing one assembly: on a validation split, or by K-fold cross-validation.

Prior, solver, weights and E0 do not change the design matrix, and a smaller nested basis is a subset
of its columns, so candidates that differ only in those are compared on systems assembled once.

* :func:`evaluate_candidates`: fit on a training system, score on a validation system's rows.
* K-fold CV (:func:`kfold`, :class:`BlockFactors`, :func:`cross_validate`): folds are sets of
  configurations (seeded, stratified by config_type); per-fold errors and their mean and spread;
  :func:`one_standard_error` picks the simplest candidate within one standard error of the best
  (optionally paired: the standard error of each candidate's per-fold excess over the best);
  :func:`learning_curve` gives CV error against training-set size.

Errors: energy per atom (eV/atom), force components (eV/Å), virial per atom (eV/atom).
"""
from __future__ import annotations

import json
import math

import numpy as np

from . import assembly, priors, solvers, streaming
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


def _row_groups(system: assembly.LsqSystem, configs: list[Config]):
    """Rows grouped by (config_type, kind), whose weights any weight set scales by one common factor;
    returns ``[(config_type, kind, rows)]`` and each row's weight-free scale (1/√N for E and V, 1 for F)."""
    types = [c.config_type for c in configs]
    names = sorted(set(types))
    tcode = np.array([names.index(t) for t in types], dtype=np.int64)[system.config]
    key = tcode * 3 + system.kind.astype(np.int64)
    groups = [(names[k // 3], int(k % 3), np.flatnonzero(key == k)) for k in np.unique(key)]
    sq = np.sqrt(np.array([c.natoms for c in configs], dtype=float))
    scale = np.where(system.kind == assembly.KIND_F, 1.0, 1.0 / sq[system.config])
    return groups, scale


def _group_factor(config_type: str, kind: int, weights: dict) -> float:
    from .data import config_weights, normalise_weights
    return float(config_weights(config_type, normalise_weights(weights))["EFV"[kind]])


def _system_factors(model, train: list[Config], train_sys: assembly.LsqSystem, E0s: list[dict]):
    """Row count and per group (config_type, kind, R_g, (Q_gᵀ y_g) per E0, ‖y_g‖² per E0) of an
    assembled training system."""
    import scipy.linalg
    Yall = np.stack([assembly.with_E0(train_sys, train, model.E0, E0) for E0 in E0s])
    groups, scale = _row_groups(train_sys, train)
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
    import scipy.linalg

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
    val_groups, val_scale = _row_groups(val_sys, validation)
    results = []
    svds = {}           # (weights, prior) -> (group factors, prior scales, SVD): E0 only moves targets
    for cand in candidates:
        E0 = cand.get("E0") or dict(model.E0)
        k = E0s.index(E0)
        cw = cand.get("weights") or weights
        tag = json.dumps([cw, cand.get("prior")], sort_keys=True, default=str)
        if tag not in svds:
            c = [_group_factor(ct, kind, cw) for ct, kind, *_ in factors]
            gamma = priors.make_prior(model.basis_labels, cand.get("prior"))
            Rs = np.vstack([ci * f[2] for ci, f in zip(c, factors)])
            svds = {tag: (c, gamma, scipy.linalg.svd(Rs / gamma[None, :], full_matrices=False))}
            del Rs
        c, gamma, (Ur, sv, Vt) = svds[tag]
        bs = np.concatenate([ci * f[3][k] for ci, f in zip(c, factors)])
        yy = float(sum(ci ** 2 * f[4][k] for ci, f in zip(c, factors)))
        spec = cand.get("solver", "blr")
        spec = {"name": spec} if isinstance(spec, str) else dict(spec)
        f = solvers.SVDFactors(s=sv, Vt=Vt, b=Ur.T @ bs, yy=yy, n_obs=n)
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
        wv = val_scale.copy()
        for ct, kind, rows in val_groups:
            wv[rows] *= _group_factor(ct, kind, cw)
        errs = row_errors(val_sys, validation, theta, yv)
        loss = float(math.sqrt(np.mean((wv * (val_sys.A @ theta - yv)) ** 2)))
        res = {"candidate": cand, "validation": errs, "weighted_rmse": loss,
               "solver_info": {k2: v for k2, v in sol.info.items() if isinstance(v, (int, float, str))}}
        results.append(res)
        if log:
            e, f_ = errs["mae"]["E"], errs["mae"]["F"]
            log(f"  {cand}: validation MAE E {e * 1e3:.3f} meV/atom, F {f_:.4f} eV/Å; weighted RMSE {loss:.5g}")
    return sorted(results, key=key or (lambda r: r["weighted_rmse"]))


# ---------------------------------------------------------------------------------------------
# K-fold cross-validation over configurations, reusing one assembly
#
# A fold is a set of configurations. The assembled rows of each (block of configurations, row group)
# are reduced once to a triangular factor R and Qᵀ[y, n_el...] (n_el: the count of element el per
# configuration on energy rows, so that any E0 is a linear combination of the stored columns). The
# training system of a fold is then the stack of the other blocks' factors, reduced again; weights
# scale whole groups, a prior scales columns, and a nested smaller basis is a leading block of
# columns (its R is the leading block of R), so every candidate costs one SVD of a matrix with about
# as many rows as parameters and the design matrix is never re-assembled.


def kfold(configs: list[Config], k: int = 5, seed: int = 0, stratify: bool = True) -> list[np.ndarray]:
    """``k`` disjoint held-out sets of configuration indices (seeded). Stratified by config_type:
    each type's configurations are shuffled and dealt round-robin, continuing where the previous type
    stopped, so every fold gets its share of every type and fold sizes differ by at most one.
    Single-atom configurations (isolated atoms, which fix E0) are never held out."""
    k = int(k)
    multi = [i for i, c in enumerate(configs) if c.natoms > 1]
    if k < 2 or k > len(multi):
        raise ValueError(f"k-fold cross-validation needs 2 <= k <= {len(multi)} (multi-atom configurations), "
                         f"got k = {k}")
    rng = np.random.default_rng(seed)
    types = sorted({configs[i].config_type for i in multi}) if stratify else [None]
    out, pos = [[] for _ in range(k)], int(rng.integers(k))
    for t in types:
        idx = np.array([i for i in multi if t is None or configs[i].config_type == t])
        for i in idx[rng.permutation(len(idx))]:
            out[pos % k].append(int(i))
            pos += 1
    return [np.array(sorted(f), dtype=np.int64) for f in out]


def nested_columns(small, big) -> np.ndarray:
    """Indices into ``big``'s parameters of ``small``'s parameters, where ``small``'s basis is a subset
    of ``big``'s (same elements, cutoff, transforms; smaller or equal degrees/order): a many-body
    function is identified by its (n, l) multiset and its place among the couplings of that multiset,
    a pair function by (centre species, polynomial, neighbour species). Raises ValueError otherwise."""
    bs, bb = small.basis, big.basis
    same = ("elements", "rcut", "r0", "rin", "wL", "transform", "pair_transform", "pair_envelope", "n_nodes")
    diff = [k for k in same if bs.settings.get(k) != bb.settings.get(k)]
    if diff:
        raise ValueError(f"bases differ in {diff}: not nested")

    def mb_keys(b):
        seen, keys = {}, []
        for lab in b.b_labels:
            key = tuple(sorted(map(tuple, lab)))
            seen[key] = seen.get(key, -1) + 1
            keys.append((key, seen[key]))
        return keys

    big_mb = {k: j for j, k in enumerate(mb_keys(bb))}
    nz = bb.nz
    cols = []
    for z in range(nz):
        for key in mb_keys(bs):
            if key not in big_mb:
                raise ValueError(f"many-body function {key} of the smaller basis is not in the larger one")
            cols.append(z * bb.n_b + big_mb[key])
    if bs.n_pair > bb.n_pair:
        raise ValueError("the smaller basis has more pair functions than the larger one")
    for z in range(nz):
        for j in range(bs.n_pair):
            q, zj = divmod(j, nz)
            cols.append(nz * bb.n_b + z * bb.n_pair + q * nz + zj)
    return np.array(cols, dtype=np.int64)


def prefix_order(models: list, big) -> tuple[np.ndarray, list[np.ndarray]]:
    """A column order of ``big`` in which each of ``models`` (nested, smallest first) is a leading
    block: returns (order, [positions in ``order`` of each model's parameters, in its own order]),
    the list ending with ``big``'s own (the inverse of ``order``), so that ``order[where[b]]``
    are the columns of ``big`` holding model b's parameters in model b's order."""
    order, pos_of, where = [], {}, []
    for m in list(models) + [big]:
        cols = nested_columns(m, big) if m is not big else np.arange(big.length_basis)
        for c in cols:
            if c not in pos_of:
                pos_of[int(c)] = len(order)
                order.append(int(c))
        if m is not big:
            where.append(np.array([pos_of[int(c)] for c in cols], dtype=np.int64))
        if len(order) != len(set(order)) or (m is not big and len(pos_of) != len(cols)):
            raise ValueError("the bases are not nested (each must contain the previous)")
    order = np.array(order, dtype=np.int64)
    where.append(np.argsort(order))
    return order, where


class BlockFactors:
    """Per (block of configurations, row group) triangular factors of an assembled system.

    ``blocks``: disjoint arrays of configuration indices (e.g. the folds, plus the configurations
    that are always trained on). ``columns``: the design-matrix columns to use, in this order (default:
    all); any leading block of them can later be fitted on its own. Rows are weight-free (1/√N for E
    and V rows, 1 for F), grouped by (config_type, kind) as weights are.
    """

    def __init__(self, system: assembly.LsqSystem, configs: list[Config], blocks: list[np.ndarray],
                 elements: list[str], E0: dict, columns: np.ndarray | None = None, log=None):
        import scipy.linalg
        from ase.data import chemical_symbols

        self.elements, self.E0 = list(elements), dict(E0)
        self.columns = np.arange(system.shape[1]) if columns is None else np.asarray(columns)
        L = len(self.columns)
        groups, scale = _row_groups(system, configs)
        self.groups = [(ct, kind) for ct, kind, _ in groups]
        counts = np.array([[sum(chemical_symbols[int(z)] == el for z in c.numbers) for el in self.elements]
                           for c in configs], dtype=float)
        rhs = np.zeros((system.shape[0], 1 + len(self.elements)))
        rhs[:, 0] = system.y
        e = system.kind == assembly.KIND_E
        rhs[e, 1:] = counts[system.config[e]]
        block_of = np.full(len(configs), -1)
        for b, idx in enumerate(blocks):
            if (block_of[idx] >= 0).any():
                raise ValueError("blocks overlap")
            block_of[idx] = b
        self.nrows = np.zeros((len(blocks), len(groups)), dtype=np.int64)
        self.factors = {}      # (block, group) -> (R (r, L), QtY (m, r), YtY (m, m))
        self.held = {}         # block -> (A rows (n_b, L) in column order, rhs rows, kind, natoms per row)
        row_block = block_of[system.config]
        natoms = np.array([c.natoms for c in configs], dtype=float)
        for b in range(len(blocks)):
            rows_b = np.flatnonzero(row_block == b)
            self.held[b] = (rows_b, system.kind[rows_b], natoms[system.config[rows_b]])
            for g, (_, _, rows_g) in enumerate(groups):
                rows = np.intersect1d(rows_b, rows_g, assume_unique=True)
                self.nrows[b, g] = len(rows)
                if not len(rows):
                    continue
                A = np.asfortranarray(system.A[np.ix_(rows, self.columns)])
                A *= scale[rows, None]
                Y = rhs[rows] * scale[rows, None]
                YQ, R = scipy.linalg.qr_multiply(A, Y.T, mode="right", overwrite_a=True)
                self.factors[b, g] = (R, YQ, Y.T @ Y)
                del A
            if log:
                log(f"  block {b}: {len(rows_b)} rows factorised")
        self.system, self.rhs = system, rhs
        self.block_configs = [np.asarray(b) for b in blocks]

    def combine(self, blocks, ncols: int | None = None, base: dict | None = None) -> dict:
        """The factors of the union of ``blocks`` (and of ``base``, an earlier result of combine)
        per group, for the leading ``ncols`` columns."""
        import scipy.linalg
        L = len(self.columns) if ncols is None else int(ncols)
        out = {}
        for g in range(len(self.groups)):
            parts = [self.factors[b, g] + (int(self.nrows[b, g]),) for b in blocks if (b, g) in self.factors]
            if base is not None and g in base:
                parts.append(base[g])
            if not parts:
                continue
            R = np.vstack([p[0][:L, :L] for p in parts])
            YQ = np.hstack([p[1][:, :L] for p in parts])
            YtY = sum(p[2] for p in parts)
            if len(parts) > 1:     # re-triangularise: leading columns must stay a leading block
                YQ, R = scipy.linalg.qr_multiply(np.asfortranarray(R), YQ, mode="right", overwrite_a=True)
            out[g] = (R, YQ, YtY, int(sum(p[3] for p in parts)))
        return out

    def rhs_weights(self, E0: dict | None) -> np.ndarray:
        """Coefficients of the stored target columns giving the targets under ``E0``."""
        E0 = self.E0 if E0 is None else E0
        return np.array([1.0] + [self.E0[el] - float(E0[el]) for el in self.elements])

    def solve(self, combined: dict, ncols: int, prior_gamma: np.ndarray, weights: dict,
              E0s: list, solver=None, committee_size: int = 0, seed: int = 0) -> list:
        """Fit the leading ``ncols`` columns for each E0 in ``E0s`` (one SVD for all);
        returns [(θ (ncols,), committee (K, ncols) or None, solver info)]."""
        import scipy.linalg
        gamma = np.asarray(prior_gamma, dtype=float)[:ncols]
        c = {g: _group_factor(*self.groups[g], weights) for g in combined}
        stack = np.vstack([c[g] * combined[g][0][:ncols, :ncols] for g in combined]) / gamma[None, :]
        Ur, sv, Vt = scipy.linalg.svd(stack, full_matrices=False, lapack_driver="gesdd")
        del stack
        n = int(sum(combined[g][3] for g in combined))
        spec = {"name": "blr"} if solver is None else ({"name": solver} if isinstance(solver, str) else dict(solver))
        name = str(spec.pop("name", "blr")).lower()
        out = []
        for E0 in E0s:
            wv = self.rhs_weights(E0)
            bs = np.concatenate([c[g] * (wv @ combined[g][1][:, :ncols]) for g in combined])
            yy = float(sum(c[g] ** 2 * (wv @ combined[g][2] @ wv) for g in combined))
            f = solvers.SVDFactors(s=sv, Vt=Vt, b=Ur.T @ bs, yy=yy, n_obs=n)
            if name == "blr":
                sol = solvers.solve_blr(None, None, committee_size=committee_size, seed=seed, factors=f,
                                        var0_floor=float(spec.get("sig_0_floor", 1e-4)) ** 2,
                                        vare_floor=float(spec.get("sig_e_floor", 1e-4)) ** 2)
            elif name == "tsvd":
                sol = solvers.solve_tsvd(None, None, rtol=float(spec.get("rtol", 1e-9)), factors=f)
            else:
                raise ValueError(f"cross-validation supports the SVD-based solvers blr and tsvd, not {name!r}")
            comm = None if sol.committee is None else sol.committee / gamma[None, :]
            out.append((sol.coef / gamma, comm, sol.info))
        return out

    def block_errors(self, blocks, theta: np.ndarray, E0: dict | None) -> dict:
        """MAE/RMSE of E (eV/atom), F (eV/Å), V (eV/atom) on the rows of ``blocks`` for parameters θ
        on the leading len(θ) columns, under E0."""
        wv = self.rhs_weights(E0)
        res, kinds, nat = [], [], []
        cols = self.columns[:len(theta)]
        for b in blocks:
            rows, kind, natoms = self.held[b]
            for a in range(0, len(rows), 8192):       # chunked: no full-size copy of the rows
                r = rows[a:a + 8192]
                res.append(self.system.A[np.ix_(r, cols)] @ theta - self.rhs[r] @ wv)
            kinds.append(kind)
            nat.append(natoms)
        r, kind, natoms = np.concatenate(res), np.concatenate(kinds), np.concatenate(nat)
        out = {"rmse": {}, "mae": {}}
        for k, code in (("E", assembly.KIND_E), ("F", assembly.KIND_F), ("V", assembly.KIND_V)):
            sel = kind == code
            rk = r[sel] / natoms[sel] if code != assembly.KIND_F else r[sel]
            out["rmse"][k] = float(np.sqrt(np.mean(rk ** 2))) if sel.any() else None
            out["mae"][k] = float(np.mean(np.abs(rk))) if sel.any() else None
        return out


def cross_validate(factors: BlockFactors, folds: list[int], train_always: list[int], candidates: list[dict],
                   labels, sizes: dict, log=print, on_result=None) -> list[dict]:
    """K-fold CV of ``candidates`` ``{"basis": name, "prior": spec, "weights": {...}, "E0": {el: eV},
    "solver": spec}`` on ``factors``: fold k (a block) is held out, the other folds and
    ``train_always`` are fitted. ``sizes[name]``: the basis's number of leading columns; ``labels``:
    basis labels of the columns in ``factors`` order (for the prior). Candidates that differ only in
    E0 share each fold's SVD. Returns per candidate its per-fold errors and their mean and spread."""
    groups: dict = {}
    for i, c in enumerate(candidates):
        tag = json.dumps([c["basis"], c.get("prior"), c.get("weights"), c.get("solver")], sort_keys=True, default=str)
        groups.setdefault(tag, []).append(i)
    combined = {}
    results = [None] * len(candidates)
    for tag, idx in groups.items():
        c0 = candidates[idx[0]]
        ncols = int(sizes[c0["basis"]])
        gamma = priors.make_prior(labels[:ncols], c0.get("prior"))
        per = [[] for _ in idx]
        for k in folds:
            if k not in combined:
                combined[k] = factors.combine([b for b in folds if b != k] + list(train_always))
            fits = factors.solve(combined[k], ncols, gamma, normalise(c0.get("weights")),
                                 [candidates[i].get("E0") for i in idx], c0.get("solver"))
            for j, (theta, _, info) in enumerate(fits):
                e = factors.block_errors([k], theta, candidates[idx[j]].get("E0"))
                e["solver_info"] = {a: v for a, v in info.items() if isinstance(v, (int, float, str))}
                per[j].append(e)
        for j, i in enumerate(idx):
            results[i] = summarise(candidates[i], per[j], ncols)
            if on_result:
                on_result(results[i])
            if log:
                s = results[i]
                log(f"  {candidates[i]}: CV MAE E {s['mae_mean']['E'] * 1e3:.3f} ± {s['mae_std']['E'] * 1e3:.3f} "
                    f"meV/atom, F {s['mae_mean']['F']:.4f} ± {s['mae_std']['F']:.4f} eV/Å")
    return results


def normalise(weights):
    from .data import normalise_weights
    return normalise_weights(weights)


def summarise(candidate: dict, per_fold: list[dict], n_basis: int) -> dict:
    """Mean and standard deviation over folds of each error (None where a kind has no rows)."""
    out = {"candidate": candidate, "n_basis": int(n_basis), "folds": per_fold}
    for stat in ("mae", "rmse"):
        mean, std = {}, {}
        for k in ("E", "F", "V"):
            v = [f[stat][k] for f in per_fold if f[stat][k] is not None]
            mean[k] = float(np.mean(v)) if v else None
            std[k] = float(np.std(v, ddof=1)) if len(v) > 1 else None
        out[f"{stat}_mean"], out[f"{stat}_std"] = mean, std
    return out


def fold_ratios(result: dict, targets: tuple[float, float]) -> np.ndarray:
    """Per fold (E MAE_k / E target, F MAE_k / F target), shape (folds, 2)."""
    et, ft = targets
    return np.array([(f["mae"]["E"] / et, f["mae"]["F"] / ft) for f in result["folds"]])


def fold_scores(result: dict, targets: tuple[float, float], combine: str = "sum") -> np.ndarray:
    """Per fold s_k = E MAE_k / E target + F MAE_k / F target (``combine="sum"``), or the larger of
    the two ratios (``"max"``)."""
    ratios = fold_ratios(result, targets)
    if combine == "sum":
        return ratios.sum(axis=1)
    if combine == "max":
        return ratios.max(axis=1)
    raise ValueError(f"combine must be 'sum' or 'max', not {combine!r}")


def target_score(result: dict, targets: tuple[float, float], combine: str = "sum") -> tuple[float, float]:
    """Mean of :func:`fold_scores` and its standard error; ``combine="worse"``: the larger of the
    two mean ratios (mean E MAE / E target, mean F MAE / F target), which is at most 1 exactly when
    both mean CV errors meet their targets, with that ratio's standard error."""
    if combine == "worse":
        r = fold_ratios(result, targets)
        k = int(np.argmax(r.mean(axis=0)))
        s = r[:, k]
    else:
        s = fold_scores(result, targets, combine)
    return float(s.mean()), float(s.std(ddof=1) / math.sqrt(len(s))) if len(s) > 1 else 0.0


def one_standard_error(results: list[dict], score, fold_score=None) -> dict:
    """The one-standard-error rule: among candidates whose mean score is within one standard error
    of the best mean score, the one with the fewest basis functions, then the lowest mean score.
    ``score(result) -> (mean, standard error)``, smaller is better.

    With ``fold_score(result) -> per-fold scores`` (shape (folds,) or (folds, m)) the rule is
    paired: a candidate qualifies when its mean excess over the best, fold by fold, is within one
    standard error of that excess, for every one of the m columns (e.g. energy and force ratios).
    All candidates are scored on the same folds, and fold-to-fold differences (an easy fold is
    easy for every candidate) would otherwise widen the band and admit clearly worse models."""
    scored = [(score(r), r) for r in results]
    (best_mean, best_se), best = min(scored, key=lambda t: t[0][0])
    if fold_score is None:
        ok = [(r["n_basis"], m, r) for (m, _), r in scored if m <= best_mean + best_se]
    else:
        ref = np.asarray(fold_score(best))
        ok = []
        for (m, _), r in scored:
            d = (np.asarray(fold_score(r)) - ref).reshape(len(ref), -1)
            se = d.std(axis=0, ddof=1) / math.sqrt(len(d)) if len(d) > 1 else np.zeros(d.shape[1])
            if np.all(d.mean(axis=0) <= se):
                ok.append((r["n_basis"], m, r))
    return min(ok, key=lambda t: (t[0], t[1]))[2]


def learning_curve(factors: BlockFactors, parts: list[list[int]], train_always: list[int], candidate: dict,
                   labels, ncols: int, log=print) -> list[dict]:
    """CV error against training-set size: ``parts[f]`` are the blocks of fold f, in a seeded order;
    with fold k held out, the model is fitted on the first j blocks of every other fold (and
    ``train_always``), j = 1..len(parts[f]). Returns [{"fraction", "n_train_configs", per-fold errors
    and their mean and spread}] (one SVD per fold and size; the factors grow incrementally)."""
    S = len(parts[0])
    gamma = priors.make_prior(labels[:ncols], candidate.get("prior"))
    curve = [[] for _ in range(S)]
    ntrain = [[] for _ in range(S)]
    for k in range(len(parts)):
        cur = factors.combine(list(train_always), ncols)
        for j in range(S):
            new = [parts[f][j] for f in range(len(parts)) if f != k]
            cur = factors.combine(new, ncols, base=cur)
            (theta, _, _), = factors.solve(cur, ncols, gamma, normalise(candidate.get("weights")),
                                           [candidate.get("E0")], candidate.get("solver"))
            curve[j].append(factors.block_errors(parts[k], theta, candidate.get("E0")))
            ntrain[j].append(sum(len(factors.block_configs[b]) for f in range(len(parts)) if f != k
                                 for b in parts[f][:j + 1]) + sum(len(factors.block_configs[b]) for b in train_always))
    out = []
    for j in range(S):
        r = summarise(candidate, curve[j], ncols)
        r.update(fraction=(j + 1) / S, n_train_configs=float(np.mean(ntrain[j])))
        out.append(r)
        if log:
            log(f"  learning curve {(j + 1) / S:.2f} ({r['n_train_configs']:.0f} configs): CV MAE E "
                f"{r['mae_mean']['E'] * 1e3:.3f} meV/atom, F {r['mae_mean']['F']:.4f} eV/Å")
    return out


def split_blocks(folds: list[np.ndarray], parts: int, seed: int = 0) -> list[list[np.ndarray]]:
    """Each fold split into ``parts`` nearly equal, seeded random subsets (for learning curves)."""
    rng = np.random.default_rng(seed)
    return [[np.sort(p) for p in np.array_split(f[rng.permutation(len(f))], parts)] for f in folds]
