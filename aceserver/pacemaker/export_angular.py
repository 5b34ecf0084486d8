"""Angular part of the .yace export (construction-time numpy): our products of REAL atomic-basis
functions rewritten, exactly, as sums of products of the complex ones pacemaker evaluates.

Our harmonics (kernels/ylm.py) are real, L²-normalised, without Condon-Shortley phase; pacemaker's
are Y^ACE_lm = √(4π) Y_lm, complex, with that phase (yace-format.md §6). With Y = complex Y_lm
(`basis.harmonics.real_to_complex`):

    Yr_l0 = Y_l0,   Yr_l,k = ((-1)^k Y_lk + Y_l,-k)/√2,   Yr_l,-k = ((-1)^k Y_lk - Y_l,-k)/(√2 i)

(k > 0), so every real A_nlm = Σ_μ U_mμ A^ACE_nlμ / √(4π) and every product node of the model
expands into complex products. Terms are collected under a canonical (sorted) factor order.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from ..basis.harmonics import SQRT_4PI, real_to_complex
from ..kernels.site_tables import a_fields


def expand_nodes(parent, node_a, nz, n_poly, lmax):
    """Complex expansion of every product node: list of dicts {sorted ((z, n, l, μ), ...): c} with
    node = Σ c ∏ A^ACE (the 1/√(4π) per factor included)."""
    factor = {}
    out = []
    for k in range(len(parent)):
        a = int(node_a[k])
        if a not in factor:
            z, n, l, m = a_fields(a, n_poly, lmax)
            factor[a] = [((z, n, l, mu), c / SQRT_4PI) for mu, c in real_to_complex(l, m)]
        p = int(parent[k])
        if p < 0:
            out.append({(f,): c for f, c in factor[a]})
            continue
        acc: dict = {}
        for key, c in out[p].items():
            for f, cf in factor[a]:
                new = tuple(sorted(key + (f,)))
                acc[new] = acc.get(new, 0.0) + c * cf
        out.append(acc)
    return out


@dataclass
class ComplexFunction:
    """One pacemaker C-tilde function: neighbour species, 0-based radial index and l per factor,
    and its m-combinations with real coefficients."""
    mus: tuple
    ns: tuple
    ls: tuple
    ms: list            # list of m tuples (Σ m = 0)
    ctildes: list       # one real coefficient per m tuple


@dataclass
class AngularExpansion:
    functions: list             # per centre species: list of ComplexFunction (rank >= 2)
    order1: np.ndarray          # (NZ centre, NZ neighbour, n_poly): coefficients of A_n00 (real Y00)
    max_dropped_msum: float     # largest |c| of a collected term with Σ m ≠ 0 (must cancel)
    max_imag: float             # largest |Im c| of a kept term (must vanish: even parity)
    max_relative_dropped_small: float
    n_terms: int


def expand_model(parent, node_a, coef, nz, n_poly, lmax, small=1e-13) -> AngularExpansion:
    """Collect Σ_k coef[z_i, k] · node_k for every centre species z_i into complex products.

    Order-1 nodes are kept apart (they join the pair term as rank-1 functions of the radial part);
    an order-1 node with l > 0 is not invariant and must have a zero coefficient. Terms with
    |c| < small · max |c| are dropped (their size is reported)."""
    expansions = expand_nodes(parent, node_a, nz, n_poly, lmax)
    order1 = np.zeros((nz, nz, n_poly))
    functions = []
    dropped_msum = 0.0
    max_imag = 0.0
    dropped_small = 0.0
    n_terms = 0
    for zi in range(nz):
        total: dict = {}
        for k in np.flatnonzero(coef[zi]):
            c = coef[zi, k]
            if parent[k] < 0:
                z, n, l, m = a_fields(node_a[k], n_poly, lmax)
                if l != 0:
                    dropped_msum = max(dropped_msum, abs(c))
                    continue
                order1[zi, z, n] += c / SQRT_4PI       # real Y00 = 1/√(4π)
                continue
            for key, ck in expansions[k].items():
                total[key] = total.get(key, 0.0) + c * ck
        scale = max((abs(v) for v in total.values()), default=0.0)
        groups: dict = {}
        for key, c in total.items():
            if sum(f[3] for f in key) != 0:
                dropped_msum = max(dropped_msum, abs(c))
                continue
            if abs(c) <= small * scale:
                dropped_small = max(dropped_small, abs(c) / scale)
                continue
            max_imag = max(max_imag, abs(c.imag))
            head = tuple(f[:3] for f in key)
            groups.setdefault(head, []).append((tuple(f[3] for f in key), c.real))
        funcs = []
        for head in sorted(groups):
            rows = sorted(groups[head])
            n_terms += len(rows)
            funcs.append(ComplexFunction(
                mus=tuple(h[0] for h in head), ns=tuple(h[1] for h in head),
                ls=tuple(h[2] for h in head), ms=[r[0] for r in rows], ctildes=[r[1] for r in rows]))
        functions.append(funcs)
    return AngularExpansion(functions, order1, dropped_msum, max_imag, dropped_small, n_terms)
