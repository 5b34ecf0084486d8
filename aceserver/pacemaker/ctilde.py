"""pacemaker's complex C-tilde basis, rewritten exactly as products of the kernels' real atomic
base (construction time, numpy).

pacemaker uses A_{μnlm} = Σ_j R_nl(r) Y^ACE_lm(r̂) with Y^ACE_lm = √(4π) Y_lm (complex, with the
Condon-Shortley phase), and densities ρ_p = Σ_f Σ_s Re(c̃_{f,s,p} ∏_t A_{μ_t n_t l_t m_{s,t}}).
Our kernels use real harmonics Y^r (no Condon-Shortley phase, ylm.py), for which, with m > 0
(`basis.harmonics`, the one conversion),

    Y^ACE_{l,m}  = √(4π) (-1)^m (Y^r_{l,m} + i Y^r_{l,-m}) / √2,
    Y^ACE_{l,-m} = √(4π)        (Y^r_{l,m} - i Y^r_{l,-m}) / √2,      Y^ACE_{l,0} = √(4π) Y^r_{l,0},

so each complex A is a combination of at most two real A's, each with a purely real or purely
imaginary weight. Expanding ∏_t over the choices gives real products with weights that are
real or imaginary; Re keeps the real ones. Collected by their sorted tuple of real A indices,
they are nodes of the product DAG with one coefficient per density. Rank-1 functions use the
basis g_k directly (A1 = Σ_j g_k(r), Y^ACE_00 = 1); they are order-one nodes on the rows N + k of
the real A array, which hold Σ_j g_k Y^r_00 = A1/√(4π).
"""
from __future__ import annotations

import itertools

import numpy as np

from ..basis.harmonics import SQRT_4PI, complex_weights
from ..basis.products import build_product_dag, renumber_parents
from ..kernels.site_tables import a_index


def real_products(table, N, L, K):
    """(tuples, coef): every real product (sorted A indices, -1 padded, shape (U, rankmax)) of
    one species' C-tilde functions and its coefficient per density (U, P)."""
    P = table.ctildes.shape[1]
    rmax = table.mus.shape[1] if len(table) else 1
    keys, coefs, _ = function_terms(table, N, L, K)
    if not len(keys):
        return np.zeros((0, rmax), dtype=np.int64), np.zeros((0, P))
    uniq, inv = np.unique(keys, axis=0, return_inverse=True)
    coef = np.zeros((len(uniq), P))
    np.add.at(coef, inv.reshape(-1), coefs)
    # exact cancellations leave rounding residue: drop products far below the largest coefficient
    scale = np.abs(coef).max() if coef.size else 0.0
    keep = np.abs(coef).max(axis=1) > 1e-14 * scale
    return uniq[keep], coef[keep]


def function_terms(table, N, L, K):
    """(keys, coefs, owners): the real products of one species' C-tilde functions term by term,
    before products shared by several m-combinations or functions are merged: sorted A indices
    (T, rankmax) -1 padded, coefficient per density (T, P), and the function each term is from
    (T,). Σ over a function's terms of coef·∏A is that function's Σ_ms c̃ ∏A^ACE (real part)."""
    n_rows = N + K
    P = table.ctildes.shape[1]
    rmax = table.mus.shape[1] if len(table) else 1
    owner = table.comb_owner
    ranks = table.rank[owner]
    keys, coefs, owners = [], [], []
    for nu in np.unique(ranks):
        sel = ranks == nu
        f = owner[sel]
        mus, ns, ls = table.mus[f, :nu], table.ns[f, :nu], table.ls[f, :nu]
        ms = table.ms[sel, :nu]
        ct = table.ctildes[sel]
        if nu == 1:
            idx = a_index(mus, N + ns, 0, 0, n_rows, L)
            keys.append(np.pad(idx, ((0, 0), (0, rmax - 1)), constant_values=-1))
            coefs.append(ct * SQRT_4PI)
            owners.append(f)
            continue
        am = np.abs(ms)
        # per factor: weight of the +|m| (cos) and -|m| (sin) real function, as (re, im) parts
        w_cos, w_sin_im = complex_weights(ms)
        w_cos, w_sin_im = SQRT_4PI * w_cos, SQRT_4PI * w_sin_im
        for bits in itertools.product((0, 1), repeat=int(nu)):
            bits = np.array(bits)
            n_im = int(bits.sum())
            if n_im % 2:                   # odd number of imaginary factors: Re = 0
                continue
            w = np.where(bits[None, :] == 1, w_sin_im, w_cos).prod(axis=1) * (-1.0) ** (n_im // 2)
            live = w != 0.0
            if not live.any():
                continue
            m_real = np.where(bits[None, :] == 1, -am, am)
            idx = np.sort(a_index(mus, ns, ls, m_real, n_rows, L)[live], axis=1)
            keys.append(np.pad(idx, ((0, 0), (0, rmax - nu)), constant_values=-1))
            coefs.append(ct[live] * w[live, None])
            owners.append(f[live])
    if not keys:
        return (np.zeros((0, rmax), dtype=np.int64), np.zeros((0, P)),
                np.zeros(0, dtype=np.int64))
    return np.concatenate(keys), np.concatenate(coefs), np.concatenate(owners)


def split_leaves(parent, node_a, coef):
    """Product nodes without children ("leaves", most of them) are not stored as nodes: each
    is kept as (its parent, its own A factor, its coefficients) and evaluated as
    AA[parent]·A[a] in the energy sum. Returns the internal DAG (parent, node_a, coef) and the
    leaves, ordered by parent (leaf_parent: internal index, -1 for products of one A; leaf_a;
    leaf_coef (P, n_leaves))."""
    n = len(parent)
    has_child = np.zeros(n, dtype=bool)
    has_child[parent[parent >= 0]] = True
    internal = has_child
    new = -np.ones(n, dtype=np.int64)
    new[internal] = np.arange(int(internal.sum()))
    ip = renumber_parents(parent[internal], new)
    leaves = np.flatnonzero(~internal)
    lp = renumber_parents(parent[leaves], new)
    order = np.argsort(lp, kind="stable")          # roots (-1) first, then by parent
    leaves, lp = leaves[order], lp[order]
    return ip, node_a[internal], coef[:, internal], lp, node_a[leaves], coef[:, leaves]


def species_dags(spec, N, L, K):
    """One product DAG per central species, concatenated, with its leaves split off (see
    split_leaves). Species z evaluates internal nodes node_lo[z]..node_hi[z]-1 and leaves
    leaf_lo[z]..leaf_hi[z]-1; a leaf's parent is a global internal node, or n_nodes (one past
    the last) for products of one A: the site pass keeps AA[n_nodes] = 1. Leaf indices are
    uint32 (without a sign the compiled scatter loops skip the negative-index wrap-around).
    ρ_p(i) = Σ_k coef[p, z_i, k] AA_k + Σ_leaves leaf_coef[z_i, l, p] AA[parent_l] A[leaf_a_l]
    (coefficients stored leaf by leaf: the densities of one leaf are read together)."""
    nz = len(spec.elements)
    Pmax = max(e.ndensity for e in spec.embeddings)
    parts = []
    lo = np.zeros(nz, dtype=np.int64)
    hi = np.zeros(nz, dtype=np.int64)
    llo = np.zeros(nz, dtype=np.int64)
    lhi = np.zeros(nz, dtype=np.int64)
    n_nodes = n_leaves = 0
    for z in range(nz):
        tuples, coef = real_products(spec.functions[z], N, L, K)
        lo[z], llo[z] = n_nodes, n_leaves
        if len(tuples):
            parent, node_a, aa_node = build_product_dag(tuples)
            c = np.zeros((Pmax, len(parent)))
            c[: coef.shape[1], aa_node] = coef.T
            ip, ia, ic, lp, la, lc = split_leaves(parent, node_a, c)
            parts.append((z, np.where(ip >= 0, ip + n_nodes, -1), ia, ic,
                          np.where(lp >= 0, lp + n_nodes, -1), la, lc))
            n_nodes += len(ip)
            n_leaves += len(la)
        hi[z], lhi[z] = n_nodes, n_leaves
    coef_all = np.zeros((Pmax, nz, n_nodes))
    leaf_coef = np.zeros((nz, n_leaves, Pmax))
    for z, ip, ia, ic, lp, la, lc in parts:
        coef_all[:, z, lo[z]: hi[z]] = ic
        leaf_coef[z, llo[z]: lhi[z], :] = lc.T

    def cat(k, dtype=np.int64):
        return (np.concatenate([p[k] for p in parts]).astype(dtype) if parts
                else np.zeros(0, dtype=dtype))
    leaf_parent = cat(4)
    leaf_parent[leaf_parent < 0] = n_nodes
    if max(n_nodes, int(cat(5).max(initial=0))) >= 2**32:
        raise ValueError("potential too large: product indices beyond 32 bits")
    return dict(parent=cat(1), node_a=cat(2), node_lo=lo, node_hi=hi, coef=coef_all,
                leaf_parent=leaf_parent.astype(np.uint32), leaf_a=cat(5, np.uint32),
                leaf_lo=llo, leaf_hi=lhi, leaf_coef=leaf_coef)
