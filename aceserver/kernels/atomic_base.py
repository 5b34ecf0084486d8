"""The parts of the site pass that every form shares: a site's neighbours grouped by species, its
radial and angular features, the atomic base A and its pullback, and the product basis AA as a DAG
(node k = AA[parent[k]] · A[node_a[k]], parent -1: order one) forward and in reverse.

A is one dense array per site addressed by the flat A index of `site_tables` (species channel z,
radial row n, lm = l² + l + m); neighbours lie on the last axis of every scratch array so that the
sums over a species channel are contiguous vector loops.
"""
from __future__ import annotations

import numpy as np
from numba import njit

from .pace_features import neighbour_vector
from .radial import mb_radials
from .ylm import ylm_grad, ylm_norms


@njit(cache=True, nogil=True)
def sort_neighbours(i, first, nbr, zat, zb, slot):
    """Neighbours of atom i grouped by species: slot[jj] is the pair slot of the jj-th, and
    species z holds jj in zb[z]..zb[z+1]-1 (so the sums over a species channel are contiguous).
    Returns J, the number of neighbours."""
    p0 = first[i]
    J = first[i + 1] - p0
    nz = zb.shape[0] - 1
    if nz == 1:
        zb[0] = 0
        zb[1] = J
        for jj in range(J):
            slot[jj] = p0 + jj
        return J
    zb[:] = 0
    for p in range(p0, p0 + J):
        zb[zat[nbr[p]] + 1] += 1
    for z in range(nz):
        zb[z + 1] += zb[z]
    for p in range(p0, p0 + J):          # zb[z] runs ahead while filling, then is shifted back
        z = zat[nbr[p]]
        slot[zb[z]] = p
        zb[z] += 1
    for z in range(nz, 0, -1):
        zb[z] = zb[z - 1]
    zb[0] = 0
    return J


@njit(cache=True, nogil=True)
def site_features(i, J, slot, R, zat, nbr, mb_t, mb_spl, lmax, K, Q, C, S,
                  zj, rhat, r, rinv, Pm, dPm, Y, dY):
    """Per neighbour jj of atom i (pair slot slot[jj]): species zj, unit vector, r, 1/r, radials
    Pm[n, jj] = P(y)(1-y²)² with their r-derivatives dPm, harmonics Y[lm, jj] and the
    unprojected harmonic gradients dY[a, lm, jj] (see ylm)."""
    for jj in range(J):
        r[jj], _ = neighbour_vector(slot[jj], jj, R, zat, nbr, zj, rinv, rhat)
    ylm_grad(J, rhat, lmax, K, Q, C, S, Y, dY)
    mb_radials(J, r, mb_t, zat[i], zj, mb_spl, Pm, dPm)


@njit(cache=True, nogil=True)
def site_scratch(first, start, stop, n_rad, lmax, nz):
    """Work arrays for atoms start..stop-1, neighbours on the last axis:
    (K, Q, C, S, zb, slot, zj, rhat, r, rinv, rad, drad, Y, dY)."""
    maxJ = 0
    for i in range(start, stop):
        maxJ = max(maxJ, first[i + 1] - first[i])
    nlm = (lmax + 1) ** 2
    return (ylm_norms(lmax), np.empty((lmax + 1, lmax + 2, maxJ)), np.empty((lmax + 1, maxJ)),
            np.empty((lmax + 1, maxJ)), np.empty(nz + 1, dtype=np.int64),
            np.empty(maxJ, dtype=np.int64), np.empty(maxJ, dtype=np.int64), np.empty((3, maxJ)),
            np.empty(maxJ), np.empty(maxJ),
            np.empty((n_rad, maxJ)), np.empty((n_rad, maxJ)), np.empty((nlm, maxJ)),
            np.empty((3, nlm, maxJ)))


@njit(cache=True, nogil=True, fastmath=True)
def accumulate_a(zb, rad, Y, A, row_off, row_lmax, ls):
    """A[z, n, lm] = Σ_{j in channel z} R_{n,l}(r_ij) Y_lm(R̂_ij), as dot products over the
    channel's neighbours. Row n's radial for degree l is rad[row_off[n] + l·ls] (ls = 0: one
    radial for every l, the ace1 basis; ls = 1: R_nl); row n holds l <= row_lmax[n]."""
    nlm = A.shape[2]
    for z in range(A.shape[0]):
        b, e = zb[z], zb[z + 1]
        for n in range(A.shape[1]):
            o = row_off[n]
            top = row_lmax[n]
            for l in range(top + 1):
                rr = rad[o + l * ls, b:e]
                for lm in range(l * l, (l + 1) * (l + 1)):
                    y = Y[lm, b:e]
                    acc = 0.0
                    for j in range(rr.shape[0]):
                        acc += rr[j] * y[j]
                    A[z, n, lm] = acc
            for lm in range((top + 1) * (top + 1), nlm):
                A[z, n, lm] = 0.0


@njit(cache=True, nogil=True, fastmath=True)
def pullback_a(J, zb, dA, rad, drad, Y, dY, row_off, row_lmax, ls, dEdY, dEdR, gr, g):
    """∂E/∂A -> per neighbour jj: gr[jj] = Σ_f ∂E/∂rad_f · drad_f/dr and g[:, jj] = Σ_lm ∂E/∂Y_lm
    · dY_lm (unprojected), through scratch dEdY (nlm, J) and dEdR (n_rad, J). Loops run over
    the neighbours of one channel innermost."""
    for lm in range(dEdY.shape[0]):
        for j in range(J):
            dEdY[lm, j] = 0.0
    for f in range(dEdR.shape[0]):
        for j in range(J):
            dEdR[f, j] = 0.0
    for z in range(dA.shape[0]):
        b, e = zb[z], zb[z + 1]
        if e == b:
            continue
        for n in range(dA.shape[1]):
            o = row_off[n]
            for l in range(row_lmax[n] + 1):
                f = o + l * ls
                rr, der = rad[f, b:e], dEdR[f, b:e]
                for lm in range(l * l, (l + 1) * (l + 1)):
                    d = dA[z, n, lm]
                    if d == 0.0:
                        continue
                    y, dy = Y[lm, b:e], dEdY[lm, b:e]
                    for j in range(rr.shape[0]):
                        dy[j] += d * rr[j]
                        der[j] += d * y[j]
    for j in range(J):
        gr[j] = 0.0
        g[0, j] = 0.0
        g[1, j] = 0.0
        g[2, j] = 0.0
    for f in range(dEdR.shape[0]):
        for j in range(J):
            gr[j] += dEdR[f, j] * drad[f, j]
    for lm in range(dEdY.shape[0]):
        for j in range(J):
            e = dEdY[lm, j]
            g[0, j] += e * dY[0, lm, j]
            g[1, j] += e * dY[1, lm, j]
            g[2, j] += e * dY[2, lm, j]


# The node-range helpers below loop over views [lo:hi] with the index from 0, never over
# range(lo, hi): with a loop start read from an array the compiled loops unroll and vectorise
# less (likely numba's negative-index wrap-around); ace1 models were ×1.4 slower (RESULTS.md).
@njit(cache=True, nogil=True, fastmath=True)
def dot_range(a, b, lo, hi):
    """Σ_{lo<=k<hi} a_k b_k (vectorised, deterministic for the same inputs)."""
    acc = 0.0
    a, b = a[lo:hi], b[lo:hi]
    for k in range(a.shape[0]):
        acc += a[k] * b[k]
    return acc


@njit(cache=True, nogil=True)
def forward_aa(A, parent, node_a, AA, lo, hi):
    """Product nodes lo..hi-1: AA[k] = AA[parent[k]] · A[node_a[k]] (parent -1: A alone)."""
    par, na, out = parent[lo:hi], node_a[lo:hi], AA[lo:hi]
    for k in range(par.shape[0]):
        p = par[k]
        if p < 0:
            out[k] = A[na[k]]
        else:
            out[k] = AA[p] * A[na[k]]


@njit(cache=True, nogil=True)
def reverse_aa(Af, AA, parent, node_a, dAf, dAA, lo, hi):
    """Reverse pass of the product DAG (nodes hi-1 .. lo): ∂E/∂AA -> ∂E/∂A."""
    par, na, dAk = parent[lo:hi], node_a[lo:hi], dAA[lo:hi]
    for k in range(par.shape[0] - 1, -1, -1):
        g = dAk[k]
        if g == 0.0:
            continue
        a = na[k]
        pk = par[k]
        if pk < 0:
            dAf[a] += g
        else:
            dAf[a] += g * AA[pk]
            dAA[pk] += g * Af[a]
