"""The ACE site pass, written once: neighbours -> radial and angular parts -> A -> AA, then either

* the fast form: E_i = E0 + Σ_k c_{z_i,k} AA_k + pair, with the reverse pass giving ∂E_i/∂R_ij, or
* the basis form (for fitting): B = C·AA and pair sums per site, with forward-mode derivatives,
  assembled into energy, force and virial rows of every basis function.

Products AA are evaluated as a DAG: node k = AA[parent[k]] · A[a[k]] (parent -1: order one), so no
product is recomputed. Per-pair gradients are written to pair slots (no write conflicts between
threads) and scattered into forces and virial afterwards.
"""
from __future__ import annotations

import numpy as np
from numba import njit, prange

from .pace import (accumulate_a_rows, embed, full_rows, neighbour_vector, pullback_a_rows,
                   table_features)
from .radial import (agnesi, mb_radials, pair_envelope, spline_eval_all, spline_eval_one,
                     spline_interval)
from .ylm import project, ylm_grad, ylm_norms


@njit(cache=True, nogil=True)
def site_features(i, first, nbr, R, zat, mb_t, mb_spl, lmax, K, q, cs,
                  zj, rhat, r, rinv, Pm, dPm, Y, dY):
    """Per neighbour jj of atom i: species zj, unit vector, r, 1/r, radials Pm = P(y)(1-y²)² with
    their r-derivatives dPm, harmonics Y and the unprojected harmonic gradients dY (see ylm)."""
    J = first[i + 1] - first[i]
    for jj in range(J):
        x0, x1, x2, r[jj], _ = neighbour_vector(first[i] + jj, jj, R, zat, nbr, zj, rinv, rhat)
        ylm_grad(x0, x1, x2, lmax, K, q, cs, Y, dY, jj)
    mb_radials(J, r, mb_t, zat[i], zj, mb_spl, Pm, dPm)


@njit(cache=True, nogil=True)
def site_scratch(first, start, stop, n_poly, lmax):
    """Per-neighbour work arrays for site_features, sized for atoms start..stop-1:
    (K, q, cs, zj, rhat, r, rinv, Pm, dPm, Y, dY)."""
    maxJ = 0
    for i in range(start, stop):
        maxJ = max(maxJ, first[i + 1] - first[i])
    nlm = (lmax + 1) ** 2
    return (ylm_norms(lmax), np.empty((lmax + 1, lmax + 2)), np.empty((lmax + 1, 2)),
            np.empty(maxJ, dtype=np.int64), np.empty((maxJ, 3)), np.empty(maxJ), np.empty(maxJ),
            np.empty((maxJ, n_poly)), np.empty((maxJ, n_poly)), np.empty((maxJ, nlm)),
            np.empty((maxJ, nlm, 3)))


@njit(cache=True, nogil=True)
def accumulate_a(J, zj, Pm, Y, A):
    """A[z, n, lm] = Σ_{j in channel z} R_n(r_ij) Y_lm(R̂_ij).

    Dense in (n, lm): it holds (n, l) pairs the basis never uses, but the contiguous inner loop
    vectorises and is several times faster than visiting only the used ones."""
    A[:] = 0.0
    for jj in range(J):
        z = zj[jj]
        for n in range(Pm.shape[1]):
            pr = Pm[jj, n]
            for lm in range(Y.shape[1]):
                A[z, n, lm] += pr * Y[jj, lm]


@njit(cache=True, nogil=True, fastmath=True)
def pullback_a(jj, z, dA, Pm, Y, dEdP, dEdY):
    """∂E/∂A -> ∂E/∂(radial n) and ∂E/∂(harmonic lm) of neighbour jj in channel z."""
    dEdY[:] = 0.0
    for n in range(Pm.shape[1]):
        pr = Pm[jj, n]
        acc = 0.0
        for lm in range(Y.shape[1]):
            d = dA[z, n, lm]
            acc += d * Y[jj, lm]
            dEdY[lm] += d * pr
        dEdP[n] = acc


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


@njit(cache=True, nogil=True, fastmath=True)
def leaf_densities(Af, AA, leaf_parent, leaf_a, leaf_coef, zi, rho, llo, lhi):
    """Adds the leaves llo..lhi-1 to rho[m]: Σ_l c_{l,m} AA[parent_l] A[a_l] (AA = 1 at the
    roots' parent). One flat loop: most internal nodes have only a few leaves, so a loop per
    node costs more than it saves. Two densities (most pacemaker files) get their own loop,
    both sums in registers, each product formed once."""
    M = rho.shape[0]
    lc, lp, la = leaf_coef[zi, llo:lhi], leaf_parent[llo:lhi], leaf_a[llo:lhi]
    if M == 2:
        r0, r1 = rho[0], rho[1]
        for l in range(la.shape[0]):
            x = AA[lp[l]] * Af[la[l]]
            r0 += lc[l, 0] * x
            r1 += lc[l, 1] * x
        rho[0], rho[1] = r0, r1
        return
    for mm in range(M):
        r = rho[mm]
        for l in range(la.shape[0]):
            r += lc[l, mm] * AA[lp[l]] * Af[la[l]]
        rho[mm] = r


@njit(cache=True, nogil=True, fastmath=True)
def reverse_leaves(Af, AA, leaf_parent, leaf_a, leaf_coef, zi, seed, dAf, dAA, llo, lhi):
    """Leaves in reverse, with ∂E/∂ρ_m = seed[m]: into ∂E/∂A (dAf) and ∂E/∂AA of the parents
    (dAA[n_nodes], the roots' parent, collects what nothing reads)."""
    M = seed.shape[0]
    lc, lp, la = leaf_coef[zi, llo:lhi], leaf_parent[llo:lhi], leaf_a[llo:lhi]
    if M == 2:
        s0, s1 = seed[0], seed[1]
        for l in range(la.shape[0]):
            a, p = la[l], lp[l]
            w = s0 * lc[l, 0] + s1 * lc[l, 1]
            dAA[p] += w * Af[a]
            dAf[a] += w * AA[p]
        return
    for l in range(la.shape[0]):
        a, p = la[l], lp[l]
        w = 0.0
        for mm in range(M):
            w += seed[mm] * lc[l, mm]
        dAA[p] += w * Af[a]
        dAf[a] += w * AA[p]


@njit(cache=True, nogil=True)
def seed_weights(seed, coef, zi, out, lo, hi):
    """out[k] = Σ_m seed[m] coef[m, zi, k] for lo <= k < hi (sets with seed 0 skipped)."""
    unset = True
    out = out[lo:hi]
    for mm in range(seed.shape[0]):
        w = seed[mm]
        if w != 0.0:
            c = coef[mm, zi, lo:hi]
            if unset:
                for k in range(out.shape[0]):
                    out[k] = w * c[k]
                unset = False
            else:
                for k in range(out.shape[0]):
                    out[k] += w * c[k]
    if unset:
        out[:] = 0.0


@njit(cache=True, nogil=True)
def pair_energy_grad(i, first, nbr, R, zat, pr_t, pair_p, pair_spl, G, with_grad, E):
    """Pair site energies Σ_j V^m_{z_i z_j}(r_ij) with merged splines, added to E[m, i] for every
    parameter set m; the gradient of set 0 (dV/dr r̂) is added to G."""
    zi = zat[i]
    for jj in range(first[i + 1] - first[i]):
        p = first[i] + jj
        rv = R[p]
        r = np.sqrt(rv[0] * rv[0] + rv[1] * rv[1] + rv[2] * rv[2])
        z = zat[nbr[p]]
        y, dy = agnesi(r, pr_t, zi, z)
        f, df = pair_envelope(r, pr_t[zi, z, 3], pr_t[zi, z, 5], pair_p)
        k, t = spline_interval(y, pair_spl.shape[3])
        for m in range(pair_spl.shape[0]):
            s, ds = spline_eval_one(pair_spl, m, zi, z, k, t)
            E[m, i] += s * f
            if m == 0 and with_grad:
                g = (ds * dy * f + s * df) / r
                for a in range(3):
                    G[p, a] += g * rv[a]


@njit(cache=True, nogil=True)
def _fast_range(start, stop, first, nbr, R, zat, T, mode, with_grad, E, G):
    """Fast form for atoms start..stop-1 over the site tables T (see `SiteTables`): site energies
    E[m, i] and the pair gradients G[p] = ∂E_i/∂R_ij of set 0.

    Radial mode 0 (ace1): radials R_n(r) shared by every l, linear energy per parameter set m
    (0: the model, 1..: committee members, all from one A/AA pass), ace1 pair term.
    Radial mode 1 (tabulated, pacemaker): R_nl per species pair from Hermite tables plus the
    basis g_k for the order-one nodes, densities ρ_p = coef[p]·AA with an embedding F(ρ), and
    the core repulsion / ZBL terms. Both share the A, product-DAG and reverse passes; the
    embedding only changes the seed of the reverse pass, ∂E/∂AA_k = Σ_p ∂E/∂ρ_p coef[p, k]."""
    nlm = (T.lmax + 1) ** 2
    nN = T.parent.shape[0]
    M = T.coef.shape[0]
    n_rad = T.mb_spl.shape[2] if mode == 0 else T.tab.shape[4]
    n_rows = T.mb_spl.shape[2] if mode == 0 else T.row_off.shape[0]
    K, q, cs, zj, rhat, rr, rinv, rad, drad, Y, dY = site_scratch(first, start, stop, n_rad, T.lmax)
    A = np.empty((T.e0.shape[0], n_rows, nlm))
    dA = np.empty((T.e0.shape[0], n_rows, nlm))
    Af = A.reshape(-1)           # flat views: product nodes address A by flat index
    dAf = dA.reshape(-1)
    AA = np.empty(nN + 1)        # AA[nN] = 1: the parent of the leaves that are one A alone
    AA[nN] = 1.0
    dAA = np.empty(nN + 1)
    dEdrad = np.empty(n_rad)
    dEdY = np.empty(nlm)
    seed = np.zeros(M)
    rho = np.empty(M)
    n_full = full_rows(T.row_lmax, T.lmax) if mode == 1 else 0
    for i in range(start, stop):
        J = first[i + 1] - first[i]
        zi = zat[i]
        lo, hi = T.node_lo[zi], T.node_hi[zi]
        for p in range(first[i], first[i + 1]):
            G[p, 0] = 0.0
            G[p, 1] = 0.0
            G[p, 2] = 0.0
        for mm in range(E.shape[0]):
            E[mm, i] = T.e0[zi]
        if J == 0:
            continue
        jstar = -1
        if mode == 0:
            site_features(i, first, nbr, R, zat, T.mb_t, T.mb_spl, T.lmax, K, q, cs,
                          zj, rhat, rr, rinv, rad, drad, Y, dY)
            accumulate_a(J, zj, rad, Y, A)
        else:
            jstar = table_features(i, first, nbr, R, zat, T, K, q, cs, zj, rhat, rinv, rad, drad,
                                   Y, dY)
            accumulate_a_rows(J, zj, rad, Y, A, T.row_off, n_full, T.lmax)
        forward_aa(Af, T.parent, T.node_a, AA, lo, hi)
        llo, lhi = T.leaf_lo[zi], T.leaf_hi[zi]
        for mm in range(M):
            rho[mm] = dot_range(T.coef[mm, zi], AA, lo, hi)
        if lhi > llo:
            leaf_densities(Af, AA, T.leaf_parent, T.leaf_a, T.leaf_coef, zi, rho, llo, lhi)
        dEdcore = 0.0
        dEdswitch = 0.0
        if mode == 0:
            for mm in range(M):
                E[mm, i] += rho[mm]
            seed[0] = 1.0
        else:
            e, dEdcore, dEdswitch = embed(zi, J, rho, rad, zj, T, seed, jstar, first[i], R)
            E[0, i] += e
        if with_grad:
            # reverse pass through the DAG: ∂E/∂AA -> ∂E/∂A
            dA[:] = 0.0
            seed_weights(seed, T.coef, zi, dAA, lo, hi)
            if lhi > llo:
                reverse_leaves(Af, AA, T.leaf_parent, T.leaf_a, T.leaf_coef, zi, seed, dAf, dAA,
                               llo, lhi)
            reverse_aa(Af, AA, T.parent, T.node_a, dAf, dAA, lo, hi)
            # ∂E/∂A -> ∂E/∂R_ij through radials and harmonics
            for jj in range(J):
                if mode == 0:
                    pullback_a(jj, zj[jj], dA, rad, Y, dEdrad, dEdY)
                    gr = 0.0
                    for n in range(n_rad):
                        gr += dEdrad[n] * drad[jj, n]
                else:
                    gr = pullback_a_rows(jj, zj[jj], dA, rad, drad, Y, dEdY, T.row_off, n_full,
                                         T.lmax)
                    gr += dEdcore * drad[jj, n_rad - 1]     # the last tabulated function is φ_core
                if jj == jstar:
                    gr += dEdswitch
                g0 = 0.0
                g1 = 0.0
                g2 = 0.0
                for lm in range(nlm):
                    g0 += dEdY[lm] * dY[jj, lm, 0]
                    g1 += dEdY[lm] * dY[jj, lm, 1]
                    g2 += dEdY[lm] * dY[jj, lm, 2]
                u0, u1, u2 = rhat[jj, 0], rhat[jj, 1], rhat[jj, 2]
                g0, g1, g2 = project(g0, g1, g2, u0, u1, u2, rinv[jj])
                p = first[i] + jj
                G[p, 0] += gr * u0 + g0
                G[p, 1] += gr * u1 + g1
                G[p, 2] += gr * u2 + g2
        if mode == 0:
            pair_energy_grad(i, first, nbr, R, zat, T.pr_t, T.pair_p, T.pair_spl, G, with_grad, E)


@njit(cache=True, nogil=True)
def _serial(first, nbr, R, zat, T, with_grad, mode):
    N = first.shape[0] - 1
    E = np.empty((T.coef.shape[0] if mode == 0 else 1, N))
    G = np.empty((R.shape[0], 3))
    _fast_range(0, N, first, nbr, R, zat, T, mode, with_grad, E, G)
    return E, G


@njit(cache=True, nogil=True, parallel=True)
def _parallel(first, nbr, R, zat, T, with_grad, n_chunks, mode):
    N = first.shape[0] - 1
    E = np.empty((T.coef.shape[0] if mode == 0 else 1, N))
    G = np.empty((R.shape[0], 3))
    n_chunks = min(N, n_chunks)
    for c in prange(n_chunks):
        _fast_range(c * N // n_chunks, (c + 1) * N // n_chunks, first, nbr, R, zat, T, mode,
                    with_grad, E, G)
    return E, G


# One entry point per radial mode: the mode reaches the site pass as a compile-time constant,
# so each compiled pass holds only its own branches (a runtime mode costs ace1 models ~10 %).
@njit(cache=True, nogil=True)
def _serial_ace1(first, nbr, R, zat, T, with_grad):
    return _serial(first, nbr, R, zat, T, with_grad, 0)


@njit(cache=True, nogil=True)
def _serial_tabulated(first, nbr, R, zat, T, with_grad):
    return _serial(first, nbr, R, zat, T, with_grad, 1)


@njit(cache=True, nogil=True, parallel=True)
def _parallel_ace1(first, nbr, R, zat, T, with_grad, n_chunks):
    return _parallel(first, nbr, R, zat, T, with_grad, n_chunks, 0)


@njit(cache=True, nogil=True, parallel=True)
def _parallel_tabulated(first, nbr, R, zat, T, with_grad, n_chunks):
    return _parallel(first, nbr, R, zat, T, with_grad, n_chunks, 1)


def fast_serial(first, nbr, R, zat, T, with_grad):
    """Site energies E (sets, N) and pair gradients G (pairs, 3) over the site tables T."""
    return (_serial_ace1 if T.mode == 0 else _serial_tabulated)(first, nbr, R, zat, T, with_grad)


def fast_parallel(first, nbr, R, zat, T, with_grad, n_chunks):
    """As fast_serial, over n_chunks blocks of atoms on numba's threads (n_chunks >= 1)."""
    return (_parallel_ace1 if T.mode == 0 else _parallel_tabulated)(first, nbr, R, zat, T,
                                                                     with_grad, n_chunks)


@njit(cache=True, nogil=True)
def scatter_forces_virial(first, nbr, R, G, n_atoms):
    """F_i += ∂E_i/∂R_ij, F_j -= ∂E_i/∂R_ij; W = -Σ ∂E_i/∂R_ij ⊗ R_ij."""
    F = np.zeros((n_atoms, 3))
    W = np.zeros((3, 3))
    for i in range(n_atoms):
        for p in range(first[i], first[i + 1]):
            j = nbr[p]
            for a in range(3):
                F[i, a] += G[p, a]
                F[j, a] -= G[p, a]
                for b in range(3):
                    W[a, b] -= G[p, a] * R[p, b]
    return F, W


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
    K, q, cs, zj, rhat, rr, rinv, Pm, dPm, Y, dY = site_scratch(first, 0, N, n_poly, lmax)
    maxJ = zj.shape[0]
    poly = np.empty(n_pair_poly)
    dpoly = np.empty(n_pair_poly)
    A = np.empty((nz, n_poly, nlm))
    Af = A.reshape(-1)
    nA = Af.shape[0]
    AA = np.empty(nN)
    dA = np.zeros((nA, maxJ, 3))
    dAA = np.zeros((nN, maxJ, 3)) if with_grad else np.zeros((0, maxJ, 3))
    for i in range(N):
        J = first[i + 1] - first[i]
        if J == 0:
            continue
        zi = zat[i]
        site_features(i, first, nbr, R, zat, mb_t, mb_spl, lmax, K, q, cs,
                      zj, rhat, rr, rinv, Pm, dPm, Y, dY)
        accumulate_a(J, zj, Pm, Y, A)
        forward_aa(Af, parent, node_a, AA, 0, nN)
        if with_grad:
            for jj in range(J):
                u0, u1, u2 = rhat[jj, 0], rhat[jj, 1], rhat[jj, 2]
                for lm in range(nlm):
                    dY[jj, lm, 0], dY[jj, lm, 1], dY[jj, lm, 2] = project(
                        dY[jj, lm, 0], dY[jj, lm, 1], dY[jj, lm, 2], u0, u1, u2, rinv[jj])
            for k in range(nA):
                for jj in range(J):
                    for a in range(3):
                        dA[k, jj, a] = 0.0
            for jj in range(J):
                k0 = zj[jj] * n_poly * nlm          # A functions of this neighbour's channel
                for n in range(n_poly):
                    for lm in range(nlm):
                        k = k0 + n * nlm + lm
                        for a in range(3):
                            dA[k, jj, a] = (dPm[jj, n] * Y[jj, lm] * rhat[jj, a]
                                            + Pm[jj, n] * dY[jj, lm, a])
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
                    p = first[i] + jj
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
            p = first[i] + jj
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
