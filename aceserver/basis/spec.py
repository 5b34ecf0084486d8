"""Basis selection by level, as ACEpotentials.jl's ace1_model does it (ace-spec §1.8).

level(n, l) = n/NZ + l/(1/wL) with n the combined (polynomial, species) index, and the level of a
product the sum over its factors in A-index order. Float arithmetic follows upstream's order of
operations, because admissibility is a `<=` test that sits exactly on the boundary for many
functions (e.g. 9 + 1.5·2 = 12).
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np


@dataclass(frozen=True)
class LevelRule:
    """TotalDegree(wn = NZ, wl = 1/wL)."""
    nz: int
    wL: float = 1.5

    def __call__(self, n: int, l: int) -> float:
        return n / self.nz + l / (1.0 / self.wL)

    def of_list(self, nls) -> float:
        total = 0.0
        for n, l in nls:
            total += self(n, l)
        return total


def max_levels(totaldegree, order: int) -> list[float]:
    """One maximum level per correlation order 1..order (a scalar applies to all)."""
    td = np.atleast_1d(np.asarray(totaldegree, dtype=float))
    if td.size == 1:
        return [float(td[0])] * order
    if td.size != order:
        raise ValueError(f"totaldegree has {td.size} entries but order is {order}")
    return [float(x) for x in td]


def radial_spec(level: LevelRule, maxlevel: float) -> list[tuple[int, int]]:
    """One-particle (n, l) pairs with level <= maxlevel, sorted by (l, n)."""
    n_max = math.ceil(maxlevel * level.nz)
    l_max = math.ceil(maxlevel * (1.0 / level.wL))
    spec = [(n, l) for n in range(1, n_max + 1) for l in range(l_max + 1)
            if level(n, l) <= maxlevel]
    return sorted(spec, key=lambda nl: (nl[1], nl[0]))


def _signed_sum_zero_possible(ms) -> bool:
    sums = {0}
    for m in ms:
        sums = {s + m for s in sums} | {s - m for s in sums} if m else sums
    return 0 in sums


def _first_index_tuple(nls, starts) -> tuple[int, ...]:
    """Lexicographically smallest A-index tuple (non-decreasing) with factors nls that passes the
    m-sign filter: it fixes where upstream's enumeration first meets this (n,l)-multiset."""
    N = len(nls)
    ls = [l for _, l in nls]

    def dfs(t, ms):
        if t == N:
            return ms if _signed_sum_zero_possible(ms) else None
        lo = -ls[t]
        if t > 0 and nls[t] == nls[t - 1]:
            lo = ms[-1]
        for m in range(lo, ls[t] + 1):
            found = dfs(t + 1, ms + [m])
            if found is not None:
                return found
        return None

    ms = dfs(0, [])
    return tuple(starts[nl] + m + nl[1] for nl, m in zip(nls, ms))


def product_blocks(level: LevelRule, rspec_sorted, levels_per_order) -> list[tuple[tuple[int, int], ...]]:
    """The unique (n,l)-lists ("mb_spec") of upstream's sparse_AA_spec, in its order.

    Every (n,l)-multiset with Σl even (l = 0 when N = 1) and level <= the order's maximum has an
    m-assignment passing the sign filter (all m = 0), so the multisets are enumerated directly;
    their order is that of the first admissible (n,l,m) tuple in upstream's lexicographic traversal.
    rspec_sorted: the (n,l) pairs in A-spec order (by level, stable).
    """
    starts, pos = {}, 0
    for n, l in rspec_sorted:
        starts[(n, l)] = pos
        pos += 2 * l + 1
    lv = [level(n, l) for n, l in rspec_sorted]
    blocks = []
    for N, maxlev in enumerate(levels_per_order, start=1):
        found = []

        def rec(first, prefix, lev):
            if len(prefix) == N:
                nls = [rspec_sorted[p] for p in prefix]
                if sum(l for _, l in nls) % 2 == 0 and (N > 1 or nls[0][1] == 0):
                    found.append(tuple(nls))
                return
            for p in range(first, len(rspec_sorted)):
                new = lev + lv[p]
                if new > maxlev:
                    continue  # not break: levels are sorted, but keep it exact under float ties
                rec(p, prefix + [p], new)

        rec(0, [], 0.0)
        found.sort(key=lambda nls: _first_index_tuple(nls, starts))
        blocks.extend(found)
    return blocks
