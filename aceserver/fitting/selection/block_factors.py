"""Per (block of configurations, row group) triangular factors of one assembled system, for K-fold
cross-validation and learning curves without re-assembly.

A fold is a set of configurations. The assembled rows of each (block of configurations, row group)
are reduced once to a triangular factor R and Qᵀ[y, n_el...] (n_el: the count of element el per
configuration on energy rows, so that any E0 is a linear combination of the stored columns). The
training system of a fold is then the stack of the other blocks' factors, reduced again; weights
scale whole groups, a prior scales columns, and a nested smaller basis is a leading block of
columns (its R is the leading block of R), so every candidate costs one SVD of a matrix with about
as many rows as parameters (one QR for the sparse solvers ASP and ARD, which work on the triangular
factor) and the design matrix is never re-assembled.

Errors: energy per atom (eV/atom), force components (eV/Å), virial per atom (eV/atom).
"""
from __future__ import annotations

import numpy as np
import scipy.linalg
from ase.data import chemical_symbols

from .. import assembly, solvers
from ..data import Config
from ..error_tables import kind_errors


class BlockFactors:
    """Per (block of configurations, row group) triangular factors of an assembled system.

    ``blocks``: disjoint arrays of configuration indices (e.g. the folds, plus the configurations
    that are always trained on). ``columns``: the design-matrix columns to use, in this order (default:
    all); any leading block of them can later be fitted on its own. Rows are weight-free (1/√N for E
    and V rows, 1 for F), grouped by (config_type, kind) as weights are.
    """

    def __init__(self, system: assembly.LsqSystem, configs: list[Config], blocks: list[np.ndarray],
                 elements: list[str], E0: dict, columns: np.ndarray | None = None, log=None):
        self.elements, self.E0 = list(elements), dict(E0)
        self.columns = np.arange(system.shape[1]) if columns is None else np.asarray(columns)
        groups, scale = assembly.row_groups(system, configs)
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
        """Fit the leading ``ncols`` columns for each E0 in ``E0s`` (one SVD for all, or for the sparse
        solvers ``asp``/``ard`` one QR: they take the triangular factor); returns [(θ (ncols,),
        committee (K, ncols) or None, solver info)]."""
        gamma = np.asarray(prior_gamma, dtype=float)[:ncols]
        c = {g: assembly.group_factor(*self.groups[g], weights) for g in combined}
        stack = np.vstack([c[g] * combined[g][0][:ncols, :ncols] for g in combined]) / gamma[None, :]
        name = solver if isinstance(solver, str) or solver is None else solver.get("name", "blr")
        if str(name).lower() in ("asp", "ard"):
            return self._solve_sparse(stack, c, combined, ncols, gamma, E0s, solver)
        Ur, sv, Vt = scipy.linalg.svd(stack, full_matrices=False, lapack_driver="gesdd")
        del stack
        n = int(sum(combined[g][3] for g in combined))
        out = []
        for E0 in E0s:
            bs, yy = self._rhs(c, combined, ncols, E0)
            f = solvers.SVDFactors(s=sv, Vt=Vt, b=Ur.T @ bs, yy=yy, n_obs=n)
            sol = solvers.solve_from_svd(solver, f, committee_size=committee_size, seed=seed,
                                         what="cross-validation")
            comm = None if sol.committee is None else sol.committee / gamma[None, :]
            out.append((sol.coef / gamma, comm, sol.info))
        return out

    def _rhs(self, c, combined, ncols, E0) -> tuple[np.ndarray, float]:
        """The stacked, weighted right-hand side Qᵀ(W·y) of the groups' factors under E0, and the
        weighted sum of its groups' squared residuals."""
        wv = self.rhs_weights(E0)
        bs = np.concatenate([c[g] * (wv @ combined[g][1][:, :ncols]) for g in combined])
        yy = float(sum(c[g] ** 2 * (wv @ combined[g][2] @ wv) for g in combined))
        return bs, yy

    def _solve_sparse(self, stack, c, combined, ncols, gamma, E0s, solver) -> list:
        """ASP or ARD (:func:`aceserver.fitting.solvers.solve` on the reduced system) of the
        prior-scaled ``stack``: its QR gives R and, per E0, Qᵀỹ and the least-squares residual
        ‖ỹ‖² − ‖Qᵀỹ‖² (the rows the blocks reduced away, and the stack's own)."""
        Q, R = scipy.linalg.qr(stack, mode="economic", overwrite_a=True)
        n = int(sum(combined[g][3] for g in combined))
        out = []
        for E0 in E0s:
            bs, yy = self._rhs(c, combined, ncols, E0)
            qty = Q.T @ bs
            resid = max(yy - float(qty @ qty), 0.0)
            sol = solvers.solve(solver, R, qty, reduced=(resid, n))
            out.append((sol.coef / gamma, None, sol.info))
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
        return kind_errors(np.concatenate(res), np.concatenate(kinds), np.concatenate(nat))
