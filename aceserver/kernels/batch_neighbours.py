"""Neighbour lists of many small structures in one call (numba): periodic images enumerated
directly, no cell list, no per-structure Python set-up.

Structures are packed: atoms of structure s are ``offsets[s]:offsets[s+1]`` of ``positions``
(Å), its cell ``cells[s]`` (rows are lattice vectors, Å) and periodicity ``pbc[s]``. The output
is one CSR list over all atoms, as `neighbours.neighbour_list` gives it for each structure, with
neighbour indices into the packed atoms (structures never share a pair): the pairs of atom i are
``first[i]:first[i+1]``, ``R = r_j + S @ B - r_i`` with S integer in a reduced basis B of the
structure's periodic lattice, every pair with ``|R| < rcut`` except the zero self vector. Within
an atom pairs are ordered by j, then by S (lexicographic in B); `neighbour_list(sort=False)`
orders them by its bin scan, so per-site sums of the two lists can differ in rounding only.

Method (the cell is usually much smaller than the cut-off): B = T @ cell[periodic] with T a
unimodular integer matrix that makes B short and nearly orthogonal (`_reduce`, the reduction of
`lattice._reduce_lattice` without its allocations), its dual rows D (D_k · B_m = δ_km, in the periodic span). For a pair
with d = r_j - r_i, |d + S @ B| < rcut needs |D_k·d + S_k| < rcut |D_k| for every periodic k,
so S_k runs over an interval per direction; every S in the box is tested exactly. Cost: about
N² × Π_k (2 rcut |D_k| + 1) tests per structure, so this is for small structures only: `plan`
sends the others (and every cell the per-structure search would refuse or check more closely:
degenerate or skewed cells, atoms many cells away) back to `neighbour_list` (status 1).

Kernels: `plan` (per structure: lattice, test count, status), `count_pairs` (pairs per atom and
the smallest |R|² per structure), `fill_pairs` (j, R into CSR slots); serial, or over blocks of
structures on numba's threads (`*_parallel`).
"""
from __future__ import annotations

import math

import numpy as np
from numba import njit, prange


# Margins that send borderline structures to the per-structure search, whose own checks decide:
# the degenerate-cell tests there are |a_k| < 1e-8 Å and sine < 1e-6 on the caller's vectors.
_MIN_LENGTH = 1e-7        # Å
_MIN_SINE = 1e-5          # on the caller's periodic vectors
_MIN_REDUCED_SINE = 1e-2  # on the reduced basis: the dual rows are then accurate to ~1e-14
_MAX_REACH = 1e6          # cells: atoms farther from the origin go to the per-structure search
_INTERVAL_SLACK = 1e-6    # fractional units: rounding of D·d is below 1e-8 within these limits
_RCUT_SLACK = 1e-8        # relative


@njit(cache=True, nogil=True)
def _dual(B, p, D):
    """Rows 0..p-1 of D = (B Bᵀ)⁻¹ B (the dual of the first p rows of B); returns the sine
    V / Π|b_k| of those rows (1 for p <= 1)."""
    g = np.zeros((3, 3))
    for a in range(p):
        for b in range(p):
            g[a, b] = B[a, 0] * B[b, 0] + B[a, 1] * B[b, 1] + B[a, 2] * B[b, 2]
    gi = np.zeros((3, 3))
    if p == 1:
        det = g[0, 0]
        gi[0, 0] = 1.0 / det
    elif p == 2:
        det = g[0, 0] * g[1, 1] - g[0, 1] * g[1, 0]
        gi[0, 0] = g[1, 1] / det
        gi[1, 1] = g[0, 0] / det
        gi[0, 1] = -g[0, 1] / det
        gi[1, 0] = -g[1, 0] / det
    elif p == 3:
        det = (g[0, 0] * (g[1, 1] * g[2, 2] - g[1, 2] * g[2, 1])
               - g[0, 1] * (g[1, 0] * g[2, 2] - g[1, 2] * g[2, 0])
               + g[0, 2] * (g[1, 0] * g[2, 1] - g[1, 1] * g[2, 0]))
        for a in range(3):
            for b in range(3):
                a1, a2 = (a + 1) % 3, (a + 2) % 3
                b1, b2 = (b + 1) % 3, (b + 2) % 3
                gi[b, a] = (g[a1, b1] * g[a2, b2] - g[a1, b2] * g[a2, b1]) / det
    else:
        return 1.0
    for a in range(p):
        for c in range(3):
            t = 0.0
            for b in range(p):
                t += gi[a, b] * B[b, c]
            D[a, c] = t
    lengths = 1.0
    for a in range(p):
        lengths *= g[a, a]
    return math.sqrt(max(det, 0.0) / lengths)


@njit(cache=True, nogil=True)
def _dot(V, a, b):
    return V[a, 0] * V[b, 0] + V[a, 1] * V[b, 1] + V[a, 2] * V[b, 2]


@njit(cache=True, nogil=True)
def _reduce(vecs, p, T, V):
    """Integer unimodular T (p x p) such that V = T @ vecs is short and nearly orthogonal:
    pairwise (Gauss) steps b -= round(b·a / a·a) a, then c ± a ± b where shorter (p = 3). V and
    T are scratch of the caller; V is rebuilt from T at the end (one rounding per entry)."""
    for a in range(3):
        for b in range(3):
            T[a, b] = 1 if a == b else 0
            V[a, b] = vecs[a, b]
    for _ in range(100):
        changed = False
        for a in range(p):
            for b in range(p):
                if a == b:
                    continue
                x = _dot(V, b, a) / _dot(V, a, a)
                if abs(x) > 0.5 + 1e-9:
                    q = math.floor(x + 0.5)
                    for c in range(3):
                        T[b, c] -= np.int64(q) * T[a, c]
                        V[b, c] -= q * V[a, c]
                    changed = True
        if p == 3:
            for k in range(3):
                o1 = 1 if k == 0 else 0
                o2 = 1 if k == 2 else 2
                for s1 in (-1, 1):
                    for s2 in (-1, 1):
                        w0 = V[k, 0] + s1 * V[o1, 0] + s2 * V[o2, 0]
                        w1 = V[k, 1] + s1 * V[o1, 1] + s2 * V[o2, 1]
                        w2 = V[k, 2] + s1 * V[o1, 2] + s2 * V[o2, 2]
                        if w0 * w0 + w1 * w1 + w2 * w2 < _dot(V, k, k) * (1.0 - 1e-9):
                            for c in range(3):
                                T[k, c] += s1 * T[o1, c] + s2 * T[o2, c]
                            V[k, 0], V[k, 1], V[k, 2] = w0, w1, w2
                            changed = True
        if not changed:
            break
    for a in range(3):
        for c in range(3):
            t = 0.0
            if a < p:
                for m in range(p):
                    t += T[a, m] * vecs[m, c]
            V[a, c] = t


@njit(cache=True, nogil=True)
def _plan_one(s, positions, offsets, cells, pbc, rcut, max_atoms, max_tests, B, D, P, box,
              tests, status, vecs, T):
    """Lattice and test budget of structure s (see `plan`); vecs, T: scratch."""
    a, b = offsets[s], offsets[s + 1]
    n = b - a
    status[s] = 1
    if n > max_atoms:
        return
    p = 0
    for k in range(3):
        if pbc[s, k]:
            ln = 0.0
            for c in range(3):
                vecs[p, c] = cells[s, k, c]
                ln += cells[s, k, c] * cells[s, k, c]
            if not math.sqrt(ln) >= _MIN_LENGTH:
                return
            p += 1
    for k in range(p, 3):
        for c in range(3):
            vecs[k, c] = 0.0
    if not _dual(vecs, p, D[s]) >= _MIN_SINE:          # the caller's vectors: nearly dependent
        return
    _reduce(vecs, p, T, B[s])
    for k in range(3):
        for c in range(3):
            D[s, k, c] = 0.0
    if not _dual(B[s], p, D[s]) >= _MIN_REDUCED_SINE:
        return
    rs = rcut * (1.0 + _RCUT_SLACK)
    count = n * n
    for k in range(3):
        box[s, k] = 0
        if k < p:
            dn = math.sqrt(D[s, k, 0] ** 2 + D[s, k, 1] ** 2 + D[s, k, 2] ** 2)
            for i in range(a, b):
                f = D[s, k, 0] * positions[i, 0] + D[s, k, 1] * positions[i, 1] + D[s, k, 2] * positions[i, 2]
                if not abs(f) <= _MAX_REACH:
                    return
            box[s, k] = int(math.floor(2.0 * (rs * dn + _INTERVAL_SLACK))) + 1
            count *= box[s, k]
            if count > max_tests:
                return
    P[s] = p
    tests[s] = count
    status[s] = 0


@njit(cache=True, nogil=True)
def plan(positions, offsets, cells, pbc, rcut, max_atoms, max_tests):
    """Per structure: the reduced periodic lattice B (S, 3, 3) (rows 0..P-1), its dual D, the
    number of periodic directions P, the most S tested per pair and direction (box), an upper
    bound on the tests (N² Π box) and a status: 0 searched here, 1 by the per-structure search
    (more than max_atoms atoms, more than max_tests tests, or a cell or positions to check there)."""
    S = offsets.shape[0] - 1
    B = np.zeros((S, 3, 3))
    D = np.zeros((S, 3, 3))
    P = np.zeros(S, dtype=np.int64)
    box = np.zeros((S, 3), dtype=np.int64)
    tests = np.zeros(S, dtype=np.int64)
    status = np.ones(S, dtype=np.int64)
    vecs = np.zeros((3, 3))
    T = np.zeros((3, 3), dtype=np.int64)
    for s in range(S):
        _plan_one(s, positions, offsets, cells, pbc, rcut, max_atoms, max_tests, B, D, P, box,
                  tests, status, vecs, T)
    return B, D, P, box, tests, status


@njit(cache=True, nogil=True)
def _interval(Dk, d0, d1, d2, h):
    """The integers S with |Dk·d + S| <= h (plus slack)."""
    f = Dk[0] * d0 + Dk[1] * d1 + Dk[2] * d2
    return (np.int64(math.ceil(-f - h - _INTERVAL_SLACK)),
            np.int64(math.floor(-f + h + _INTERVAL_SLACK)))


@njit(cache=True, nogil=True)
def _search_one(s, positions, offsets, B, D, P, rcut, fill, first, counts, out_j, out_R):
    """Pairs of structure s: counts per atom (fill False) or written from first[i] on (fill
    True). Returns the smallest |R|² found (inf without pairs)."""
    a, b = offsets[s], offsets[s + 1]
    p = P[s]
    Bs = B[s]
    rs = rcut * (1.0 + _RCUT_SLACK)
    rc2 = rcut * rcut
    h = np.zeros(3)
    for k in range(p):
        h[k] = rs * math.sqrt(D[s, k, 0] ** 2 + D[s, k, 1] ** 2 + D[s, k, 2] ** 2)
    best = np.inf
    for i in range(a, b):
        q = first[i] if fill else 0
        cnt = 0
        for j in range(a, b):
            d0 = positions[j, 0] - positions[i, 0]
            d1 = positions[j, 1] - positions[i, 1]
            d2 = positions[j, 2] - positions[i, 2]
            lo0, hi0, lo1, hi1, lo2, hi2 = 0, 0, 0, 0, 0, 0
            if p > 0:
                lo0, hi0 = _interval(D[s, 0], d0, d1, d2, h[0])
            if p > 1:
                lo1, hi1 = _interval(D[s, 1], d0, d1, d2, h[1])
            if p > 2:
                lo2, hi2 = _interval(D[s, 2], d0, d1, d2, h[2])
            for S0 in range(lo0, hi0 + 1):
                for S1 in range(lo1, hi1 + 1):
                    for S2 in range(lo2, hi2 + 1):
                        if i == j and S0 == 0 and S1 == 0 and S2 == 0:
                            continue
                        R0 = d0 + (S0 * Bs[0, 0] + S1 * Bs[1, 0] + S2 * Bs[2, 0])
                        R1 = d1 + (S0 * Bs[0, 1] + S1 * Bs[1, 1] + S2 * Bs[2, 1])
                        R2 = d2 + (S0 * Bs[0, 2] + S1 * Bs[1, 2] + S2 * Bs[2, 2])
                        r2 = R0 * R0 + R1 * R1 + R2 * R2
                        if r2 >= rc2:
                            continue
                        if r2 < best:
                            best = r2
                        if fill:
                            out_j[q] = j
                            out_R[q, 0] = R0
                            out_R[q, 1] = R1
                            out_R[q, 2] = R2
                            q += 1
                        cnt += 1
        if not fill:
            counts[i] = cnt
    return best


@njit(cache=True, nogil=True)
def _count_range(lo, hi, positions, offsets, status, B, D, P, rcut, counts, closest):
    dummy_j = np.zeros(0, dtype=np.int64)
    dummy_R = np.zeros((0, 3))
    for s in range(lo, hi):
        if status[s] == 0:
            closest[s] = _search_one(s, positions, offsets, B, D, P, rcut, False, offsets,
                                     counts, dummy_j, dummy_R)


@njit(cache=True, nogil=True)
def count_pairs(positions, offsets, status, B, D, P, rcut):
    """Pairs per atom (zero for atoms of structures with status != 0) and the smallest |R|² of
    every structure (inf without pairs)."""
    S = offsets.shape[0] - 1
    counts = np.zeros(positions.shape[0], dtype=np.int64)
    closest = np.full(S, np.inf)
    _count_range(0, S, positions, offsets, status, B, D, P, rcut, counts, closest)
    return counts, closest


@njit(cache=True, nogil=True, parallel=True)
def count_pairs_parallel(positions, offsets, status, B, D, P, rcut, bounds):
    """count_pairs over the blocks of structures bounds[c]:bounds[c+1] on numba's threads."""
    S = offsets.shape[0] - 1
    counts = np.zeros(positions.shape[0], dtype=np.int64)
    closest = np.full(S, np.inf)
    for c in prange(bounds.shape[0] - 1):
        _count_range(bounds[c], bounds[c + 1], positions, offsets, status, B, D, P, rcut, counts,
                     closest)
    return counts, closest


@njit(cache=True, nogil=True)
def _fill_range(lo, hi, positions, offsets, status, B, D, P, rcut, first, out_j, out_R):
    dummy = np.zeros(0, dtype=np.int64)
    for s in range(lo, hi):
        if status[s] == 0:
            _search_one(s, positions, offsets, B, D, P, rcut, True, first, dummy, out_j, out_R)


@njit(cache=True, nogil=True)
def fill_pairs(positions, offsets, status, B, D, P, rcut, first, out_j, out_R):
    """Writes the pairs of the structures with status 0 into the CSR slots given by first (their
    counts as count_pairs gave them)."""
    _fill_range(0, offsets.shape[0] - 1, positions, offsets, status, B, D, P, rcut, first,
                out_j, out_R)


@njit(cache=True, nogil=True, parallel=True)
def fill_pairs_parallel(positions, offsets, status, B, D, P, rcut, first, out_j, out_R, bounds):
    """fill_pairs over the blocks of structures bounds[c]:bounds[c+1] on numba's threads."""
    for c in prange(bounds.shape[0] - 1):
        _fill_range(bounds[c], bounds[c + 1], positions, offsets, status, B, D, P, rcut, first,
                    out_j, out_R)
