"""Cell-list neighbour list (numba), for any mix of periodic and open directions.

    first, j, R = neighbour_list(positions, cell, pbc, rcut)

Pairs are grouped by centre atom i in CSR form: the pairs of atom i are ``first[i]:first[i+1]``,
``j`` holds the original index of the neighbour and ``R = r_j + S @ cell - r_i`` (S integer, zero in
open directions) the vector from i to that image of j. Every pair with ``|R| < rcut`` is listed except
the zero self vector (i, i, S=0); other images of atom i are included, and distinct atoms on top of
each other appear with ``R = 0`` so that ``min_distance(R)`` can reveal them. The list is full (i->j and
j->i); within each i pairs are sorted by j, then by S (lexicographic), independently of the binning.

Method: the basis used for binning is a reduced (short, nearly orthogonal) basis of the periodic
lattice, completed by an orthonormal complement for open directions (so these never depend on the
possibly zero or arbitrary cell rows there). Positions are wrapped into the cell along periodic directions, binned into a grid whose
bins are about rcut / ``_BINS_PER_CUTOFF`` thick (thicker in small systems), and every atom scans
the (2m+1)^3 bin images around it; for cells thinner than ``rcut`` m grows, which enumerates all periodic
images. Along the innermost direction the scanned bins are visited as runs of consecutive bins,
whose atoms are contiguous in bin order. Candidates within reach are gathered without branching,
then turned into pairs. Up to a few million candidates the search runs in one pass into scratch
sized by the exact candidate count (per block of atoms when threaded), then copied out; larger
searches count, then fill, so the output is allocated exactly once.
"""
from __future__ import annotations

import math

import numpy as np
from numba import njit, prange

from aceserver.errors import ACEInputError

__all__ = ["neighbour_list", "min_distance", "DEFAULT_MAX_PAIRS", "DEFAULT_MAX_NEIGHBOURS"]

# Limits that turn absurd inputs (a 0.1 Å periodic cell with rcut 6, a unit mix-up) into a clear
# error instead of minutes of work or an out-of-memory crash. ~40 bytes per pair are allocated.
DEFAULT_MAX_PAIRS = 50_000_000
DEFAULT_MAX_NEIGHBOURS = 20_000  # per atom; dense solids at rcut ~10 Å have a few thousand
_MAX_BIN_IMAGES = 50_000_000  # bins x scanned bin images, checked before any per-atom work
_WORK_PER_PAIR = 64  # candidate visits allowed per permitted pair (~5-30 in practice) ...
_WORK_FREE = 200_000_000  # ... plus this many (a fraction of a second) whatever the pair limits

# Bins are 1/_BINS_PER_CUTOFF of the cutoff thick (when the cell allows): 2 scans (2*2+1)^3 bins of
# (rcut/2)^3, ~40% less volume than 27 bins of rcut^3, for a little more loop overhead.
_BINS_PER_CUTOFF = 2
_ONE_PASS_MAX_VISITS = 2_000_000  # searches with at most this many candidate checks run in one
                                  # pass, into scratch of that size (≤ 80 MB, a fifth written)
# Relative slack on bin geometry and on the candidate test, so that rounding (in positions far from
# the origin, or on bin boundaries) can never drop a pair; the final test on R is exact.
_SLACK = 1e-8


# ---------------------------------------------------------------------------------------------
# numba kernels
# ---------------------------------------------------------------------------------------------


@njit(cache=True, nogil=True)
def _fractional(positions, inv_basis, periodic, cell_p):
    """Fractional coordinates in the binning basis, wrapped into [0, 1) along periodic directions.

    Returns s (N,3), the integer wraps n (N,3) with r = r_wrapped + n @ cell, and r_wrapped (N,3).
    """
    N = positions.shape[0]
    s = np.empty((N, 3))
    n = np.zeros((N, 3), dtype=np.int64)
    w = np.empty((N, 3))
    for i in range(N):
        for k in range(3):
            s[i, k] = (positions[i, 0] * inv_basis[0, k] + positions[i, 1] * inv_basis[1, k]
                       + positions[i, 2] * inv_basis[2, k])
        for k in range(3):
            if periodic[k]:
                f = math.floor(s[i, k])
                n[i, k] = np.int64(f)
                s[i, k] -= f
        for k in range(3):
            w[i, k] = (positions[i, k] - n[i, 0] * cell_p[0, k] - n[i, 1] * cell_p[1, k]
                       - n[i, 2] * cell_p[2, k])
    return s, n, w


@njit(cache=True, nogil=True)
def _frame(positions, inv_basis, periodic, basis):
    """Everything per atom that the bin geometry needs, in one call (each numpy call on these
    small arrays costs microseconds, which add up to most of a small cell's search): the
    periodic lattice cell_p, the fractional coordinates (see _fractional), how many cells away
    the farthest atom lies, the largest coordinate scale, and the range of s."""
    cell_p = np.zeros((3, 3))
    reach = 0.0
    scale = 0.0
    for k in range(3):
        if periodic[k]:
            for c in range(3):
                cell_p[k, c] = basis[k, c]
                scale += abs(basis[k, c])
    big = 0.0
    for i in range(positions.shape[0]):
        for k in range(3):
            big = max(big, abs(positions[i, k]))
            if periodic[k]:
                f = (positions[i, 0] * inv_basis[0, k] + positions[i, 1] * inv_basis[1, k]
                     + positions[i, 2] * inv_basis[2, k])
                reach = max(reach, abs(f))
    s, n, w = _fractional(positions, inv_basis, periodic, cell_p)
    s_min = np.empty(3)
    s_max = np.empty(3)
    for k in range(3):
        s_min[k] = np.inf
        s_max[k] = -np.inf
    for i in range(s.shape[0]):
        for k in range(3):
            s_min[k] = min(s_min[k], s[i, k])
            s_max[k] = max(s_max[k], s[i, k])
    return cell_p, s, n, w, reach, big + scale, s_min, s_max


@njit(cache=True, nogil=True)
def _bin_atoms(s, lo, width, nb):
    """Counting sort of atoms into bins; returns per-atom bin coordinates, bin offsets, atom order."""
    N = s.shape[0]
    nbins = nb[0] * nb[1] * nb[2]
    cbin = np.empty((N, 3), dtype=np.int64)
    start = np.zeros(nbins + 1, dtype=np.int64)
    flat = np.empty(N, dtype=np.int64)
    for i in range(N):
        for k in range(3):
            c = np.int64(math.floor((s[i, k] - lo[k]) / width[k]))
            # s == 1.0 after wrapping a tiny negative value, or the top edge of an open direction
            if c < 0:
                c = 0
            elif c >= nb[k]:
                c = nb[k] - 1
            cbin[i, k] = c
        b = (cbin[i, 0] * nb[1] + cbin[i, 1]) * nb[2] + cbin[i, 2]
        flat[i] = b
        start[b + 1] += 1
    for b in range(nbins):
        start[b + 1] += start[b]
    order = np.empty(N, dtype=np.int64)
    fill = start[:-1].copy()
    for i in range(N):  # stable: atoms stay in index order inside a bin
        order[fill[flat[i]]] = i
        fill[flat[i]] += 1
    return cbin, start, order


@njit(cache=True, nogil=True)
def _scan_table(nb, m, periodic):
    """For bin c and offset d in [-m, m] along one direction: the bin scanned and its periodic image
    (bin -1 past the edge of an open direction). Tables spare integer divisions in the hot loop."""
    tb = np.empty((nb, 2 * m + 1), dtype=np.int64)
    tg = np.zeros((nb, 2 * m + 1), dtype=np.int64)
    for c in range(nb):
        for a in range(2 * m + 1):
            x = c + a - m
            if periodic:
                g = x // nb  # floor division: the periodic image the bin lies in
                tg[c, a] = g
                tb[c, a] = x - g * nb
            else:
                tb[c, a] = x if 0 <= x < nb else -1
    return tb, tg


@njit(cache=True, nogil=True)
def _segment_table(nb, m, periodic):
    """The scan of _scan_table along the innermost direction as runs of consecutive bins in one
    periodic image: for bin c, seg_n[c] runs, run s covering bins seg_lo[c, s]..seg_hi[c, s]-1 of
    image seg_g[c, s]. The atoms of a run are contiguous in bin order, so the pair search loops
    over them at once instead of bin by bin (bins hold one or two atoms)."""
    tb, tg = _scan_table(nb, m, periodic)
    seg_n = np.zeros(nb, dtype=np.int64)
    seg_lo = np.zeros((nb, 2 * m + 1), dtype=np.int64)
    seg_hi = np.zeros((nb, 2 * m + 1), dtype=np.int64)
    seg_g = np.zeros((nb, 2 * m + 1), dtype=np.int64)
    for c in range(nb):
        k = -1
        for a in range(2 * m + 1):
            b = tb[c, a]
            if b < 0:
                continue
            if k >= 0 and tg[c, a] == seg_g[c, k] and b == seg_hi[c, k]:
                seg_hi[c, k] = b + 1
            else:
                k += 1
                seg_lo[c, k] = b
                seg_hi[c, k] = b + 1
                seg_g[c, k] = tg[c, a]
        seg_n[c] = k + 1
    return seg_n, seg_lo, seg_hi, seg_g


@njit(cache=True, nogil=True)
def _bin_visits(start, nb, m, periodic):
    """Per bin, how many candidate atoms (atom images) the scan of one of its atoms visits.

    The scanned bins are a product of per-direction offsets, so the count is a box sum done one
    direction at a time (a periodic bin seen through several images counts once per image)."""
    tb0, _ = _scan_table(nb[0], m[0], periodic[0])
    tb1, _ = _scan_table(nb[1], m[1], periodic[1])
    tb2, _ = _scan_table(nb[2], m[2], periodic[2])
    n0, n1, n2 = nb[0], nb[1], nb[2]
    occ = np.empty((n0, n1, n2), dtype=np.int64)
    for b0 in range(n0):
        for b1 in range(n1):
            for b2 in range(n2):
                b = (b0 * n1 + b1) * n2 + b2
                occ[b0, b1, b2] = start[b + 1] - start[b]
    s2 = np.zeros((n0, n1, n2), dtype=np.int64)
    for b0 in range(n0):
        for b1 in range(n1):
            for b2 in range(n2):
                for a in range(2 * m[2] + 1):
                    c = tb2[b2, a]
                    if c >= 0:
                        s2[b0, b1, b2] += occ[b0, b1, c]
    s1 = np.zeros((n0, n1, n2), dtype=np.int64)
    for b0 in range(n0):
        for b1 in range(n1):
            for a in range(2 * m[1] + 1):
                c = tb1[b1, a]
                if c >= 0:
                    for b2 in range(n2):
                        s1[b0, b1, b2] += s2[b0, c, b2]
    seen = np.zeros(n0 * n1 * n2, dtype=np.int64)
    for b0 in range(n0):
        for a in range(2 * m[0] + 1):
            c = tb0[b0, a]
            if c >= 0:
                for b1 in range(n1):
                    for b2 in range(n2):
                        seen[(b0 * n1 + b1) * n2 + b2] += s1[c, b1, b2]
    return seen


@njit(cache=True, nogil=True)
def _count_visits(start, nb, m, periodic):
    """Exact number of candidate (atom, atom image) visits the pair passes will make, and the
    visits per atom of every bin."""
    seen = _bin_visits(start, nb, m, periodic)
    total = 0
    for b in range(seen.shape[0]):
        total += (start[b + 1] - start[b]) * seen[b]
    return total, seen


@njit(cache=True, nogil=True)
def _bin_and_count(s, lo, width, nb, m, periodic):
    """_bin_atoms and _count_visits in one call; also the most candidates one atom visits."""
    cbin, start, order = _bin_atoms(s, lo, width, nb)
    visits, seen = _count_visits(start, nb, m, periodic)
    return cbin, start, order, visits, seen, seen.max()


@njit(cache=True, nogil=True)
def _pairs_range(lo, hi, p, positions, wrapped, binned, n, cell_p, cbin, start, order, nb, m,
                 rs2, rc2, nkey, tb0, tg0, tb1, tg1, sn2, slo2, shi2, sg2, fill, keyed, append,
                 first, out_j, out_R, out_key, key_T, key_H, key_sp, counts, cap):
    """Pair search for the centre atoms lo..hi-1: counts[i] gets atom i's pair count; with fill
    its pairs are written too (with keyed, their sort keys), from slot first[i] on, or with
    append after the previous atom's pairs from slot p on (first[i] then gets the slot).
    cap: the most candidates one atom visits. Returns the slot after the last pair written."""
    # Candidates are gathered without a branch (whether one lies within reach is a coin toss
    # the CPU cannot predict), then only those are turned into pairs.
    cand = np.empty(cap, dtype=np.int64)
    run_of = np.empty(cap, dtype=np.int64)
    run_g = np.empty(((2 * m[0] + 1) * (2 * m[1] + 1) * (2 * m[2] + 1), 3), dtype=np.int64)
    for i in range(lo, hi):
        ci0 = cbin[i, 0]
        ci1 = cbin[i, 1]
        ci2 = cbin[i, 2]
        if fill and append:
            first[i] = p
        elif fill:
            p = first[i]
        k = 0
        nr = 0
        for a0 in range(2 * m[0] + 1):
            c0 = tb0[ci0, a0]
            if c0 < 0:
                continue
            g0 = tg0[ci0, a0]
            # Cartesian shift of the scanned image relative to atom i, built up one direction a time
            u0 = g0 * cell_p[0, 0] - wrapped[i, 0]
            u1 = g0 * cell_p[0, 1] - wrapped[i, 1]
            u2 = g0 * cell_p[0, 2] - wrapped[i, 2]
            for a1 in range(2 * m[1] + 1):
                c1 = tb1[ci1, a1]
                if c1 < 0:
                    continue
                g1 = tg1[ci1, a1]
                v0 = u0 + g1 * cell_p[1, 0]
                v1 = u1 + g1 * cell_p[1, 1]
                v2 = u2 + g1 * cell_p[1, 2]
                base = (c0 * nb[1] + c1) * nb[2]
                for r in range(sn2[ci2]):
                    g2 = sg2[ci2, r]
                    t0 = v0 + g2 * cell_p[2, 0]
                    t1 = v1 + g2 * cell_p[2, 1]
                    t2 = v2 + g2 * cell_p[2, 2]
                    run_g[nr, 0] = g0
                    run_g[nr, 1] = g1
                    run_g[nr, 2] = g2
                    for q in range(start[base + slo2[ci2, r]], start[base + shi2[ci2, r]]):
                        d0 = binned[q, 0] + t0
                        d1 = binned[q, 1] + t1
                        d2 = binned[q, 2] + t2
                        cand[k] = q
                        run_of[k] = nr
                        k += d0 * d0 + d1 * d1 + d2 * d2 < rs2
                    nr += 1
        cnt = 0
        for t in range(k):
            j = order[cand[t]]
            g0 = run_g[run_of[t], 0]
            g1 = run_g[run_of[t], 1]
            g2 = run_g[run_of[t], 2]
            if j == i and g0 == 0 and g1 == 0 and g2 == 0:
                continue
            # the returned vector is built from the caller's positions (R = r_j + S@cell - r_i),
            # and the strict cutoff is applied to exactly that vector
            S0 = g0 + n[i, 0] - n[j, 0]
            S1 = g1 + n[i, 1] - n[j, 1]
            S2 = g2 + n[i, 2] - n[j, 2]
            R0 = positions[j, 0] - positions[i, 0] + (
                S0 * cell_p[0, 0] + S1 * cell_p[1, 0] + S2 * cell_p[2, 0])
            R1 = positions[j, 1] - positions[i, 1] + (
                S0 * cell_p[0, 1] + S1 * cell_p[1, 1] + S2 * cell_p[2, 1])
            R2 = positions[j, 2] - positions[i, 2] + (
                S0 * cell_p[0, 2] + S1 * cell_p[1, 2] + S2 * cell_p[2, 2])
            if R0 * R0 + R1 * R1 + R2 * R2 >= rc2:
                continue
            if fill:
                out_j[p] = j
                out_R[p, 0] = R0
                out_R[p, 1] = R1
                out_R[p, 2] = R2
            if fill and keyed:
                h0 = g0 * key_T[0, 0] + g1 * key_T[1, 0] + g2 * key_T[2, 0] + key_H[0]
                h1 = g0 * key_T[0, 1] + g1 * key_T[1, 1] + g2 * key_T[2, 1] + key_H[1]
                h2 = g0 * key_T[0, 2] + g1 * key_T[1, 2] + g2 * key_T[2, 2] + key_H[2]
                out_key[p] = j * nkey + (h0 * key_sp[1] + h1) * key_sp[2] + h2
            p += 1
            cnt += 1
        counts[i] = cnt
    return p


@njit(cache=True, nogil=True)
def _pair_setup(wrapped, order, nb, m, periodic, rsearch, rcut, key_sp):
    """Scan tables and bin-ordered positions shared by all centre atoms."""
    N = wrapped.shape[0]
    tb0, tg0 = _scan_table(nb[0], m[0], periodic[0])
    tb1, tg1 = _scan_table(nb[1], m[1], periodic[1])
    sn2, slo2, shi2, sg2 = _segment_table(nb[2], m[2], periodic[2])
    # wrapped positions in bin order: the innermost loop reads memory contiguously
    binned = np.empty((N, 3))
    for q in range(N):
        for k in range(3):
            binned[q, k] = wrapped[order[q], k]
    return (binned, rsearch * rsearch, rcut * rcut, key_sp[0] * key_sp[1] * key_sp[2],
            tb0, tg0, tb1, tg1, sn2, slo2, shi2, sg2)


@njit(cache=True, nogil=True)
def _pairs(positions, wrapped, n, cell_p, cbin, start, order, nb, m, periodic, rsearch, rcut,
           fill, keyed, first, out_j, out_R, out_key, key_T, key_H, key_sp, cap):
    """Both passes in one kernel: with fill=False return the pair count of every atom; with
    fill=True write j, R (and with keyed a sort key) into the CSR slots given by ``first``.

    The key orders pairs by j, then by h = g @ key_T (g: the image scanned, in the basis cell_p);
    with key_T the matrix from cell_p to the caller's cell, h differs from the caller's S only by
    a constant for fixed i, j, so the key orders by S. key_H, key_sp: offset and span of h.
    """
    N = positions.shape[0]
    counts = np.zeros(N, dtype=np.int64)
    binned, rs2, rc2, nkey, tb0, tg0, tb1, tg1, sn2, slo2, shi2, sg2 = _pair_setup(
        wrapped, order, nb, m, periodic, rsearch, rcut, key_sp)
    _pairs_range(0, N, 0, positions, wrapped, binned, n, cell_p, cbin, start, order, nb, m, rs2,
                 rc2, nkey, tb0, tg0, tb1, tg1, sn2, slo2, shi2, sg2, fill, keyed, False, first,
                 out_j, out_R, out_key, key_T, key_H, key_sp, counts, cap)
    return counts


@njit(cache=True, nogil=True)
def _pairs_one_pass(positions, wrapped, n, cell_p, cbin, start, order, nb, m, periodic, rsearch,
                    rcut, keyed, first, out_j, out_R, out_key, key_T, key_H, key_sp, cap):
    """Serial search in one pass: atom i's pairs are appended after atom i-1's (first filled as
    it goes), into outputs sized by the exact candidate count (an upper bound on the pairs)."""
    N = positions.shape[0]
    counts = np.zeros(N, dtype=np.int64)
    binned, rs2, rc2, nkey, tb0, tg0, tb1, tg1, sn2, slo2, shi2, sg2 = _pair_setup(
        wrapped, order, nb, m, periodic, rsearch, rcut, key_sp)
    first[N] = _pairs_range(0, N, 0, positions, wrapped, binned, n, cell_p, cbin, start, order,
                            nb, m, rs2, rc2, nkey, tb0, tg0, tb1, tg1, sn2, slo2, shi2, sg2,
                            True, keyed, True, first, out_j, out_R, out_key, key_T, key_H,
                            key_sp, counts, cap)
    return counts


@njit(cache=True, nogil=True, parallel=True)
def _pairs_parallel(positions, wrapped, n, cell_p, cbin, start, order, nb, m, periodic, rsearch,
                    rcut, fill, keyed, first, out_j, out_R, out_key, key_T, key_H, key_sp, cap,
                    n_chunks):
    """_pairs with the centre atoms split into n_chunks blocks on numba's threads."""
    N = positions.shape[0]
    counts = np.zeros(N, dtype=np.int64)
    binned, rs2, rc2, nkey, tb0, tg0, tb1, tg1, sn2, slo2, shi2, sg2 = _pair_setup(
        wrapped, order, nb, m, periodic, rsearch, rcut, key_sp)
    n_chunks = max(1, min(N, n_chunks))
    for c in prange(n_chunks):
        _pairs_range(c * N // n_chunks, (c + 1) * N // n_chunks, 0, positions, wrapped, binned,
                     n, cell_p, cbin, start, order, nb, m, rs2, rc2, nkey, tb0, tg0, tb1, tg1,
                     sn2, slo2, shi2, sg2, fill, keyed, False, first, out_j, out_R, out_key,
                     key_T, key_H, key_sp, counts, cap)
    return counts


@njit(cache=True, nogil=True, parallel=True)
def _pairs_parallel_one_pass(positions, wrapped, n, cell_p, cbin, start, order, nb, m, periodic,
                             rsearch, rcut, keyed, seen, key_T, key_H, key_sp, cap, n_chunks):
    """The search in one pass on numba's threads. Each block of centre atoms appends its pairs to
    its own stretch of a scratch buffer, sized by the block's exact candidate count; the blocks
    are then copied, in parallel, into outputs of the exact size. Returns first, counts, j, R and
    the sort keys (empty unless keyed)."""
    N = positions.shape[0]
    counts = np.zeros(N, dtype=np.int64)
    binned, rs2, rc2, nkey, tb0, tg0, tb1, tg1, sn2, slo2, shi2, sg2 = _pair_setup(
        wrapped, order, nb, m, periodic, rsearch, rcut, key_sp)
    n_chunks = max(1, min(N, n_chunks))
    # scratch stretch of every block: the candidates its atoms visit (seen: per bin)
    room = np.zeros(n_chunks + 1, dtype=np.int64)
    for c in range(n_chunks):
        v = 0
        for i in range(c * N // n_chunks, (c + 1) * N // n_chunks):
            v += seen[(cbin[i, 0] * nb[1] + cbin[i, 1]) * nb[2] + cbin[i, 2]]
        room[c + 1] = room[c] + v
    buf_j = np.empty(room[n_chunks], dtype=np.int64)
    buf_R = np.empty((room[n_chunks], 3))
    buf_key = np.empty(room[n_chunks] if keyed else 0, dtype=np.int64)
    at = np.empty(N + 1, dtype=np.int64)
    for c in prange(n_chunks):
        _pairs_range(c * N // n_chunks, (c + 1) * N // n_chunks, room[c], positions, wrapped,
                     binned, n, cell_p, cbin, start, order, nb, m, rs2, rc2, nkey, tb0, tg0,
                     tb1, tg1, sn2, slo2, shi2, sg2, True, keyed, True, at, buf_j, buf_R,
                     buf_key, key_T, key_H, key_sp, counts, cap)
    first = np.zeros(N + 1, dtype=np.int64)
    for i in range(N):
        first[i + 1] = first[i] + counts[i]
    P = first[N]
    out_j = np.empty(P, dtype=np.int64)
    out_R = np.empty((P, 3))
    out_key = np.empty(P if keyed else 0, dtype=np.int64)
    for c in prange(n_chunks):
        lo = c * N // n_chunks
        hi = (c + 1) * N // n_chunks
        if hi == lo:
            continue
        shift = at[lo] - first[lo]
        for q in range(first[lo], first[hi]):
            out_j[q] = buf_j[q + shift]
            out_R[q, 0] = buf_R[q + shift, 0]
            out_R[q, 1] = buf_R[q + shift, 1]
            out_R[q, 2] = buf_R[q + shift, 2]
            if keyed:
                out_key[q] = buf_key[q + shift]
    return first, counts, out_j, out_R, out_key


@njit(cache=True, nogil=True)
def _sort_pairs(first, out_j, out_R, out_key):
    """Sort the pairs of every atom by key, in place."""
    _sort_range(0, first.shape[0] - 1, first, out_j, out_R, out_key)


@njit(cache=True, nogil=True, parallel=True)
def _sort_pairs_parallel(first, out_j, out_R, out_key, n_chunks):
    """_sort_pairs over n_chunks blocks of atoms on numba's threads."""
    N = first.shape[0] - 1
    n_chunks = max(1, min(N, n_chunks))
    for c in prange(n_chunks):
        _sort_range(c * N // n_chunks, (c + 1) * N // n_chunks, first, out_j, out_R, out_key)


@njit(cache=True, nogil=True)
def _sort_range(lo, hi, first, out_j, out_R, out_key):
    """Insertion sort of the pairs of atoms lo..hi-1 by key: lists are short and the bin scan
    leaves them partly ordered; argsort beyond that."""
    for i in range(lo, hi):
        a = first[i]
        b = first[i + 1]
        if b - a > 256:
            perm = np.argsort(out_key[a:b]) + a
            out_key[a:b] = out_key[perm]
            out_j[a:b] = out_j[perm]
            out_R[a:b] = out_R[perm]
            continue
        for p in range(a + 1, b):
            key = out_key[p]
            if out_key[p - 1] <= key:
                continue
            jj = out_j[p]
            r0 = out_R[p, 0]
            r1 = out_R[p, 1]
            r2 = out_R[p, 2]
            q = p - 1
            while q >= a and out_key[q] > key:
                out_key[q + 1] = out_key[q]
                out_j[q + 1] = out_j[q]
                out_R[q + 1, 0] = out_R[q, 0]
                out_R[q + 1, 1] = out_R[q, 1]
                out_R[q + 1, 2] = out_R[q, 2]
                q -= 1
            out_key[q + 1] = key
            out_j[q + 1] = jj
            out_R[q + 1, 0] = r0
            out_R[q + 1, 1] = r1
            out_R[q + 1, 2] = r2


@njit(cache=True, nogil=True)
def _min_distance(R):
    best = np.inf
    for p in range(R.shape[0]):
        r2 = R[p, 0] * R[p, 0] + R[p, 1] * R[p, 1] + R[p, 2] * R[p, 2]
        if r2 < best:
            best = r2
    return math.sqrt(best)


# ---------------------------------------------------------------------------------------------
# Python wrapper: validation and the (3x3-sized) bin geometry
# ---------------------------------------------------------------------------------------------


@njit(cache=True, nogil=True)
def refresh_pairs(first_ref, nbr_ref, R_ref, disp, rcut):
    """The pairs within rcut (Å) of a list built with a larger cut-off, after the atoms moved by
    disp (N, 3) Å since it was built: R = R_ref + disp[j] - disp[i]. CSR as neighbour_list,
    in the reference order. Exact as long as no atom moved more than half the extra distance."""
    N = first_ref.shape[0] - 1
    rc2 = rcut * rcut
    first = np.zeros(N + 1, dtype=np.int64)
    nbr = np.empty(nbr_ref.shape[0], dtype=np.int64)     # at most every reference pair
    R = np.empty((nbr_ref.shape[0], 3))
    q = 0
    for i in range(N):
        for p in range(first_ref[i], first_ref[i + 1]):
            j = nbr_ref[p]
            x0 = R_ref[p, 0] + disp[j, 0] - disp[i, 0]
            x1 = R_ref[p, 1] + disp[j, 1] - disp[i, 1]
            x2 = R_ref[p, 2] + disp[j, 2] - disp[i, 2]
            if x0 * x0 + x1 * x1 + x2 * x2 < rc2:
                nbr[q] = j
                R[q, 0] = x0
                R[q, 1] = x1
                R[q, 2] = x2
                q += 1
        first[i + 1] = q
    nbr, R = nbr[:q], R[:q]
    return first, nbr, R


def min_distance(R) -> float:
    """Smallest |R| over the pairs of a neighbour list (``inf`` if there are none).

    Zero means two distinct atoms on top of each other (or an atom on its own periodic image).
    """
    R = np.ascontiguousarray(R, dtype=np.float64).reshape(-1, 3)
    return float(_min_distance(R))


def _validate(positions, cell, pbc, rcut):
    try:
        positions = np.array(positions, dtype=np.float64, order="C", copy=True)
    except (TypeError, ValueError) as exc:
        raise ACEInputError(f"positions must be an (N, 3) array of numbers: {exc}", "positions") from None
    if positions.size == 0:
        positions = positions.reshape(0, 3)
    if positions.ndim != 2 or positions.shape[1] != 3:
        raise ACEInputError(f"positions must have shape (N, 3), got {positions.shape}", "positions")
    if not np.all(np.isfinite(positions)):
        bad = int(np.nonzero(~np.all(np.isfinite(positions), axis=1))[0][0])
        raise ACEInputError(f"positions contain NaN or inf (first at atom {bad})", "positions")

    try:
        cell = np.array(cell, dtype=np.float64, order="C", copy=True)
    except (TypeError, ValueError) as exc:
        raise ACEInputError(f"cell must be a (3, 3) array of numbers: {exc}", "cell") from None
    if cell.shape != (3, 3):
        raise ACEInputError(f"cell must have shape (3, 3) (rows are lattice vectors), got {cell.shape}",
                            "cell")
    if not np.all(np.isfinite(cell)):
        raise ACEInputError("cell contains NaN or inf", "cell")

    pbc_arr = np.asarray(pbc)
    if pbc_arr.ndim == 0:
        pbc_arr = np.repeat(pbc_arr, 3)
    if pbc_arr.shape != (3,) or pbc_arr.dtype.kind not in "biu":
        raise ACEInputError(f"pbc must be 3 booleans, got {pbc!r}", "pbc")
    if pbc_arr.dtype.kind != "b" and not np.all((pbc_arr == 0) | (pbc_arr == 1)):
        raise ACEInputError(f"pbc must be 3 booleans, got {pbc!r}", "pbc")
    pbc_arr = pbc_arr.astype(bool)

    try:
        rcut = float(rcut)
    except (TypeError, ValueError):
        raise ACEInputError(f"rcut must be a number, got {rcut!r}", "rcut") from None
    if not (math.isfinite(rcut) and rcut > 0.0):
        raise ACEInputError(f"rcut must be finite and > 0, got {rcut}", "rcut")
    return positions, cell, pbc_arr, rcut


@njit(cache=True, nogil=True)
def _row(T, k, vecs):
    """Row k of T @ vecs."""
    v = np.zeros(3)
    for a in range(T.shape[0]):
        for c in range(3):
            v[c] += T[k, a] * vecs[a, c]
    return v


@njit(cache=True, nogil=True)
def _reduce_lattice(vecs):
    """Integer unimodular T such that T @ vecs is a short, nearly orthogonal basis of the same
    lattice. Binning a skewed cell in a reduced basis scans far fewer candidates; the pairs found
    are the same since both bases generate the same translations. (numba only to keep the per-call
    overhead small: this is 3x3 work.)"""
    p = vecs.shape[0]
    T = np.eye(p, dtype=np.int64)
    for _ in range(100):
        changed = False
        # pairwise (Gauss) step: b -= q a shortens b whenever |b.a| > |a|^2 / 2
        for a in range(p):
            for b in range(p):
                if a == b:
                    continue
                va = _row(T, a, vecs)
                vb = _row(T, b, vecs)
                x = np.dot(vb, va) / np.dot(va, va)
                if abs(x) > 0.5 + 1e-9:
                    q = np.int64(math.floor(x + 0.5))
                    for c in range(p):
                        T[b, c] -= q * T[a, c]
                    changed = True
        if p == 3:
            # the pairwise step can miss a shorter c +- a +- b
            for k in range(3):
                o1 = 1 if k == 0 else 0
                o2 = 1 if k == 2 else 2
                for s1 in (-1, 1):
                    for s2 in (-1, 1):
                        cand = T[k] + s1 * T[o1] + s2 * T[o2]
                        v = np.zeros(3)
                        for a in range(3):
                            for c in range(3):
                                v[c] += cand[a] * vecs[a, c]
                        vk = _row(T, k, vecs)
                        if np.dot(v, v) < np.dot(vk, vk) * (1.0 - 1e-9):
                            T[k] = cand
                            changed = True
        if not changed:
            break
    return T


def _binning_basis(cell, pbc):
    """Cached _cell_basis, the inverse of the basis and the lengths of its columns: MD and
    servers see the same cell call after call."""
    key = (cell.tobytes(), pbc.tobytes())
    hit = _BASIS_CACHE.get(key)
    if hit is None:
        basis, T = _cell_basis(cell, pbc)
        inv_basis = np.linalg.inv(basis)
        hit = (basis, T, inv_basis, np.linalg.norm(inv_basis, axis=0))
        for a in hit:
            a.flags.writeable = False    # shared between calls (and threads)
        if len(_BASIS_CACHE) >= 64:
            _BASIS_CACHE.clear()
        _BASIS_CACHE[key] = hit
    return hit


_BASIS_CACHE: dict = {}


def _cell_basis(cell, pbc):
    """Rows: a reduced basis of the periodic lattice, completed by an orthonormal basis of its
    orthogonal complement; and the integer T (3x3, identity on open directions) with
    basis[periodic] = T[periodic][:, periodic] @ cell[periodic].

    Raises ACEInputError when the periodic vectors are (nearly) linearly dependent or vanishing.
    """
    per = [k for k in range(3) if pbc[k]]
    opn = [k for k in range(3) if not pbc[k]]
    vecs = cell[per]
    lengths = np.linalg.norm(vecs, axis=1)
    for k, length in zip(per, lengths):
        if length < 1e-8:
            raise ACEInputError(
                f"the cell is degenerate: cell vector {k} has length {length:.3g} Å but direction {k} "
                f"is periodic", "cell")
    if len(per) >= 2:
        # volume (area) of the periodic vectors relative to the product of their lengths: a sine
        gram = vecs @ vecs.T
        sine = math.sqrt(max(np.linalg.det(gram), 0.0)) / math.prod(float(x) for x in lengths)
        if sine < 1e-6:
            raise ACEInputError(
                f"the periodic cell vectors {per} are (nearly) linearly dependent "
                f"(normalised volume {sine:.3g}); the cell is degenerate", "cell")
    Tp = _reduce_lattice(np.ascontiguousarray(vecs))
    vecs = Tp @ vecs
    T = np.eye(3, dtype=np.int64)
    T[np.ix_(per, per)] = Tp
    if len(per) == 3:
        comp = np.zeros((0, 3))
    elif len(per) == 2:
        nrm = np.cross(vecs[0], vecs[1])
        comp = (nrm / np.linalg.norm(nrm))[None, :]
    elif len(per) == 1:
        a = vecs[0] / lengths[0]
        e = np.zeros(3)
        e[int(np.argmin(np.abs(a)))] = 1.0
        u = e - (e @ a) * a
        u /= np.linalg.norm(u)
        comp = np.stack([u, np.cross(a, u)])
    else:
        comp = np.eye(3)
    basis = np.empty((3, 3))
    basis[per] = vecs
    basis[opn] = comp
    return basis, T


def _too_many(message, pbc):
    if pbc.any():
        hint = (" The periodic cell is too small for this cutoff (use a larger supercell), or the cell"
                " / positions are not in Å.")
    else:
        hint = " Check that positions are in Å, or raise max_pairs / max_neighbours."
    return ACEInputError(message + hint, "cell" if pbc.any() else "positions")


def _check_counts(counts, rcut, max_pairs, max_neighbours, pbc) -> int:
    """The total pair count, after checking it and the largest count of one atom."""
    total = int(counts.sum())
    worst = int(counts.max())
    if worst > max_neighbours:
        raise _too_many(f"atom {int(counts.argmax())} has {worst} neighbours within rcut = {rcut} Å "
                        f"(limit max_neighbours = {max_neighbours}).", pbc)
    if total > max_pairs:
        raise _too_many(f"{total} pairs within rcut = {rcut} Å exceed max_pairs = {max_pairs} "
                        f"(about {40 * total / 1e9:.1f} GB).", pbc)
    return total


def neighbour_list(positions, cell, pbc, rcut, *, max_pairs=DEFAULT_MAX_PAIRS,
                   max_neighbours=DEFAULT_MAX_NEIGHBOURS, n_chunks=1, sort=True):
    """Full neighbour list within ``rcut`` (Å), in CSR form grouped by centre atom.

    Parameters
    ----------
    positions : (N, 3) Å, any values (wrapped internally along periodic directions)
    cell : (3, 3) Å, rows are lattice vectors; rows of open directions are ignored (may be zero)
    pbc : (3,) bool (a single bool applies to all directions)
    rcut : float > 0
    max_pairs, max_neighbours : limits on the total pair count and on the pairs of any one atom;
        exceeding them (or needing more than about 64 candidate checks per permitted pair) raises
        ACEInputError before the output is allocated: field "cell" when any direction is periodic
        (the usual cause is a cell much smaller than rcut), else "positions".

    Returns
    -------
    first : (N+1,) int64, the pairs of atom i are ``first[i]:first[i+1]``
    j : (P,) int64, neighbour atom index
    R : (P, 3) float64, ``positions[j] + S @ cell - positions[i]`` (S integer; the shift is formed
        in a reduced basis of the same lattice, equal to S @ cell up to rounding) with
        0 <= |R| < rcut, sorted by (j, S) within each i. |R| = 0 only for distinct atoms on top of
        each other (see min_distance).
    n_chunks : blocks of centre atoms searched in parallel on numba's threads; 1 runs the serial
        kernels (safe from any thread). The result does not depend on it.
    sort : order each atom's pairs by (j, S). Without it the order is that of the bin scan: still
        the same for the same input, and cheaper (the evaluator does not need the order).
    """
    positions, cell, pbc, rcut = _validate(positions, cell, pbc, rcut)
    N = positions.shape[0]
    basis, T, inv_basis, recip = _binning_basis(cell, pbc)  # validates the cell even if N == 0
    if N == 0:
        return np.zeros(1, dtype=np.int64), np.zeros(0, dtype=np.int64), np.zeros((0, 3))

    # cell_p: the reduced lattice (zero rows along open directions, which never shift)
    cell_p, s, n, wrapped, reach, scale, s_min, s_max = _frame(positions, inv_basis, pbc, basis)
    if reach > 1e12:
        # the integer image of every atom must be exact (and fit int64)
        raise ACEInputError(f"positions lie about {reach:.3g} cells away from the periodic cell; "
                            "wrap them (or check units)", "positions")

    # Search radius with slack for rounding of large coordinates; R itself is tested exactly.
    rsearch = rcut * (1.0 + _SLACK) + 1e-12 * scale
    # |Δs_k| <= |ΔR| |b_k| with b_k the k-th reciprocal (column of inv_basis): the spacing of lattice
    # planes is 1/|b_k| (for open directions |b_k| = 1 and s_k is in Å).
    recip = recip.tolist()
    periodic = pbc.tolist()
    lo = [0.0, 0.0, 0.0]
    width = [1.0, 1.0, 1.0]
    nb = [1, 1, 1]  # Python ints until the grid is capped: open spans / rcut may exceed int64
    for k in range(3):
        if periodic[k]:
            nb[k] = max(1, int(math.floor(_BINS_PER_CUTOFF / (rsearch * recip[k] * (1.0 + 1e-6)))))
            width[k] = 1.0 / nb[k]
        else:
            lo[k] = float(s_min[k])
            width[k] = rsearch * (1.0 + 1e-6) / _BINS_PER_CUTOFF
            nb[k] = int(math.floor((float(s_max[k]) - lo[k]) / width[k])) + 1
    # Keep the grid O(N) (vacuum, isolated atoms far apart): coarsen the finest direction.
    max_bins = 2 * N + 64
    while math.prod(nb) > max_bins:
        k = nb.index(max(nb))
        if periodic[k]:
            nb[k] = max(1, nb[k] // 2)
            width[k] = 1.0 / nb[k]
        else:
            span = float(s_max[k]) - lo[k]
            width[k] *= 2.0
            nb[k] = int(math.floor(span / width[k])) + 1
    m_float = [rsearch * recip[k] / width[k] * (1.0 + _SLACK) for k in range(3)]
    m = [int(math.ceil(x)) for x in m_float]
    # bin images each atom scans: 2m+1 per direction, but never more than nb in an open direction
    images = math.prod(2 * m[k] + 1 if periodic[k] else min(2 * m[k] + 1, nb[k]) for k in range(3))
    if images * math.prod(nb) > _MAX_BIN_IMAGES:
        raise _too_many(f"rcut = {rcut} Å needs about {images:.3g} periodic images of the cell "
                        f"per atom.", pbc)

    cbin, start, order, visits, seen, cap = _bin_and_count(
        s, np.array(lo), np.array(width), np.array(nb, dtype=np.int64),
        np.array(m, dtype=np.int64), pbc)
    pair_limit = min(int(max_pairs), int(max_neighbours) * N)
    visits = int(visits)
    cap = int(cap)   # the most candidates one atom visits: the search's scratch
    if visits > _WORK_PER_PAIR * pair_limit + _WORK_FREE:
        raise _too_many(f"rcut = {rcut} Å would need about {visits:.3g} candidate pair checks "
                        f"(limit {_WORK_PER_PAIR * pair_limit + _WORK_FREE:.3g}).", pbc)

    # sort key: h = g @ T is the caller's shift up to a per-(i, j) constant; its range from the
    # largest image index scanned. Python ints to detect int64 overflow (absurdly skewed cells),
    # in which case pairs are ordered by the shift in the reduced basis instead.
    g_max = [m[k] // nb[k] + 1 if periodic[k] else 0 for k in range(3)]
    key_T = T
    Tl = T.tolist()
    key_H = [sum(g_max[a] * abs(Tl[a][k]) for a in range(3)) for k in range(3)]
    if N * math.prod(2 * h + 1 for h in key_H) >= 2**62:
        key_T = np.eye(3, dtype=np.int64)
        key_H = g_max
    key_sp = np.array([2 * h + 1 for h in key_H], dtype=np.int64)
    key_H = np.array(key_H, dtype=np.int64)
    nb = np.array(nb, dtype=np.int64)
    m = np.array(m, dtype=np.int64)

    par = n_chunks > 1
    if visits <= _ONE_PASS_MAX_VISITS:
        # one pass into scratch sized by the candidate count, instead of a counting pass and a
        # filling pass (the search is most of the cost of a small cell)
        if par:
            first, counts, out_j, out_R, out_key = _pairs_parallel_one_pass(
                positions, wrapped, n, cell_p, cbin, start, order, nb, m, pbc, rsearch, rcut,
                sort, seen, key_T, key_H, key_sp, cap, n_chunks)
            _check_counts(counts, rcut, max_pairs, max_neighbours, pbc)
        else:
            first = np.zeros(N + 1, dtype=np.int64)
            out_j = np.empty(visits, dtype=np.int64)
            out_R = np.empty((visits, 3))
            out_key = np.empty(visits if sort else 0, dtype=np.int64)
            counts = _pairs_one_pass(positions, wrapped, n, cell_p, cbin, start, order, nb, m,
                                     pbc, rsearch, rcut, sort, first, out_j, out_R, out_key,
                                     key_T, key_H, key_sp, cap)
            _check_counts(counts, rcut, max_pairs, max_neighbours, pbc)
            total = int(first[N])
            out_j, out_R = out_j[:total].copy(), out_R[:total].copy()
            out_key = out_key[:total] if sort else out_key
    else:
        first = np.zeros(N + 1, dtype=np.int64)
        dummy_j = np.zeros(0, dtype=np.int64)
        dummy_R = np.zeros((0, 3))
        search = _pairs_parallel if par else _pairs
        extra = (cap, n_chunks) if par else (cap,)
        counts = search(positions, wrapped, n, cell_p, cbin, start, order, nb, m, pbc, rsearch,
                        rcut, False, False, first, dummy_j, dummy_R, dummy_j, key_T, key_H, key_sp,
                        *extra)
        total = _check_counts(counts, rcut, max_pairs, max_neighbours, pbc)
        np.cumsum(counts, out=first[1:])
        out_j = np.empty(total, dtype=np.int64)
        out_R = np.empty((total, 3))
        out_key = np.empty(total if sort else 0, dtype=np.int64)
        search(positions, wrapped, n, cell_p, cbin, start, order, nb, m, pbc, rsearch, rcut,
               True, sort, first, out_j, out_R, out_key, key_T, key_H, key_sp, *extra)
    if sort and par:
        _sort_pairs_parallel(first, out_j, out_R, out_key, n_chunks)
    elif sort:
        _sort_pairs(first, out_j, out_R, out_key)
    return first, out_j, out_R
