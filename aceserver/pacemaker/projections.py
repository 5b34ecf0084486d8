"""The tables of the projection kernel (`kernels.pace_projections`): for every central species,
each C-tilde function's real products with their coefficients per density, on one product DAG
over all of them (construction time, numpy).

The energy's tables (`ctilde.species_dags`) merge a product that several functions share into
one coefficient and drop exact cancellations; the projections need each function's own share,
so here a term is a (function, product) pair: the products of one function are merged (they
share the function's column), those of different functions are not. As for the energy, products
without children are not DAG nodes (`ctilde.split_leaves`): a term on such a product reads
AA[parent]·A[a] itself.
"""
from __future__ import annotations

import numpy as np

from ..basis.products import build_product_dag
from ..kernels.pace_projections import ProjectionTables
from .ctilde import function_terms, split_leaves


def _species_terms(table, N, L, K):
    """(tuples (U, rankmax), term_tuple (T,), term_fn (T,), term_coef (T, P)) of one species."""
    keys, coefs, owners = function_terms(table, N, L, K)
    P = coefs.shape[1]
    if not len(keys):
        z = np.zeros(0, dtype=np.int64)
        return np.zeros((0, keys.shape[1]), dtype=np.int64), z, z, np.zeros((0, P))
    rows, inv = np.unique(np.concatenate([owners[:, None], keys], axis=1), axis=0,
                          return_inverse=True)
    coef = np.zeros((len(rows), P))
    np.add.at(coef, inv.reshape(-1), coefs)
    fn = rows[:, 0]
    # a function's m-combinations can cancel on a product exactly: drop the rounding residue
    # (relative to that function's largest coefficient, as ctilde.real_products does per species)
    size = np.abs(coef).max(axis=1)
    fscale = np.zeros(len(table))
    np.maximum.at(fscale, fn, size)
    keep = size > 1e-14 * fscale[fn]
    rows, coef, fn = rows[keep], coef[keep], fn[keep]
    tuples, term_tuple = np.unique(rows[:, 1:], axis=0, return_inverse=True)
    return tuples, term_tuple.reshape(-1), fn, coef


def _term_reads(tuples, term_tuple):
    """Internal DAG (parent, node_a) over the products `tuples`, and per term the (AA index,
    A index) it multiplies, with -1 for the constant 1 (resolved by the caller)."""
    parent, node_a, aa_node = build_product_dag(tuples)
    n = len(parent)
    # split_leaves carries coefficients along; carrying each node's own index maps the nodes
    ids = np.arange(n, dtype=np.float64)[None, :]
    ip, ia, ic, lp, la, lc = split_leaves(parent, node_a, ids)
    internal = -np.ones(n, dtype=np.int64)
    internal[ic[0].astype(np.int64)] = np.arange(len(ip))
    leaf = -np.ones(n, dtype=np.int64)
    leaf[lc[0].astype(np.int64)] = np.arange(len(la))
    node = aa_node[term_tuple]
    on_leaf = leaf[node] >= 0
    par = np.where(on_leaf, lp[np.maximum(leaf[node], 0)], internal[node])
    a = np.where(on_leaf, la[np.maximum(leaf[node], 0)], -1)
    return ip, ia, par, a


def projection_tables(spec, N, L, K) -> ProjectionTables:
    """ProjectionTables of a YaceSpec whose A array has N radial rows of degree <= L and K rank-1
    rows per neighbour species (as `ctilde.species_dags`)."""
    nz = len(spec.elements)
    Pmax = max(e.ndensity for e in spec.embeddings)
    n_a = nz * (N + K) * (L + 1) ** 2
    parts = []
    lo = np.zeros(nz, dtype=np.int64)
    hi = np.zeros(nz, dtype=np.int64)
    n_nodes = 0
    for z in range(nz):
        tuples, term_tuple, fn, coef = _species_terms(spec.functions[z], N, L, K)
        lo[z] = n_nodes
        if len(tuples):
            ip, ia, par, a = _term_reads(tuples, term_tuple)
            order = np.lexsort((a, par, fn))          # by function, then as the DAG is read
            parts.append((np.where(ip >= 0, ip + n_nodes, -1), ia, par[order] + n_nodes,
                          a[order], fn[order], coef[order]))
            n_nodes += len(ip)
        else:
            parts.append(None)
        hi[z] = n_nodes
    parent, node_a, t_par, t_a, t_coef, fn_ptr = [], [], [], [], [], []
    fn_off = np.zeros(nz, dtype=np.int64)
    n_terms = 0
    for z, part in enumerate(parts):
        nf = len(spec.functions[z])
        fn_off[z] = sum(len(p) for p in fn_ptr)
        if part is None:
            fn_ptr.append(np.full(nf + 1, n_terms, dtype=np.int64))
            continue
        ip, ia, par, a, fn, coef = part
        parent.append(ip)
        node_a.append(ia)
        t_par.append(np.where(par - lo[z] < 0, n_nodes, par))   # leaf of one A: AA = 1
        t_a.append(np.where(a < 0, n_a, a))                      # a term on a node: A = 1
        c = np.zeros((len(fn), Pmax))
        c[:, : coef.shape[1]] = coef
        t_coef.append(c)
        fn_ptr.append(n_terms + np.searchsorted(fn, np.arange(nf + 1)))
        n_terms += len(fn)

    def cat(parts, dtype=np.int64):
        return np.concatenate(parts).astype(dtype) if parts else np.zeros(0, dtype=dtype)
    return ProjectionTables(
        parent=cat(parent), node_a=cat(node_a), node_lo=lo, node_hi=hi, fn_off=fn_off,
        fn_ptr=cat(fn_ptr), term_par=cat(t_par), term_a=cat(t_a),
        term_coef=(np.concatenate(t_coef) if t_coef else np.zeros((0, Pmax))),
        n_fn=np.array([len(t) for t in spec.functions], dtype=np.int64),
        n_dens=np.array([e.ndensity for e in spec.embeddings], dtype=np.int64))
