"""Nested bases as column subsets: a smaller basis's parameters located among a larger one's, and a
column order in which each basis of a nested chain is a leading block (so that one assembly of the
largest basis serves them all)."""
from __future__ import annotations

import numpy as np


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
