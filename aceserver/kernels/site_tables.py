"""The kernel-table contract: what every potential (ace1 or pacemaker) compiles to, and what the
site pass (`site_pass`) reads. One namedtuple of arrays, so both model families share one compile.

The flat A index. The site pass keeps the atomic base A in one dense array of shape
(nz, n_rows, (lmax+1)²): neighbour species channel z, radial row n, harmonic lm = l² + l + m
(real harmonics, SpheriCart order, see `ylm`). Product nodes and leaves address A by the flat
index a = (z·n_rows + n)·(lmax+1)² + lm; `a_index` and `a_fields` are the one encoder and decoder.
"""
from __future__ import annotations

from collections import namedtuple

import numpy as np

SiteTables = namedtuple("SiteTables", [
    "mode",            # int: 0 ace1 radials and pair term, 1 tabulated radials with an embedding
    "e0",              # (nz,) eV, one-body energies
    "lmax",            # int
    "mb_t", "mb_spl",  # ace1: Agnesi transform (nz, nz, 7) and radial splines (n_int, 4, n_poly)
    "pr_t", "pair_p", "pair_spl",   # ace1 pair term
    "tab",             # tabulated: (nz, nz, n_nodes, 2, nf) value and d/dr at r = n·h; functions
                       #   R_nl (index n(L+1)+l), g_k (N(L+1)+k), φ_core (last)
    "tab_h", "tab_rc",  # (nz, nz) node spacing and cut-off, Å
    "row_off", "row_lmax",  # A row n holds functions row_off[n] + l, l <= row_lmax[n]
    "parent", "node_a", "node_lo", "node_hi",   # product DAG; species z uses nodes lo[z]..hi[z]-1
    "coef",            # (M, nz, n_nodes): M parameter sets (ace1) or densities (tabulated)
    "leaf_parent", "leaf_a",  # leaves (childless products AA[parent]·A[a]), uint32; parent
                       #   n_nodes (AA = 1 there) for products of one A
    "leaf_lo", "leaf_hi",  # species z's leaves leaf_lo[z]..leaf_hi[z]-1
    "leaf_coef",       # (nz, n_leaves, M): coefficients of each leaf for the M sets
    "emb_kind",        # (nz,) 0 FinnisSinclair, 1 FinnisSinclairShiftedScaled
    "emb_par",         # (nz, M, 2) prefactor, exponent per density (prefactor 0: unused)
    "rho_cut",         # (nz, 2) ρ_core cut-off and its width
    "inner",           # int: 0 density, 1 distance, 2 zbl
    "zin",             # (nz, nz, 2) inner cut-off r_in, Δ_in (ZBL switch)
])

# What the site pass needs to also write each site's descriptor row (ace1, see
# `basis_rows.site_descriptors`): B_b = Σ_t c_val[t] AA[c_node[t]] for b's entries
# c_ptr[b]..c_ptr[b+1]-1 (c_node in the tables' own DAG numbering) and the unmerged pair splines
# (n_int, 4, n_pair_poly). Empty arrays: no rows are written.
DescriptorTables = namedtuple("DescriptorTables", ["c_ptr", "c_node", "c_val", "pair_bspl"])


def no_descriptors() -> DescriptorTables:
    return DescriptorTables(np.zeros(1, dtype=np.int64), np.zeros(0, dtype=np.int64), np.zeros(0),
                            np.zeros((1, 4, 0)))


INNER_TYPES = {"density": 0, "distance": 1, "zbl": 2}
EMBEDDING_KINDS = {"FinnisSinclair": 0, "FinnisSinclairShiftedScaled": 1}


def unused(ndim, dtype=np.float64):
    """Placeholder for a table the other radial mode uses (same type, so one compile)."""
    return np.zeros((1,) * ndim, dtype=dtype)


def a_index(z, n, l, m, n_rows: int, lmax: int):
    """Flat A index of (species channel z, radial row n, l, m); integers or integer arrays."""
    return (z * n_rows + n) * (lmax + 1) ** 2 + l * l + l + m


def a_fields(a, n_rows: int, lmax: int):
    """Inverse of `a_index`: (z, n, l, m) as int64 arrays (or ints for an int)."""
    nlm = (lmax + 1) ** 2
    zn, lm = np.divmod(np.asarray(a, dtype=np.int64), nlm)
    z, n = np.divmod(zn, n_rows)
    l = np.floor(np.sqrt(lm + 0.5)).astype(np.int64)
    m = lm - l * l - l
    if np.ndim(a) == 0:
        return int(z), int(n), int(l), int(m)
    return z, n, l, m
