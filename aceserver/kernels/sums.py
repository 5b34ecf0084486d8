"""Sums in numpy's order, in numba: where a kernel call replaces numpy calls whose results front
ends compare bit for bit (energies, the committee spread), it must add in numpy's order.

`numpy_sum` is numpy's pairwise summation (what ``x[a:b].sum()`` gives for a contiguous float64
run); `spread` is ``np.std(x)`` (ddof 0) by numpy's own steps with it (the committee spread of
`evaluation.postprocess`); `e0_total` the one-body energy Σ_i e0[z_i] of a structure (eV).

The committee members' energies themselves stay numpy einsums (`site_pass.committee_energies`):
a kernel summing their contractions in another order differs from them by up to 1.5e-13
relative on the zuo committees (their terms cancel), more than a last-bit change.
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
def e0_total(e0, zat):
    """Σ_i e0[z_i] (eV) as float(e0[zat].sum()) gives it (numpy's order, `numpy_sum`), in one
    call instead of a gather and a reduction (~1.5 µs of a small committee evaluation)."""
    e = np.empty(zat.shape[0])
    for i in range(zat.shape[0]):
        e[i] = e0[zat[i]]
    return numpy_sum(e, 0, e.shape[0])
