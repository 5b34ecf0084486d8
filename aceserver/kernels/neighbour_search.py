"""The cell-list neighbour search kernels (numba): binning, the scan of bin images in runs of
consecutive bins, candidate gathering, pairs with their image vectors R (Å), sorting by (j, S),
the Verlet refresh and the smallest distance. `neighbours.neighbour_list` plans the grid, checks
the limits and calls these; see its module docstring for the method.
"""
from __future__ import annotations

import math

import numpy as np
from numba import njit, prange

# Limits and grid constants of the plan (`neighbours.neighbour_list`, `batch_neighbours`).
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
def frame(positions, inv_basis, periodic, basis):
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
def bin_and_count(s, lo, width, nb, m, periodic):
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
def pairs(positions, wrapped, n, cell_p, cbin, start, order, nb, m, periodic, rsearch, rcut,
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
def pairs_one_pass(positions, wrapped, n, cell_p, cbin, start, order, nb, m, periodic, rsearch,
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
def pairs_parallel(positions, wrapped, n, cell_p, cbin, start, order, nb, m, periodic, rsearch,
                    rcut, fill, keyed, first, out_j, out_R, out_key, key_T, key_H, key_sp, cap,
                    n_chunks):
    """pairs with the centre atoms split into n_chunks blocks on numba's threads."""
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
def pairs_parallel_one_pass(positions, wrapped, n, cell_p, cbin, start, order, nb, m, periodic,
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
def sort_pairs(first, out_j, out_R, out_key):
    """Sort the pairs of every atom by key, in place."""
    _sort_range(0, first.shape[0] - 1, first, out_j, out_R, out_key)


@njit(cache=True, nogil=True, parallel=True)
def sort_pairs_parallel(first, out_j, out_R, out_key, n_chunks):
    """sort_pairs over n_chunks blocks of atoms on numba's threads."""
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
def smallest_distance(R):
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


@njit(cache=True, nogil=True)
def refresh_near(first_ref, nbr_ref, R_ref, positions, positions_ref, rcut, max_move2):
    """`refresh_pairs` after the atoms moved from positions_ref to positions (N, 3) Å, if none
    moved more than sqrt(max_move2) Å (|d|² formed as ((d0² + d1²) + d2²)): (True, first, nbr,
    R); else (False, empty arrays) and the caller searches again. One call for the Verlet
    list's test and refresh (~7 µs less than numpy's steps on a 2-atom cell)."""
    N = positions.shape[0]
    disp = np.empty((N, 3))
    for i in range(N):
        d0 = positions[i, 0] - positions_ref[i, 0]
        d1 = positions[i, 1] - positions_ref[i, 1]
        d2 = positions[i, 2] - positions_ref[i, 2]
        if not d0 * d0 + d1 * d1 + d2 * d2 <= max_move2:
            return False, first_ref[:0].copy(), nbr_ref[:0].copy(), R_ref[:0].copy()
        disp[i, 0] = d0
        disp[i, 1] = d1
        disp[i, 2] = d2
    first, nbr, R = refresh_pairs(first_ref, nbr_ref, R_ref, disp, rcut)
    return True, first, nbr, R
