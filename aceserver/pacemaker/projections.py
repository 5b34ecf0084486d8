"""The tables of the projection kernel (`kernels.pace_projections`): for every central species,
each C-tilde function's real products with their coefficients per density, and one product DAG
over all of them (construction time, numpy).

The energy's tables (`ctilde.species_dags`) merge a product that several functions share into
one coefficient and drop exact cancellations; the projections need each function's own share,
so here a term is a (function, product) pair: the products of one function are merged (they
share the function's column), those of different functions are not.
"""
from __future__ import annotations

import numpy as np

from ..basis.products import build_product_dag
from ..kernels.pace_projections import ProjectionTables
from .ctilde import function_terms


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


def projection_tables(spec, N, L, K) -> ProjectionTables:
    """ProjectionTables of a YaceSpec whose A array has N radial rows of degree <= L and K rank-1
    rows (as `ctilde.species_dags`)."""
    nz = len(spec.elements)
    Pmax = max(e.ndensity for e in spec.embeddings)
    parents, node_as, t_node, t_fn, t_coef = [], [], [], [], []
    lo = np.zeros(nz, dtype=np.int64)
    hi = np.zeros(nz, dtype=np.int64)
    tlo = np.zeros(nz, dtype=np.int64)
    thi = np.zeros(nz, dtype=np.int64)
    n_nodes = n_terms = 0
    for z in range(nz):
        tuples, term_tuple, fn, coef = _species_terms(spec.functions[z], N, L, K)
        lo[z], tlo[z] = n_nodes, n_terms
        if len(tuples):
            parent, node_a, aa_node = build_product_dag(tuples)
            node = aa_node[term_tuple]
            order = np.lexsort((fn, node))          # read AA in node order
            parents.append(np.where(parent >= 0, parent + n_nodes, -1))
            node_as.append(node_a)
            t_node.append(node[order] + n_nodes)
            t_fn.append(fn[order])
            c = np.zeros((len(order), Pmax))
            c[:, : coef.shape[1]] = coef[order]
            t_coef.append(c)
            n_nodes += len(parent)
            n_terms += len(order)
        hi[z], thi[z] = n_nodes, n_terms

    def cat(parts, dtype=np.int64):
        return np.concatenate(parts).astype(dtype) if parts else np.zeros(0, dtype=dtype)
    return ProjectionTables(
        parent=cat(parents), node_a=cat(node_as), node_lo=lo, node_hi=hi, term_lo=tlo,
        term_hi=thi, term_node=cat(t_node), term_fn=cat(t_fn),
        term_coef=(np.concatenate(t_coef) if t_coef else np.zeros((0, Pmax))),
        n_fn=np.array([len(t) for t in spec.functions], dtype=np.int64),
        n_dens=np.array([e.ndensity for e in spec.embeddings], dtype=np.int64))
