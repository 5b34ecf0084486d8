"""Committee energies from the site pass's sums, and sums in numpy's order (numba).

An ace1 committee's members share the pass over the sites: the pass accumulates AA of every
site into SAA[z_i] (nz, n_nodes) and the pair-spline histogram into H (nz, nz, n_int, 4)
(`site_pass.pair_energy_grad`). Member m's total energy (eV) is then

    E_m = Σ_{z,k} coef[m, z, k] SAA[z, k] + Σ pair_spl[m] ⊙ H + Σ_i e0[z_i],

parameter sets m = 1..M-1 of the tables (set 0 is the model itself). `committee_totals` forms it
for one structure, `committee_totals_many` for many packed ones (sums per structure). The two
contractions are summed with eight interleaved partial sums (not numpy's einsum order: the
members' energies may differ from an einsum in the last bits, ~1e-16 relative).

`numpy_sum` is numpy's pairwise summation (what ``x[a:b].sum()`` gives for a contiguous float64
run), so that results compared with numpy's bit for bit (energies, spreads)
stay so; `spread` is ``np.std(x)`` (ddof 0) by numpy's own steps with it.
"""
from __future__ import annotations

import math

import numpy as np
from numba import njit

BLOCK = 128    # numpy's PW_BLOCKSIZE: runs up to this long are summed as one block


@njit(cache=True, nogil=True)
def _block_sum(x, a, b):
    """Σ x[a:b], b - a <= BLOCK, as numpy sums one block: fewer than 8 terms in order, else
    eight interleaved partial sums combined as a tree and the remainder added after."""
    n = b - a
    if n < 8:
        t = -0.0
        for i in range(a, b):
            t += x[i]
        return t
    r0, r1, r2, r3 = x[a], x[a + 1], x[a + 2], x[a + 3]
    r4, r5, r6, r7 = x[a + 4], x[a + 5], x[a + 6], x[a + 7]
    i = a + 8
    while i + 8 <= b:
        r0 += x[i]
        r1 += x[i + 1]
        r2 += x[i + 2]
        r3 += x[i + 3]
        r4 += x[i + 4]
        r5 += x[i + 5]
        r6 += x[i + 6]
        r7 += x[i + 7]
        i += 8
    t = ((r0 + r1) + (r2 + r3)) + ((r4 + r5) + (r6 + r7))
    while i < b:
        t += x[i]
        i += 1
    return t


@njit(cache=True, nogil=True)
def numpy_sum(x, a, b):
    """Σ x[a:b] in numpy's pairwise order (numpy's add.reduce of a contiguous float64 run): a
    block (`_block_sum`) up to BLOCK terms, else the run halved at a multiple of 8 below the
    half and the two halves' sums added. numpy recurses; here an explicit stack (numba's cache
    does not reload recursive functions safely), the same tree, left before right."""
    if b - a <= BLOCK:
        return _block_sum(x, a, b)
    lo = np.empty(64, dtype=np.int64)      # depth <= log2(2**63 / BLOCK)
    hi = np.empty(64, dtype=np.int64)
    stage = np.zeros(64, dtype=np.int64)   # 0: left half next, 1: right half next, 2: add them
    left = np.empty(64)
    top, lo[0], hi[0] = 0, a, b
    value = 0.0
    while top >= 0:
        n = hi[top] - lo[top]
        if n <= BLOCK:
            value = _block_sum(x, lo[top], hi[top])
            top -= 1
            continue
        half = n // 2 - (n // 2) % 8
        if stage[top] == 0:
            stage[top] = 1
            lo[top + 1], hi[top + 1], stage[top + 1] = lo[top], lo[top] + half, 0
            top += 1
        elif stage[top] == 1:
            left[top], stage[top] = value, 2
            lo[top + 1], hi[top + 1], stage[top + 1] = lo[top] + half, hi[top], 0
            top += 1
        else:
            value = left[top] + value
            top -= 1
    return value


@njit(cache=True, nogil=True)
def spread(x):
    """np.std(x) (ddof 0) of a float64 vector, bit for bit: numpy's
    steps (the mean as the sum over n, the squared deviations, their sum over n, the square
    root) with numpy's sums."""
    n = x.shape[0]
    mean = numpy_sum(x, 0, n) / n
    d = np.empty(n)
    for i in range(n):
        v = x[i] - mean
        d[i] = v * v
    return math.sqrt(numpy_sum(d, 0, n) / n)


@njit(cache=True, nogil=True)
def _dot8(a, b):
    """Σ a[k] b[k] of two flat float64 vectors, eight partial sums (independent chains)."""
    n = a.shape[0]
    r0 = r1 = r2 = r3 = r4 = r5 = r6 = r7 = 0.0
    k = 0
    while k + 8 <= n:
        r0 += a[k] * b[k]
        r1 += a[k + 1] * b[k + 1]
        r2 += a[k + 2] * b[k + 2]
        r3 += a[k + 3] * b[k + 3]
        r4 += a[k + 4] * b[k + 4]
        r5 += a[k + 5] * b[k + 5]
        r6 += a[k + 6] * b[k + 6]
        r7 += a[k + 7] * b[k + 7]
        k += 8
    t = ((r0 + r1) + (r2 + r3)) + ((r4 + r5) + (r6 + r7))
    while k < n:
        t += a[k] * b[k]
        k += 1
    return t


@njit(cache=True, nogil=True)
def _totals_into(coef, pair_spl, e0, zat, a, b, SAA, H, out):
    M = coef.shape[0]
    e = np.empty(b - a)
    for i in range(a, b):
        e[i - a] = e0[zat[i]]
    base = numpy_sum(e, 0, b - a)          # float(e0[zat].sum())'s bits
    saa = SAA.ravel()
    h = H.ravel()
    for m in range(1, M):
        out[m - 1] = (_dot8(coef[m].ravel(), saa) + _dot8(pair_spl[m].ravel(), h)) + base


@njit(cache=True, nogil=True)
def committee_totals(coef, pair_spl, e0, zat, SAA, H):
    """Total energies (M-1,) eV of parameter sets 1..M-1 of one structure from its pass's sums
    SAA (nz, n_nodes) and H (nz, nz, n_int, 4); coef (M, nz, n_nodes), pair_spl (M, nz, nz,
    n_int, 4), e0 (nz,) eV, zat (N,) species of the atoms."""
    out = np.empty(coef.shape[0] - 1)
    _totals_into(coef, pair_spl, e0, zat, 0, zat.shape[0], SAA, H, out)
    return out


@njit(cache=True, nogil=True)
def committee_totals_many(coef, pair_spl, e0, zat, offsets, lo, hi, SAA, H):
    """`committee_totals` of packed structures lo..hi-1 (atoms offsets[s]:offsets[s+1], sums
    SAA[s], H[s]): (hi - lo, M-1) eV."""
    out = np.empty((hi - lo, coef.shape[0] - 1))
    for s in range(lo, hi):
        _totals_into(coef, pair_spl, e0, zat, offsets[s], offsets[s + 1], SAA[s], H[s], out[s - lo])
    return out
