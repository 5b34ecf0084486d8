"""Per-atom projections of a pacemaker (C-tilde) potential: the descriptor rows behind its
extrapolation grade γ. Units: eV (a projection is an energy derivative w.r.t. a dimensionless
scale factor).

For central atom i of species z, C-tilde function f and density p,

    g_{f,p}(i) = Σ_ms c̃_{f,ms,p} Re ∏_t A^ACE_{μ_t n_t l_t m_t}(i)   (f's share of ρ_p(i)),
    projection_{f,p}(i) = w_p F_p'(ρ_p(i)) · g_{f,p}(i),   ρ_p = Σ_f g_{f,p},

i.e. ∂/∂s of the embedding energy Σ_p w_p F_p(ρ_p) when all of f's c̃ at density p are scaled by
s (at s = 1). As in pacemaker's own projections (dE_dc), the core-repulsion cut-off f_cut(ρ_core)
or the ZBL switch that multiplies the embedding energy is left out (∂E_i/∂s = f_cut · projection),
and the core repulsion / ZBL energy is not linear in any c̃, so it has no column. Columns are
density-major, as pacemaker's: column p·n_fn[z] + f, f in the `.yace` order of species z's
functions.

The energy's tables merge a product that several functions share, so they cannot split ρ_p by
function; the kernel has its own product DAG over every function's products
(`ProjectionTables`, built by `pacemaker.projections`). Like the site pass it keeps only the
products with children as nodes: a term reads AA[term_par]·A[term_a], where AA[n_nodes] = 1 (a
product of one A) and A[n_A] = 1 (a term on a node). Radials, harmonics and A are the site
pass's (`pace_features.table_features`, `atomic_base`).
"""
from __future__ import annotations

from collections import namedtuple

import numpy as np
from numba import njit, prange

from .atomic_base import accumulate_a, forward_aa, site_scratch, sort_neighbours
from .pace_features import embedding, table_features

ProjectionTables = namedtuple("ProjectionTables", [
    "parent", "node_a",    # product DAG (node k = AA[parent[k]]·A[node_a[k]], parent -1: A alone)
    "node_lo", "node_hi",  # species z evaluates nodes node_lo[z]..node_hi[z]-1
    "fn_off",              # (nz,) species z's functions start at fn_ptr[fn_off[z]]
    "fn_ptr",              # species z's function f owns terms fn_ptr[o+f]..fn_ptr[o+f+1]-1, o = fn_off[z]
    "term_par",            # (T,) AA index of the term's product (n_nodes: the constant 1)
    "term_a",              # (T,) flat A index of its last factor (n_A: the constant 1)
    "term_coef",           # (T, Pmax) coefficient per density (c̃ times the real-harmonic weight)
    "n_fn",                # (nz,) functions per species
    "n_dens",              # (nz,) densities per species
])


@njit(cache=True, nogil=True)
def _function_sums(AA, Af, PT, zi, g):
    """g[f, p] = Σ over function f's terms of coef[t, p]·AA[par_t]·A[a_t] (species zi)."""
    P = PT.n_dens[zi]
    ptr = PT.fn_ptr[PT.fn_off[zi]: PT.fn_off[zi] + PT.n_fn[zi] + 1]
    tp, ta, tc = PT.term_par, PT.term_a, PT.term_coef
    for f in range(ptr.shape[0] - 1):
        if P == 2:                         # most pacemaker files: both sums in registers
            s0 = 0.0
            s1 = 0.0
            for t in range(ptr[f], ptr[f + 1]):
                x = AA[tp[t]] * Af[ta[t]]
                s0 += tc[t, 0] * x
                s1 += tc[t, 1] * x
            g[f, 0] = s0
            g[f, 1] = s1
        else:
            for p in range(P):
                s = 0.0
                for t in range(ptr[f], ptr[f + 1]):
                    s += tc[t, p] * AA[tp[t]] * Af[ta[t]]
                g[f, p] = s


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
    nA = nz * n_rows * nlm
    Af = np.empty(nA + 1)                  # flat A, then the constant 1
    Af[nA] = 1.0
    A = Af[:nA].reshape((nz, n_rows, nlm))
    nN = PT.parent.shape[0]
    AA = np.empty(nN + 1)                  # the nodes, then the constant 1
    AA[nN] = 1.0
    g = np.empty((max(1, PT.n_fn.max()), PT.term_coef.shape[1]))
    dF = np.empty(PT.term_coef.shape[1])
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
        _function_sums(AA, Af, PT, zi, g)
        nf, P = PT.n_fn[zi], PT.n_dens[zi]
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
