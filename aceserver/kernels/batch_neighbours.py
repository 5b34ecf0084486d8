"""Neighbour lists of many small structures in one call (numba): `neighbours.neighbour_list`'s
own search, structure after structure inside one kernel, with no Python set-up per structure.

Structures are packed: atoms of structure s are ``offsets[s]:offsets[s+1]`` of ``positions``
(Å), its cell ``cells[s]`` (rows are lattice vectors, Å) and periodicity ``pbc[s]``. The output
is one CSR list over all atoms with neighbour indices into the packed atoms (structures never
share a pair); each structure's part is, pair for pair and bit for bit, what
``neighbour_list(..., sort=False)`` returns for it: the same binning basis (`bases`: the numpy
steps of `lattice.binning_basis` on all cells at once; the lattice reduction in `reduce_many`
takes `lattice._reduce_into`'s decisions with scalar dots where they are certain), the same
grid plan (`_grid`, the Python plan of `neighbour_list` in numba) and the same numba search
kernels (`neighbour_search`). Periodic images of cells much smaller than the cut-off are
scanned there as bin images.

Entry points: `bases` (all cells), `reduce_many`, `search` (many packed structures, one pass
each into one growing list) and `search_one` (one structure: `neighbour_list`'s path for small
structures).

A structure the per-structure search would refuse or treat otherwise (more than ``max_atoms``
atoms, a one-pass search over `_ONE_PASS_MAX_VISITS` candidates, the work or image limits,
atoms many cells away) gets status 1 and no pairs here: the caller runs `neighbour_list` on it,
which raises its error or searches it.
"""
from __future__ import annotations

import math

import numpy as np
from numba import njit

from .lattice import _candidate, _identity, _reduce_into, _shear
from .neighbour_search import (_BINS_PER_CUTOFF, _MAX_BIN_IMAGES, _ONE_PASS_MAX_VISITS, _SLACK,
                               _WORK_FREE, _WORK_PER_PAIR, bin_and_count, frame, pairs_one_pass)

_MIN_LENGTH = 1e-7   # Å: shorter periodic vectors go to the per-structure search (refused at 1e-8)
_MIN_SINE = 1e-5     # normalised volume: flatter cells too (refused below 1e-6)


# Bound on |d - d'| for two roundings d, d' of one 3-term dot product (any order, with or
# without FMA: each within γ3·Σ|x_i y_i| of the exact value, γ3 = 3u/(1 - 3u) ≈ 3.3e-16), with a
# factor ~3 of slack; and an absolute term for products in the subnormal range.
_DOT_REL = 2e-15
_DOT_ABS = 1e-290


@njit(cache=True, nogil=True, inline="always")
def _dot3(x0, x1, x2, y0, y1, y2):
    """x.y summed in order as scalars, and a bound on its distance to any other rounding of it."""
    p0, p1, p2 = x0 * y0, x1 * y1, x2 * y2
    return p0 + p1 + p2, _DOT_REL * (abs(p0) + abs(p1) + abs(p2)) + _DOT_ABS


@njit(cache=True, nogil=True, inline="always")
def _row3(T, k, vecs):
    """Row k of T @ vecs as `lattice._row_into` forms it (the same operations in the same
    order), as three scalars: no array passed to a call per row (that cost 16 ns a row)."""
    x0 = 0.0
    x1 = 0.0
    x2 = 0.0
    for a in range(T.shape[0]):
        t = T[k, a]
        x0 += t * vecs[a, 0]
        x1 += t * vecs[a, 1]
        x2 += t * vecs[a, 2]
    return x0, x1, x2


@njit(cache=True, nogil=True)
def _reduce_sure(vecs, T, cand):
    """`lattice._reduce_into` with scalar dot products instead of BLAS ddot (which takes most
    of its time on 3-vectors), written into T; returns False if a decision of the reduction
    (|x| against 0.5 + 1e-9, the rounding of x, a candidate's length against the row's) lies
    within the rounding bound of the dots, where ddot might decide otherwise: T is then
    unfinished and the caller runs `_reduce_into`. Returning True, every decision is the one
    `_reduce_into` takes, so T is its T exactly (rows are formed as `_row_into` forms them;
    only the dots differ)."""
    p = vecs.shape[0]
    _identity(T)
    for _ in range(100):
        changed = False
        for a in range(p):
            for b in range(p):
                if a == b:
                    continue
                a0, a1, a2 = _row3(T, a, vecs)
                b0, b1, b2 = _row3(T, b, vecs)
                num, en = _dot3(b0, b1, b2, a0, a1, a2)
                den, ed = _dot3(a0, a1, a2, a0, a1, a2)
                if not den - ed > 0.0:
                    return False
                x = num / den
                # |x - x'| for ddot's x': the dots' bounds through the division, two roundings
                mx = 2.0 * ((en + abs(x) * ed) / (den - ed) + 4.5e-16 * abs(x)) + _DOT_ABS
                if not abs(abs(x) - (0.5 + 1e-9)) > mx:
                    return False
                if abs(x) > 0.5 + 1e-9:
                    t = x + 0.5
                    frac = t - math.floor(t)
                    mt = mx + 4.5e-16 * (abs(t) + 1.0)
                    if not (frac > mt and frac < 1.0 - mt):
                        return False
                    _shear(T, a, b, np.int64(math.floor(t)))
                    changed = True
        if p == 3:
            for k in range(3):
                for s1 in (-1, 1):
                    for s2 in (-1, 1):
                        _candidate(T, k, s1, s2, cand)
                        c0 = 0.0
                        c1 = 0.0
                        c2 = 0.0
                        for a in range(3):
                            t = cand[a]
                            c0 += t * vecs[a, 0]
                            c1 += t * vecs[a, 1]
                            c2 += t * vecs[a, 2]
                        b0, b1, b2 = _row3(T, k, vecs)
                        A, eA = _dot3(c0, c1, c2, c0, c1, c2)
                        B, eB = _dot3(b0, b1, b2, b0, b1, b2)
                        shrink = 1.0 - 1e-9
                        if not abs(A - B * shrink) > 2.0 * (eA + eB + 2.3e-16 * B) + _DOT_ABS:
                            return False
                        if A < B * shrink:
                            for a in range(3):
                                T[k, a] = cand[a]
                            changed = True
        if not changed:
            return True
    return True


@njit(cache=True, nogil=True)
def reduce_many(vecs):
    """The lattice reduction (`lattice._reduce_into`) of every (p, 3) block of vecs (n, p, 3): T
    (n, p, p), bit for bit: by `_reduce_sure` where its decisions are certain (nearly every
    cell; several times faster), else by `_reduce_into` itself."""
    n, p = vecs.shape[0], vecs.shape[1]
    T = np.empty((n, p, p), dtype=np.int64)
    va = np.empty(3)
    vb = np.empty(3)
    cand = np.empty(p, dtype=np.int64)
    for s in range(n):
        v = np.ascontiguousarray(vecs[s])
        if not _reduce_sure(v, T[s], cand):
            _reduce_into(v, T[s], va, vb, cand)
    return T


@njit(cache=True, nogil=True)
def well_shaped(vecs):
    """Whether the (p, 3) periodic vectors of each of vecs (n, p, 3) are long enough (>=
    _MIN_LENGTH) and far enough from linearly dependent (sqrt(det Gram) / Π lengths >=
    _MIN_SINE) for the batched search; only compared with thresholds above the ones at which
    the per-structure search refuses a cell, so scalar arithmetic will do (a cell near them is
    searched one by one, with the same pairs). NaN: False."""
    n, p = vecs.shape[0], vecs.shape[1]
    good = np.empty(n, dtype=np.bool_)
    for s in range(n):
        v = vecs[s]
        ok = True
        prod = 1.0
        for a in range(p):
            length = math.sqrt(v[a, 0] * v[a, 0] + v[a, 1] * v[a, 1] + v[a, 2] * v[a, 2])
            ok = ok and length >= _MIN_LENGTH
            prod *= length
        if ok and p == 2:
            aa = v[0, 0] * v[0, 0] + v[0, 1] * v[0, 1] + v[0, 2] * v[0, 2]
            bb = v[1, 0] * v[1, 0] + v[1, 1] * v[1, 1] + v[1, 2] * v[1, 2]
            ab = v[0, 0] * v[1, 0] + v[0, 1] * v[1, 1] + v[0, 2] * v[1, 2]
            ok = math.sqrt(max(aa * bb - ab * ab, 0.0)) / prod >= _MIN_SINE
        elif ok and p == 3:
            vol = (v[0, 0] * (v[1, 1] * v[2, 2] - v[1, 2] * v[2, 1])
                   - v[0, 1] * (v[1, 0] * v[2, 2] - v[1, 2] * v[2, 0])
                   + v[0, 2] * (v[1, 0] * v[2, 1] - v[1, 1] * v[2, 0]))
            ok = abs(vol) / prod >= _MIN_SINE
        good[s] = ok
    return good


def _norms(rows):
    """np.linalg.norm of each row as a call of its own computes it (a dot product: numpy's
    norm along an axis sums the squares in another order)."""
    return np.array([np.linalg.norm(r) for r in rows])


@njit(cache=True, nogil=True)
def _column_norms(inv):
    """|column j| of each inv[s] (S, 3, 3): sqrt(x0² + x1² + x2²) summed in order, as
    `lattice._norms` and numpy's norm(axis=1) (a sequential add.reduce of 3) form it."""
    S = inv.shape[0]
    out = np.empty((S, 3))
    for s in range(S):
        for j in range(3):
            x0, x1, x2 = inv[s, 0, j], inv[s, 1, j], inv[s, 2, j]
            out[s, j] = math.sqrt(x0 * x0 + x1 * x1 + x2 * x2)
    return out


def bases(cells, pbc):
    """`lattice.binning_basis` of every structure, its numpy steps done on all cells of one
    periodicity at once (numpy's stacked inv, matmul, norm and cross give each matrix the bits
    of a call of its own): basis (S, 3, 3), inv_basis, recip (S, 3) and ok (S,), False where the
    per-structure search must judge the cell (nearly degenerate: it raises there)."""
    S = len(cells)
    if S == 0:
        return np.zeros((0, 3, 3)), np.zeros((0, 3, 3)), np.zeros((0, 3)), np.ones(0, dtype=bool)
    if pbc.all():
        # the usual batch (bulk cells): the reduced vectors are the bases, no pattern split
        vecs = np.ascontiguousarray(cells)
        ok = well_shaped(vecs)
        if ok.all():
            basis = reduce_many(vecs) @ vecs
        else:                           # the reduction only of cells it may divide by
            basis = np.empty((S, 3, 3))
            basis[:] = np.eye(3)
            good = np.ascontiguousarray(vecs[ok])
            basis[ok] = reduce_many(good) @ good
    else:
        basis, ok = _mixed_bases(cells, pbc)
    inv = np.linalg.inv(basis)
    return basis, inv, _column_norms(inv), ok


def _mixed_bases(cells, pbc):
    """`bases`' basis and ok for any periodicities: one pass per pbc pattern."""
    S = len(cells)
    basis = np.zeros((S, 3, 3))
    ok = np.ones(S, dtype=bool)
    code = pbc[:, 0] * 4 + pbc[:, 1] * 2 + pbc[:, 2]
    for pattern in np.unique(code).tolist():
        idx = np.flatnonzero(code == pattern)
        per = [k for k in range(3) if pattern >> (2 - k) & 1]
        opn = [k for k in range(3) if not pattern >> (2 - k) & 1]
        vecs = np.ascontiguousarray(cells[idx][:, per])          # (n, p, 3)
        good = well_shaped(vecs)
        if not good.all():
            ok[idx[~good]] = False
            idx, vecs = idx[good], vecs[good]
        if len(idx) == 0:
            continue
        red = reduce_many(vecs) @ vecs
        b = np.empty((len(idx), 3, 3))
        b[:, per] = red
        if len(per) == 2:
            nrm = np.cross(red[:, 0], red[:, 1])
            b[:, opn[0]] = nrm / _norms(nrm)[:, None]
        elif len(per) == 1:
            a = red[:, 0] / np.linalg.norm(vecs, axis=2)
            e = np.zeros_like(a)
            pick = np.argmin(np.abs(a), axis=1)
            e[np.arange(len(a)), pick] = 1.0
            u = e - a[np.arange(len(a)), pick][:, None] * a
            u /= _norms(u)[:, None]
            b[:, opn[0]] = u
            b[:, opn[1]] = np.cross(a, u)
        elif len(per) == 0:
            b[:] = np.eye(3)
        basis[idx] = b
    basis[~ok] = np.eye(3)
    return basis, ok


@njit(cache=True, nogil=True)
def _grid(positions, basis, inv_basis, recip, periodic, rcut, lo, width, nb, m):
    """`neighbour_list`'s grid plan for one structure (same operations, same order) into lo,
    width (3,) and nb, m (3,) int64 (scratch, set here): returns ok, and what the pair kernels
    take (see there). ok False: a limit or a check of the per-structure search applies."""
    N = positions.shape[0]
    cell_p, s, n, wrapped, reach, scale, s_min, s_max = frame(positions, inv_basis, periodic, basis)
    rsearch = rcut * (1.0 + _SLACK) + 1e-12 * scale
    for k in range(3):
        lo[k] = 0.0
        width[k] = 1.0
        nb[k] = 1
        m[k] = 0
    fail = (False, cell_p, n, wrapped, s, lo, width, nb, m, rsearch)
    if reach > 1e12:
        return fail
    for k in range(3):
        if periodic[k]:
            nb[k] = max(1, int(math.floor(_BINS_PER_CUTOFF / (rsearch * recip[k] * (1.0 + 1e-6)))))
            width[k] = 1.0 / nb[k]
        else:
            lo[k] = s_min[k]
            width[k] = rsearch * (1.0 + 1e-6) / _BINS_PER_CUTOFF
            span = math.floor((s_max[k] - lo[k]) / width[k])
            if span > 1e15:
                return fail
            nb[k] = int(span) + 1
    max_bins = 2 * N + 64
    while float(nb[0]) * float(nb[1]) * float(nb[2]) > max_bins:
        k = 0
        for kk in range(1, 3):
            if nb[kk] > nb[k]:
                k = kk
        if periodic[k]:
            nb[k] = max(1, nb[k] // 2)
            width[k] = 1.0 / nb[k]
        else:
            span = s_max[k] - lo[k]
            width[k] *= 2.0
            nb[k] = int(math.floor(span / width[k])) + 1
    images = 1.0
    for k in range(3):
        m[k] = int(math.ceil(rsearch * recip[k] / width[k] * (1.0 + _SLACK)))
        images *= (2 * m[k] + 1) if periodic[k] else min(2 * m[k] + 1, nb[k])
    if images * float(nb[0]) * float(nb[1]) * float(nb[2]) > _MAX_BIN_IMAGES:
        return fail
    return (True, cell_p, n, wrapped, s, lo, width, nb, m, rsearch)


@njit(cache=True, nogil=True)
def _fixed(max_atoms):
    """Scratch that `_one_pass` uses for every structure (reused, not allocated per structure):
    the grid plan's lo, width, nb, m; the unit keys of the unkeyed pass; first (max_atoms + 1)."""
    return (np.zeros(3), np.ones(3), np.ones(3, dtype=np.int64), np.zeros(3, dtype=np.int64),
            np.eye(3, dtype=np.int64), np.zeros(3, dtype=np.int64), np.ones(3, dtype=np.int64),
            np.zeros(max_atoms + 1, dtype=np.int64))


@njit(cache=True, nogil=True)
def _one_pass(a, b, positions, basis, inv_basis, recip, periodic, rcut, max_pairs,
              max_neighbours, scratch_j, scratch_R, counts, fixed):
    """The search of one structure in one pass into scratch (as neighbour_list's serial path;
    fixed: `_fixed`'s arrays, with room for b - a atoms); returns the pairs written (-1: status 1)."""
    pos = positions[a:b]
    lo, width, nb, m, key_T, key_H, key_sp, f_all = fixed
    ok, cell_p, n, wrapped, s, lo, width, nb, m, rsearch = _grid(pos, basis, inv_basis, recip,
                                                                  periodic, rcut, lo, width, nb, m)
    if not ok:
        return -1, scratch_j, scratch_R
    cbin, start, order, visits, seen, cap = bin_and_count(s, lo, width, nb, m, periodic)
    N = b - a
    pair_limit = min(max_pairs, max_neighbours * N)
    if visits > _WORK_PER_PAIR * pair_limit + _WORK_FREE or visits > _ONE_PASS_MAX_VISITS:
        return -1, scratch_j, scratch_R
    if scratch_j.shape[0] < visits:
        scratch_j = np.empty(2 * visits, dtype=np.int64)
        scratch_R = np.empty((2 * visits, 3))
    f = f_all[:N + 1]
    f[:] = 0
    c = pairs_one_pass(pos, wrapped, n, cell_p, cbin, start, order, nb, m, periodic, rsearch,
                       rcut, False, f, scratch_j, scratch_R, key_H, key_T, key_H, key_sp, cap)
    for i in range(N):
        counts[a + i] = c[i]
    return f[N], scratch_j, scratch_R


@njit(cache=True, nogil=True)
def search(positions, offsets, status, basis, inv_basis, recip, pbc, rcut, max_atoms,
                  max_pairs, max_neighbours):
    """All structures with status 0 (others are skipped; over max_atoms atoms, or a limit of
    the per-structure search: status set to 1), one pass each, appended to outputs grown by
    doubling. Returns first (N+1), nbr, R and the smallest |R|² of each structure (inf without
    pairs, the sum of squares `neighbour_search.smallest_distance` forms). Callers search parts of a batch on threads of their
    own (numba's threading layer made a two-pass threaded search slower than this one)."""
    S = offsets.shape[0] - 1
    N = positions.shape[0]
    counts = np.zeros(N, dtype=np.int64)
    first = np.zeros(N + 1, dtype=np.int64)
    nbr = np.empty(64 * N + 64, dtype=np.int64)
    R = np.empty((nbr.shape[0], 3))
    sj = np.empty(0, dtype=np.int64)
    sR = np.empty((0, 3))
    closest = np.full(S, np.inf)
    fixed = _fixed(max_atoms)
    P = 0
    for s in range(S):
        a, b = offsets[s], offsets[s + 1]
        got = -1
        if status[s] == 0 and b == a:
            continue
        if status[s] == 0 and b - a <= max_atoms:
            got, sj, sR = _one_pass(a, b, positions, basis[s], inv_basis[s], recip[s], pbc[s],
                                    rcut, max_pairs, max_neighbours, sj, sR, counts, fixed)
        if got < 0:
            if status[s] == 0:
                status[s] = 1
            for i in range(a, b):
                first[i + 1] = P
            continue
        if P + got > nbr.shape[0]:
            grow = max(2 * nbr.shape[0], P + got)
            nbr2 = np.empty(grow, dtype=np.int64)
            R2 = np.empty((grow, 3))
            nbr2[:P] = nbr[:P]
            R2[:P] = R[:P]
            nbr, R = nbr2, R2
        best = np.inf
        for q in range(got):
            nbr[P + q] = sj[q] + a
            r0, r1, r2 = sR[q, 0], sR[q, 1], sR[q, 2]
            R[P + q, 0] = r0
            R[P + q, 1] = r1
            R[P + q, 2] = r2
            r2 = r0 * r0 + r1 * r1 + r2 * r2      # as neighbour_search.smallest_distance
            if r2 < best:
                best = r2
        closest[s] = best
        for i in range(a, b):
            first[i + 1] = first[i] + counts[i]
        P += got
    return first, nbr[:P].copy(), R[:P].copy(), closest


@njit(cache=True, nogil=True)
def search_one(positions, basis, inv_basis, recip, periodic, rcut, max_pairs, max_neighbours):
    """One structure's search in one call (`neighbours.neighbour_list` for small structures):
    (ok, first, j, R, counts); ok False where a check of the full path applies (it runs then)."""
    N = positions.shape[0]
    counts = np.zeros(N, dtype=np.int64)
    sj = np.empty(0, dtype=np.int64)
    sR = np.empty((0, 3))
    got, sj, sR = _one_pass(0, N, positions, basis, inv_basis, recip, periodic, rcut, max_pairs,
                            max_neighbours, sj, sR, counts, _fixed(N))
    first = np.zeros(N + 1, dtype=np.int64)
    if got < 0:
        return False, first, sj[:0].copy(), sR[:0].copy(), counts
    for i in range(N):
        first[i + 1] = first[i] + counts[i]
    return True, first, sj[:got].copy(), sR[:got].copy(), counts
