"""Per-atom projections of a pacemaker (C-tilde) potential: the descriptor rows behind its
extrapolation grade γ. Units: eV (a projection is an energy derivative w.r.t. a dimensionless
scale factor).

For central atom i of species z, C-tilde function f and density p,

    g_{f,p}(i) = Σ_ms c̃_{f,ms,p} Re ∏_t A^ACE_{μ_t n_t l_t m_t}(i)   (f's share of ρ_p(i)),
    projection_{f,p}(i) = w_p F_p'(ρ_p(i)) · g_{f,p}(i),   ρ_p = Σ_f g_{f,p},

i.e. ∂/∂s of the embedding energy Σ_p w_p F_p(ρ_p) when all of f's c̃ at density p are scaled by
s (at s = 1). Like pacemaker's own projections, the core-repulsion cut-off f_cut(ρ_core) or the
ZBL switch that multiplies the embedding energy is not applied (∂E_i/∂s = f_cut · projection),
and the core repulsion / ZBL energy is not linear in any c̃, so it has no column. Columns are
density-major: column p·n_fn[z] + f, f in the `.yace` order of species z's functions.

The kernel evaluates every product of every function through its own product DAG
(`ProjectionTables`, built by `pacemaker.projections`): the energy DAG merges products that
several functions share and drops exact cancellations, so it cannot split ρ_p by function.
Radials, harmonics and A are the site pass's (`pace_features.table_features`, `atomic_base`).
"""
from __future__ import annotations

from collections import namedtuple

import numpy as np
from numba import njit, prange

from .atomic_base import accumulate_a, forward_aa, site_scratch, sort_neighbours
from .pace_features import embedding, table_features

ProjectionTables = namedtuple("ProjectionTables", [
    "parent", "node_a",    # product DAG over every (function, product) term (node k = AA[parent]·A[a])
    "node_lo", "node_hi",  # species z evaluates nodes node_lo[z]..node_hi[z]-1
    "term_lo", "term_hi",  # species z's terms term_lo[z]..term_hi[z]-1
    "term_node",           # (T,) the node whose AA value the term multiplies
    "term_fn",             # (T,) the function (0-based within its species) the term belongs to
    "term_coef",           # (T, Pmax) coefficient per density (c̃ times the real-harmonic weight)
    "n_fn",                # (nz,) functions per species
    "n_dens",              # (nz,) densities per species
])


@njit(cache=True, nogil=True)
def _rows(atoms, first, nbr, R, zat, T, PT, out):
    """out[r, :] = projection row of atom atoms[r] (columns beyond the species' own zeroed)."""
    nz = T.e0.shape[0]
    nlm = (T.lmax + 1) ** 2
    n_rad = T.tab.shape[4]
    n_rows = T.row_off.shape[0]
    N = first.shape[0] - 1
    K, Q, C, S, zb, slot, zj, rhat, rr, rinv, rad, drad, Y, dY = site_scratch(
        first, 0, N, n_rad, T.lmax, nz)
    row = np.empty((2, n_rad))
    A = np.empty((nz, n_rows, nlm))
    Af = A.reshape(-1)
    AA = np.empty(PT.parent.shape[0])
    Pmax = PT.term_coef.shape[1]
    g = np.empty((PT.n_fn.max(), Pmax))
    dF = np.empty(Pmax)
    for r in range(atoms.shape[0]):
        i = atoms[r]
        zi = zat[i]
        out[r, :] = 0.0
        J = sort_neighbours(i, first, nbr, zat, zb, slot)
        if J == 0:                         # no neighbours: A = 0, every product and ρ vanish
            continue
        table_features(i, J, slot, R, zat, nbr, T, K, Q, C, S, zj, rhat, rinv, rad, drad, Y, dY,
                       row)
        accumulate_a(zb, rad, Y, A, T.row_off, T.row_lmax, 1)
        forward_aa(Af, PT.parent, PT.node_a, AA, PT.node_lo[zi], PT.node_hi[zi])
        nf, P = PT.n_fn[zi], PT.n_dens[zi]
        g[:nf, :] = 0.0
        tn, tf = PT.term_node, PT.term_fn
        for t in range(PT.term_lo[zi], PT.term_hi[zi]):
            v = AA[tn[t]]
            f = tf[t]
            for p in range(P):
                g[f, p] += PT.term_coef[t, p] * v
        for p in range(P):
            rho = 0.0
            for f in range(nf):
                rho += g[f, p]
            w = T.emb_par[zi, p, 0]
            dF[p] = 0.0 if w == 0.0 else w * embedding(T.emb_kind[zi], rho, T.emb_par[zi, p, 1])[1]
        for p in range(P):
            o = p * nf
            for f in range(nf):
                out[r, o + f] = dF[p] * g[f, p]


@njit(cache=True, nogil=True)
def projection_rows(atoms, first, nbr, R, zat, T, PT, width):
    """Projection rows (len(atoms), width) of the atoms `atoms` (indices into the neighbour
    list first/nbr/R, species zat), over the site tables T (tabulated mode) and the projection
    tables PT. width >= the largest n_dens[z]·n_fn[z]; unused columns are zero."""
    out = np.empty((atoms.shape[0], width))
    _rows(atoms, first, nbr, R, zat, T, PT, out)
    return out


@njit(cache=True, nogil=True, parallel=True)
def projection_rows_parallel(atoms, first, nbr, R, zat, T, PT, width, n_chunks):
    """As projection_rows, over n_chunks blocks of atoms on numba's threads (same numbers:
    each row is computed alone)."""
    n = atoms.shape[0]
    out = np.empty((n, width))
    n_chunks = max(1, min(n, n_chunks))
    for c in prange(n_chunks):
        lo, hi = c * n // n_chunks, (c + 1) * n // n_chunks
        _rows(atoms[lo:hi], first, nbr, R, zat, T, PT, out[lo:hi])
    return out
