"""The basis form of the site pass, for fitting: B = C·AA and the pair sums per site, with
forward-mode derivatives (∂AA/∂R_j by the product rule along the same DAG), assembled into energy,
force and virial rows of every linear parameter (θ order, see `ace1.model`). Units: eV, eV/Å, eV.

`site_descriptors` keeps the site rows apart instead (no derivatives): row i holds B_1(i)..B_nB(i)
and then the pair sums Σ_j R^pair_n(r_ij) of neighbour channel z at column nB + n·nz + z, the
values site i's energy is linear in (its centre species' block of θ, see `ace1.model`).
"""
from __future__ import annotations

import numpy as np
from numba import njit, prange

from .atomic_base import accumulate_a, forward_aa, site_features, site_scratch, sort_neighbours
from .radial import agnesi, pair_envelope, spline_eval_all, spline_interval
from .ylm import project


@njit(cache=True, nogil=True)
def basis_rows(first, nbr, R, zat, nz, mb_t, mb_spl, lmax, parent, node_a, aa_node, c_ptr, c_idx, c_val, pr_t, pair_p, pair_bspl,
               with_grad):
    """Energy, force and virial rows of every linear parameter (θ order), E0 excluded.

    Returns e (L,), f (N, 3, L), v (3, 3, L). Forward mode: ∂AA/∂R_j by the product rule along
    the same DAG, then ∂B = C·∂AA.
    """
    N = first.shape[0] - 1
    nB = c_ptr.shape[0] - 1
    n_pair_poly = pair_bspl.shape[2]
    n_pair = n_pair_poly * nz
    L = nz * (nB + n_pair)
    e = np.zeros(L)
    f = np.zeros((N, 3, L) if with_grad else (0, 3, L))
    v = np.zeros((3, 3, L))
    n_poly = mb_spl.shape[2]
    nlm = (lmax + 1) ** 2
    nN = parent.shape[0]
    K, Q, C, S, zb, slot, zj, rhat, rr, rinv, Pm, dPm, Y, dY = site_scratch(first, 0, N, n_poly,
                                                                              lmax, nz)
    maxJ = zj.shape[0]
    row_off = np.arange(n_poly)
    row_lmax = np.full(n_poly, lmax)
    poly = np.empty(n_pair_poly)
    dpoly = np.empty(n_pair_poly)
    A = np.empty((nz, n_poly, nlm))
    Af = A.reshape(-1)
    nA = Af.shape[0]
    AA = np.empty(nN)
    dA = np.zeros((nA, maxJ, 3))
    dAA = np.zeros((nN, maxJ, 3)) if with_grad else np.zeros((0, maxJ, 3))
    for i in range(N):
        J = sort_neighbours(i, first, nbr, zat, zb, slot)
        if J == 0:
            continue
        zi = zat[i]
        site_features(i, J, slot, R, zat, nbr, mb_t, mb_spl, lmax, K, Q, C, S,
                      zj, rhat, rr, rinv, Pm, dPm, Y, dY)
        accumulate_a(zb, Pm, Y, A, row_off, row_lmax, 0)
        forward_aa(Af, parent, node_a, AA, 0, nN)
        if with_grad:
            for lm in range(nlm):               # loops over neighbours innermost (contiguous)
                for jj in range(J):
                    dY[0, lm, jj], dY[1, lm, jj], dY[2, lm, jj] = project(
                        dY[0, lm, jj], dY[1, lm, jj], dY[2, lm, jj], rhat[0, jj], rhat[1, jj],
                        rhat[2, jj], rinv[jj])
            for k in range(nA):
                for jj in range(J):
                    for a in range(3):
                        dA[k, jj, a] = 0.0
            for z in range(nz):                  # A functions of each neighbour's channel
                for n in range(n_poly):
                    for lm in range(nlm):
                        k = (z * n_poly + n) * nlm + lm
                        for jj in range(zb[z], zb[z + 1]):
                            for a in range(3):
                                dA[k, jj, a] = (dPm[n, jj] * Y[lm, jj] * rhat[a, jj]
                                                + Pm[n, jj] * dY[a, lm, jj])
            for k in range(nN):
                pk = parent[k]
                ak = node_a[k]
                if pk < 0:
                    for jj in range(J):
                        for a in range(3):
                            dAA[k, jj, a] = dA[ak, jj, a]
                else:
                    for jj in range(J):
                        for a in range(3):
                            dAA[k, jj, a] = dAA[pk, jj, a] * Af[ak] + AA[pk] * dA[ak, jj, a]
        col0 = zi * nB
        for b in range(nB):
            val = 0.0
            for t in range(c_ptr[b], c_ptr[b + 1]):
                val += c_val[t] * AA[aa_node[c_idx[t]]]
            e[col0 + b] += val
            if with_grad:
                for jj in range(J):
                    p = slot[jj]
                    j = nbr[p]
                    g0 = 0.0
                    g1 = 0.0
                    g2 = 0.0
                    for t in range(c_ptr[b], c_ptr[b + 1]):
                        node = aa_node[c_idx[t]]
                        g0 += c_val[t] * dAA[node, jj, 0]
                        g1 += c_val[t] * dAA[node, jj, 1]
                        g2 += c_val[t] * dAA[node, jj, 2]
                    _scatter_row(f, v, i, j, R[p], col0 + b, g0, g1, g2)
        # pair basis: R^pair_n = P_n'(y) f(r) for the neighbour's species channel
        pcol0 = nz * nB + zi * n_pair
        for jj in range(J):
            p = slot[jj]
            rv = R[p]
            r = np.sqrt(rv[0] * rv[0] + rv[1] * rv[1] + rv[2] * rv[2])
            z = zj[jj]
            y, dy = agnesi(r, pr_t, zi, z)
            fe, dfe = pair_envelope(r, pr_t[zi, z, 3], pr_t[zi, z, 5], pair_p)
            spline_eval_all(pair_bspl, y, poly, dpoly)
            for n in range(n_pair_poly):
                col = pcol0 + n * nz + z
                e[col] += poly[n] * fe
                if with_grad:
                    g = (dpoly[n] * dy * fe + poly[n] * dfe) / r
                    _scatter_row(f, v, i, nbr[p], rv, col, g * rv[0], g * rv[1], g * rv[2])
    return e, f, v


@njit(cache=True, nogil=True, inline="always")
def _scatter_row(f, v, i, j, rv, col, g0, g1, g2):
    f[i, 0, col] += g0
    f[i, 1, col] += g1
    f[i, 2, col] += g2
    f[j, 0, col] -= g0
    f[j, 1, col] -= g1
    f[j, 2, col] -= g2
    for b in range(3):
        v[0, b, col] -= g0 * rv[b]
        v[1, b, col] -= g1 * rv[b]
        v[2, b, col] -= g2 * rv[b]


@njit(cache=True, nogil=True)
def manybody_row(AA, c_ptr, c_node, c_val, row):
    """The many-body columns of a site's row, B_b = Σ_t c_val[t]·AA[c_node[t]] (module docstring)."""
    for b in range(c_ptr.shape[0] - 1):
        val = 0.0
        for t in range(c_ptr[b], c_ptr[b + 1]):
            val += c_val[t] * AA[c_node[t]]
        row[b] = val


@njit(cache=True, nogil=True)
def pair_row(i, first, nbr, R, zat, nz, pr_t, pair_p, pair_bspl, nB, row):
    """The pair columns of site i's row, row[nB + n·nz + z_j] += P_n(y_ij)·f_env(r_ij), over the
    neighbours in list order (as the site pass's `pair_energy_grad` adds them, same bits)."""
    zi = zat[i]
    for p in range(first[i], first[i + 1]):
        rv = R[p]
        r = np.sqrt(rv[0] * rv[0] + rv[1] * rv[1] + rv[2] * rv[2])
        z = zat[nbr[p]]
        y, _ = agnesi(r, pr_t, zi, z)
        f, _ = pair_envelope(r, pr_t[zi, z, 3], pr_t[zi, z, 5], pair_p)
        k, t = spline_interval(y, pair_bspl.shape[0])
        c = pair_bspl[k]
        col = nB + z
        for n in range(c.shape[1]):
            row[col + n * nz] += (((c[0, n] * t + c[1, n]) * t + c[2, n]) * t + c[3, n]) * f


@njit(cache=True, nogil=True)
def _descriptor_range(lo, hi, atoms, first, nbr, R, zat, nz, mb_t, mb_spl, lmax, parent, node_a,
                      c_ptr, c_node, c_val, pr_t, pair_p, pair_bspl, out):
    """Rows out[k] of atoms[k] for lo <= k < hi (see the module docstring)."""
    N = first.shape[0] - 1
    n_poly = mb_spl.shape[2]
    nlm = (lmax + 1) ** 2
    nN = parent.shape[0]
    K, Q, C, S, zb, slot, zj, rhat, rr, rinv, Pm, dPm, Y, dY = site_scratch(first, 0, N, n_poly,
                                                                              lmax, nz)
    row_off = np.arange(n_poly)
    row_lmax = np.full(n_poly, lmax)
    A = np.empty((nz, n_poly, nlm))
    Af = A.reshape(-1)
    AA = np.empty(nN)
    for k in range(lo, hi):
        i = atoms[k]
        out[k] = 0.0
        J = sort_neighbours(i, first, nbr, zat, zb, slot)
        if J == 0:
            continue
        site_features(i, J, slot, R, zat, nbr, mb_t, mb_spl, lmax, K, Q, C, S,
                      zj, rhat, rr, rinv, Pm, dPm, Y, dY)
        accumulate_a(zb, Pm, Y, A, row_off, row_lmax, 0)
        forward_aa(Af, parent, node_a, AA, 0, nN)
        manybody_row(AA, c_ptr, c_node, c_val, out[k])
        pair_row(i, first, nbr, R, zat, nz, pr_t, pair_p, pair_bspl, c_ptr.shape[0] - 1, out[k])


@njit(cache=True, nogil=True)
def site_descriptors(atoms, first, nbr, R, zat, nz, mb_t, mb_spl, lmax, parent, node_a,
                     c_ptr, c_node, c_val, pr_t, pair_p, pair_bspl, out):
    """Descriptor rows out (len(atoms), nB + n_pair) of the sites atoms[k], serially; B_b sums
    c_val[t]·AA[c_node[t]] over t in c_ptr[b]..c_ptr[b+1]-1 (c_node = aa_node[c_idx])."""
    _descriptor_range(0, atoms.shape[0], atoms, first, nbr, R, zat, nz, mb_t, mb_spl, lmax,
                      parent, node_a, c_ptr, c_node, c_val, pr_t, pair_p, pair_bspl, out)


@njit(cache=True, nogil=True, parallel=True)
def site_descriptors_parallel(atoms, first, nbr, R, zat, nz, mb_t, mb_spl, lmax, parent, node_a,
                              c_ptr, c_node, c_val, pr_t, pair_p, pair_bspl, out, n_chunks):
    """As site_descriptors, over n_chunks blocks of rows on numba's threads (rows do not overlap)."""
    n = atoms.shape[0]
    n_chunks = max(1, min(n, n_chunks))
    for c in prange(n_chunks):
        _descriptor_range(c * n // n_chunks, (c + 1) * n // n_chunks, atoms, first, nbr, R, zat,
                          nz, mb_t, mb_spl, lmax, parent, node_a, c_ptr, c_node, c_val, pr_t,
                          pair_p, pair_bspl, out)
