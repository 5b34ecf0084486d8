"""Product DAG for the AA basis, and the pruned fast form (ace-spec §3) — construction-time numpy."""
from __future__ import annotations

import numpy as np

from ..kernels.site_tables import a_index


def build_product_dag(aa_spec: np.ndarray):
    """Nodes so that node k = node[parent[k]] · A[node_a[k]] (parent -1 for a single A).

    aa_spec: (nAA, max_order) sorted A indices, -1 padded. Each product reuses an existing node for
    one of its (N-1)-factor sub-products where it can, else adds the prefix as an intermediate node.
    Returns parent, node_a, aa_node (the node of each AA function).
    """
    index: dict[tuple, int] = {}
    parent: list[int] = []
    node_a: list[int] = []

    def node(t: tuple) -> int:
        if t in index:
            return index[t]
        if len(t) == 1:
            par, a = -1, t[0]
        else:
            par, a = None, None
            for drop in range(len(t) - 1, -1, -1):     # prefer dropping the last factor
                sub = t[:drop] + t[drop + 1:]
                if sub in index:
                    par, a = index[sub], t[drop]
                    break
            if par is None:
                par, a = node(t[:-1]), t[-1]
        index[t] = len(parent)
        parent.append(par)
        node_a.append(a)
        return index[t]

    tuples = [tuple(int(x) for x in row if x >= 0) for row in aa_spec]
    for t in sorted(tuples, key=len):
        node(t)
    parent, node_a = np.array(parent, dtype=np.int64), np.array(node_a, dtype=np.int64)
    order = np.empty(len(parent), dtype=np.int64)          # product order of each node
    for t, k in index.items():
        order[k] = len(t)
    aa_node = np.array([index[t] for t in tuples], dtype=np.int64)
    return _parent_order(parent, node_a, order, aa_node)


def renumber_parents(parent, new_index):
    """Parent indices mapped through new_index (old node -> new node); -1 (no parent) stays."""
    return np.where(parent >= 0, new_index[np.maximum(parent, 0)], -1)


def _parent_order(parent, node_a, order, aa_node):
    """Renumber nodes so that, order by order, children of one parent are adjacent and parents
    are visited in increasing order (the forward pass reads parents, the reverse pass adds into
    them, as a sweep instead of jumps)."""
    new_of_old = np.empty(len(parent), dtype=np.int64)
    done = 0
    for n in np.unique(order):                   # a node's parent has a lower order
        ks = np.flatnonzero(order == n)
        ks = ks[np.lexsort((node_a[ks], renumber_parents(parent[ks], new_of_old)))]
        new_of_old[ks] = np.arange(done, done + len(ks))
        done += len(ks)
    old_of_new = np.argsort(new_of_old)
    return (renumber_parents(parent[old_of_new], new_of_old), node_a[old_of_new],
            new_of_old[aa_node])


def prune_dag(parent, node_a, node_coef):
    """Keep nodes with a non-zero coefficient for some species (or parameter set), and their
    ancestors.

    node_coef: (..., n_nodes). Returns (keep_nodes, parent', node_a (old A indices), coef')."""
    keep = np.any(node_coef.reshape(-1, node_coef.shape[-1]) != 0.0, axis=0)
    for k in range(len(parent) - 1, -1, -1):
        if keep[k] and parent[k] >= 0:
            keep[parent[k]] = True
    new_index = -np.ones(len(parent), dtype=np.int64)
    new_index[keep] = np.arange(int(keep.sum()))
    par = renumber_parents(parent[keep], new_index)
    return keep, par, node_a[keep], np.ascontiguousarray(node_coef[..., keep])


def a_dense_index(a_spec: np.ndarray, nz: int, n_poly: int, lmax: int) -> np.ndarray:
    """Flat index of each one-particle function (n, l, m) in the kernels' dense A array of shape
    (NZ channels, n_poly, (lmax+1)²): channel (n-1) % NZ, polynomial (n-1) // NZ, harmonic
    l² + l + m."""
    n, l, m = a_spec[:, 0] - 1, a_spec[:, 1], a_spec[:, 2]
    return a_index(n % nz, n // nz, l, m, n_poly, lmax).astype(np.int64)
