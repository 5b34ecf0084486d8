"""Rotation- and permutation-invariant coupling of products of real spherical harmonics
(ace-spec §1.10), reproducing upstream's normalisation so that every B function has the same
scale as in ACEpotentials.jl (the scale matters for Bayesian and ridge fits).

For a block of N factors (n_t, l_t): couple the complex harmonics along all intermediate chains
(l1, L2, ..., 0) with Clebsch-Gordan coefficients (an orthonormal basis of the L = 0 subspace),
rotate into the real (SpheriCart) basis, sum the coefficients over each permutation class of
identical factors, and reduce the rank through the Gram matrix: C = sqrt(S) Uᵀ F with the
eigenvalues S > 1e-12. C does not depend on which orthonormal basis of invariants one starts from,
so the chain choice is free; only the span and the normalisation matter.
"""
from __future__ import annotations

import itertools
import math
from fractions import Fraction
from functools import lru_cache

import numpy as np

from .harmonics import complex_to_real

RANK_TOL = 1e-12     # upstream: absolute threshold on the Gram eigenvalues
ZERO_COLUMN_TOL = 1e-13


@lru_cache(maxsize=None)
def _fact(n: int) -> int:
    return math.factorial(n)


def clebsch_gordan(l1: int, m1: int, l2: int, m2: int, L: int, M: int) -> float:
    """<l1 m1 l2 m2 | L M> (Condon-Shortley), from Racah's formula in exact rational arithmetic."""
    if M != m1 + m2 or not (abs(l1 - l2) <= L <= l1 + l2):
        return 0.0
    if abs(m1) > l1 or abs(m2) > l2 or abs(M) > L:
        return 0.0
    pref = Fraction((2 * L + 1) * _fact(L + l1 - l2) * _fact(L - l1 + l2) * _fact(l1 + l2 - L),
                    _fact(l1 + l2 + L + 1))
    pref *= (_fact(L + M) * _fact(L - M) * _fact(l1 - m1) * _fact(l1 + m1)
             * _fact(l2 - m2) * _fact(l2 + m2))
    total = Fraction(0)
    for k in range(0, l1 + l2 - L + 1):
        args = (l1 + l2 - L - k, l1 - m1 - k, l2 + m2 - k, L - l2 + m1 + k, L - l1 - m2 + k)
        if min(args) < 0:
            continue
        den = _fact(k)
        for a in args:
            den *= _fact(a)
        total += Fraction((-1) ** k, den)
    if total == 0:
        return 0.0
    return math.copysign(math.sqrt(pref * total * total), total)


@lru_cache(maxsize=None)
def cg_tensor(l1: int, l2: int, L: int) -> np.ndarray:
    """CG[m1+l1, m2+l2, M+L] = <l1 m1 l2 m2 | L M>."""
    out = np.zeros((2 * l1 + 1, 2 * l2 + 1, 2 * L + 1))
    for m1 in range(-l1, l1 + 1):
        for m2 in range(-l2, l2 + 1):
            M = m1 + m2
            if abs(M) <= L:
                out[m1 + l1, m2 + l2, M + L] = clebsch_gordan(l1, m1, l2, m2, L, M)
    return out


def _chains(ls: tuple[int, ...]) -> list[tuple[int, ...]]:
    """Intermediate couplings (L1 = l1, L2, ..., L_N = 0) allowed by the triangle rules."""
    chains = [(ls[0],)]
    for l in ls[1:]:
        chains = [c + (L,) for c in chains for L in range(abs(c[-1] - l), c[-1] + l + 1)]
    return [c for c in chains if c[-1] == 0]


def _complex_invariants(ls: tuple[int, ...]) -> np.ndarray:
    """Orthonormal L = 0 coupling tensors, shape (n_chains, 2l1+1, ..., 2lN+1)."""
    out = []
    for chain in _chains(ls):
        T = np.eye(2 * ls[0] + 1)
        for k in range(1, len(ls)):
            T = np.tensordot(T, cg_tensor(chain[k - 1], ls[k], chain[k]), axes=([-1], [0]))
        out.append(T[..., 0])
    if not out:
        return np.zeros((0,) + tuple(2 * l + 1 for l in ls))
    return np.stack(out)


def _to_real(U: np.ndarray, ls: tuple[int, ...]) -> np.ndarray:
    for t, l in enumerate(ls):
        U = np.moveaxis(np.tensordot(U, complex_to_real(l), axes=([t + 1], [0])), -1, t + 1)
    imag = np.abs(U.imag).max(initial=0.0)
    if imag > 1e-10 * max(1.0, np.abs(U.real).max(initial=0.0)):
        raise ArithmeticError(f"coupling for l = {ls} is not real (|Im| = {imag:g})")
    return U.real


def _class_representatives(ls, groups):
    """Real m-tuples with m non-decreasing inside each run of identical factors."""
    reps = []
    for ms in itertools.product(*[range(-l, l + 1) for l in ls]):
        if all(ms[t] >= ms[t - 1] for t in range(1, len(ms)) if groups[t] == groups[t - 1]):
            reps.append(ms)
    return reps


def _stabiliser(ms, groups) -> int:
    count = 1
    for g in set(groups):
        vals = [m for m, gg in zip(ms, groups) if gg == g]
        for v in set(vals):
            count *= math.factorial(vals.count(v))
    return count


@lru_cache(maxsize=None)
def coupled_block(ls: tuple[int, ...], groups: tuple[int, ...]):
    """Coupling of one block, for factors sorted by (l, n).

    ls: the l of each factor; groups: equal ids mark identical (n,l) factors (adjacent).
    Returns (C, reps): C (n_invariants, n_columns) and the m-tuple (real m) of each column.
    """
    U = _to_real(_complex_invariants(ls), ls)
    if U.shape[0] == 0:
        return np.zeros((0, 0)), []
    # permutation invariance: sum over the permutations of identical factors
    N = len(ls)
    perms = [p for p in itertools.permutations(range(N))
             if all(groups[p[t]] == groups[t] for t in range(N))]
    S = sum(np.transpose(U, (0,) + tuple(1 + q for q in p)) for p in perms)
    reps = _class_representatives(ls, groups)
    F = np.array([[S[(i,) + tuple(m + l for m, l in zip(ms, ls))] / _stabiliser(ms, groups)
                   for ms in reps] for i in range(U.shape[0])])
    keep = np.abs(F).max(axis=0) > ZERO_COLUMN_TOL
    F, reps = F[:, keep], [r for r, k in zip(reps, keep) if k]
    if F.shape[1] == 0:
        return np.zeros((0, 0)), []
    evals, evecs = np.linalg.eigh(F @ F.T)
    order = np.argsort(evals)[::-1]
    evals, evecs = evals[order], evecs[:, order]
    sel = evals > RANK_TOL
    C = np.sqrt(evals[sel])[:, None] * (evecs[:, sel].T @ F)
    return C, reps
