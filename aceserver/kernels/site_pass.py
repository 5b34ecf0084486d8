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

from .pace_features import embed, neighbour_vector, table_features
from .radial import (agnesi, mb_radials, pair_envelope, spline_eval_all, spline_eval_one,
                     spline_interval)
from .ylm import project, ylm_grad, ylm_norms


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


@njit(cache=True, nogil=True)   # no fastmath: it vectorises the sums with gathers, 1.6x slower
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


@njit(cache=True, nogil=True)
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
def pair_energy_grad(i, first, nbr, R, zat, pr_t, pair_p, pair_spl, G, with_grad, E, H):
    """Pair site energy Σ_j V_{z_i z_j}(r_ij) of parameter set 0 (merged splines) added to E[0, i]
    and its gradient (dV/dr r̂) to G. With committee sets (H non-empty), H[z_i, z_j, k, :] adds
    (t³, t², t, 1)·f_env of every pair on spline interval k: each set's pair energy is then one
    contraction of its spline coefficients with H (`committee_energies`)."""
    zi = zat[i]
    hist = H.shape[0] > 0
    for jj in range(first[i + 1] - first[i]):
        p = first[i] + jj
        rv = R[p]
        r = np.sqrt(rv[0] * rv[0] + rv[1] * rv[1] + rv[2] * rv[2])
        z = zat[nbr[p]]
        y, dy = agnesi(r, pr_t, zi, z)
        f, df = pair_envelope(r, pr_t[zi, z, 3], pr_t[zi, z, 5], pair_p)
        k, t = spline_interval(y, pair_spl.shape[3])
        s, ds = spline_eval_one(pair_spl, 0, zi, z, k, t)
        E[0, i] += s * f
        if with_grad:
            g = (ds * dy * f + s * df) / r
            for a in range(3):
                G[p, a] += g * rv[a]
        if hist:
            H[zi, z, k, 3] += f
            H[zi, z, k, 2] += t * f
            H[zi, z, k, 1] += t * t * f
            H[zi, z, k, 0] += t * t * t * f


@njit(cache=True, nogil=True)
def radial_layout(T, mode):
    """(number of radial functions per neighbour, ls). A row n holds l <= row_lmax[n] (what the
    DAG reads); its radial for degree l is rad[row_off[n] + l·ls]: ace1 (ls = 0) one radial per
    n for every l, tabulated (ls = 1) R_nl, then the g_k rows (l = 0) and φ_core."""
    if mode == 0:
        return T.mb_spl.shape[2], 0
    return T.tab.shape[4], 1


@njit(cache=True, nogil=True)
def _fast_range(start, stop, first, nbr, R, zat, T, mode, with_grad, E, G, SAA, H):
    """Fast form for atoms start..stop-1 over the site tables T (see `SiteTables`): site energies
    E[0, i] and the pair gradients G[p] = ∂E_i/∂R_ij of parameter set 0.

    Radial mode 0 (ace1): radials R_n(r) shared by every l, linear energy, ace1 pair term. With
    committee sets (SAA, H non-empty) the pass adds AA of every site to SAA[z_i] and the pair
    histogram to H; the members' total energies are contractions of those (committee_energies),
    so a committee costs one vector add per site instead of one energy pass per member.
    Radial mode 1 (tabulated, pacemaker): R_nl per species pair from Hermite tables plus the
    basis g_k for the order-one nodes, densities ρ_p = coef[p]·AA with an embedding F(ρ), and
    the core repulsion / ZBL terms. Both share the A, product-DAG and reverse passes; the
    embedding only changes the seed of the reverse pass, ∂E/∂AA_k = Σ_p ∂E/∂ρ_p coef[p, k]."""
    nlm = (T.lmax + 1) ** 2
    nz = T.e0.shape[0]
    nN = T.parent.shape[0]
    M = T.coef.shape[0]
    n_rad, ls = radial_layout(T, mode)
    row_off, row_lmax = T.row_off, T.row_lmax
    n_rows = row_off.shape[0]
    K, Q, C, S, zb, slot, zj, rhat, rr, rinv, rad, drad, Y, dY = site_scratch(
        first, start, stop, n_rad, T.lmax, nz)
    maxJ = slot.shape[0]
    dEdY = np.empty((nlm, maxJ))
    dEdR = np.empty((n_rad, maxJ))
    gr = np.empty(maxJ)
    g = np.empty((3, maxJ))
    row = np.empty((2, n_rad))   # one neighbour's tabulated radials (table_features)
    A = np.empty((nz, n_rows, nlm))
    dA = np.empty((nz, n_rows, nlm))
    Af = A.reshape(-1)           # flat views: product nodes address A by flat index
    dAf = dA.reshape(-1)
    AA = np.empty(nN + 1)        # AA[nN] = 1: the parent of the leaves that are one A alone
    AA[nN] = 1.0
    dAA = np.empty(nN + 1)
    seed = np.zeros(M)
    rho = np.empty(M)
    for i in range(start, stop):
        zi = zat[i]
        lo, hi = T.node_lo[zi], T.node_hi[zi]
        for p in range(first[i], first[i + 1]):
            G[p, 0] = 0.0
            G[p, 1] = 0.0
            G[p, 2] = 0.0
        E[0, i] = T.e0[zi]
        J = sort_neighbours(i, first, nbr, zat, zb, slot)
        if J == 0:
            continue
        jstar = -1
        if mode == 0:
            site_features(i, J, slot, R, zat, nbr, T.mb_t, T.mb_spl, T.lmax, K, Q, C, S,
                          zj, rhat, rr, rinv, rad, drad, Y, dY)
        else:
            jstar = table_features(i, J, slot, R, zat, nbr, T, K, Q, C, S, zj, rhat, rinv, rad,
                                   drad, Y, dY, row)
        accumulate_a(zb, rad, Y, A, row_off, row_lmax, ls)
        forward_aa(Af, T.parent, T.node_a, AA, lo, hi)
        llo, lhi = T.leaf_lo[zi], T.leaf_hi[zi]
        for mm in range(M if mode == 1 else 1):
            rho[mm] = dot_range(T.coef[mm, zi], AA, lo, hi)
        if lhi > llo:
            leaf_densities(Af, AA, T.leaf_parent, T.leaf_a, T.leaf_coef, zi, rho, llo, lhi)
        dEdcore = 0.0
        dEdswitch = 0.0
        if mode == 0:
            E[0, i] += rho[0]
            seed[0] = 1.0
            if SAA.shape[0] > 0:
                sa, aa = SAA[zi, lo:hi], AA[lo:hi]
                for k in range(sa.shape[0]):
                    sa[k] += aa[k]
        else:
            e, dEdcore, dEdswitch = embed(zi, J, rho, rad, zj, T, seed, jstar, slot, R)
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
            pullback_a(J, zb, dA, rad, drad, Y, dY, row_off, row_lmax, ls, dEdY, dEdR, gr, g)
            if mode == 1:
                for jj in range(J):     # the last tabulated function is φ_core
                    gr[jj] += dEdcore * drad[n_rad - 1, jj]
                if jstar >= 0:
                    gr[jstar] += dEdswitch
            for jj in range(J):
                u0, u1, u2 = rhat[0, jj], rhat[1, jj], rhat[2, jj]
                g0, g1, g2 = project(g[0, jj], g[1, jj], g[2, jj], u0, u1, u2, rinv[jj])
                p = slot[jj]
                G[p, 0] += gr[jj] * u0 + g0
                G[p, 1] += gr[jj] * u1 + g1
                G[p, 2] += gr[jj] * u2 + g2
        if mode == 0:
            pair_energy_grad(i, first, nbr, R, zat, T.pr_t, T.pair_p, T.pair_spl, G, with_grad, E,
                             H)


@njit(cache=True, nogil=True)
def _committee_sums(T, mode, n):
    """Per-chunk accumulators of the committee sums (empty without committee sets)."""
    if mode == 0 and T.coef.shape[0] > 1:
        return (np.zeros((n, T.coef.shape[1], T.coef.shape[2])),
                np.zeros((n,) + T.pair_spl.shape[1:]))
    return np.zeros((n, 0, 0)), np.zeros((n, 0, 0, 0, 0))


@njit(cache=True, nogil=True)
def _serial(first, nbr, R, zat, T, with_grad, mode):
    N = first.shape[0] - 1
    E = np.empty((1, N))
    G = np.empty((R.shape[0], 3))
    SAA, H = _committee_sums(T, mode, 1)
    _fast_range(0, N, first, nbr, R, zat, T, mode, with_grad, E, G, SAA[0], H[0])
    return E, G, SAA[0], H[0]


@njit(cache=True, nogil=True, parallel=True)
def _parallel(first, nbr, R, zat, T, with_grad, n_chunks, mode):
    N = first.shape[0] - 1
    E = np.empty((1, N))
    G = np.empty((R.shape[0], 3))
    n_chunks = min(N, n_chunks)
    SAA, H = _committee_sums(T, mode, n_chunks)
    for c in prange(n_chunks):
        _fast_range(c * N // n_chunks, (c + 1) * N // n_chunks, first, nbr, R, zat, T, mode,
                    with_grad, E, G, SAA[c], H[c])
    return E, G, SAA.sum(axis=0), H.sum(axis=0)


# One entry point per radial mode: the mode reaches the site pass as a compile-time constant,
# so each compiled pass holds only its own branches (a runtime mode costs ace1 models ~10 %).
# The parallel ones are thin: the prange lives in _parallel (compiled with parallel=True).
@njit(cache=True, nogil=True)
def _serial_ace1(first, nbr, R, zat, T, with_grad):
    return _serial(first, nbr, R, zat, T, with_grad, 0)


@njit(cache=True, nogil=True)
def _serial_tabulated(first, nbr, R, zat, T, with_grad):
    return _serial(first, nbr, R, zat, T, with_grad, 1)


@njit(cache=True, nogil=True)
def _parallel_ace1(first, nbr, R, zat, T, with_grad, n_chunks):
    return _parallel(first, nbr, R, zat, T, with_grad, n_chunks, 0)


@njit(cache=True, nogil=True)
def _parallel_tabulated(first, nbr, R, zat, T, with_grad, n_chunks):
    return _parallel(first, nbr, R, zat, T, with_grad, n_chunks, 1)


def committee_energies(T, zat, SAA, H):
    """Total energies (eV) of parameter sets 1.. (the committee) from the pass's sums."""
    if SAA.shape[1] == 0:
        return None
    mb = np.einsum("mzk,zk->m", T.coef[1:], SAA)
    pair = np.einsum("mabkc,abkc->m", T.pair_spl[1:], H)
    return mb + pair + float(T.e0[zat].sum())


def fast_serial(first, nbr, R, zat, T, with_grad):
    """Site energies E (1, N) and pair gradients G (pairs, 3) of the potential over the site
    tables T, and the committee's total energies (None without committee sets)."""
    E, G, SAA, H = (_serial_ace1 if T.mode == 0 else _serial_tabulated)(first, nbr, R, zat, T,
                                                                        with_grad)
    return E, G, committee_energies(T, zat, SAA, H)


def fast_parallel(first, nbr, R, zat, T, with_grad, n_chunks):
    """As fast_serial, over n_chunks blocks of atoms on numba's threads (n_chunks >= 1)."""
    E, G, SAA, H = (_parallel_ace1 if T.mode == 0 else _parallel_tabulated)(
        first, nbr, R, zat, T, with_grad, n_chunks)
    return E, G, committee_energies(T, zat, SAA, H)


@njit(cache=True, nogil=True)
def _scatter_range(lo, hi, first, nbr, R, G, F, W):
    """Atoms lo..hi-1: F_i += ∂E_i/∂R_ij, F_j -= ∂E_i/∂R_ij; W -= ∂E_i/∂R_ij ⊗ R_ij.
    Sums run in locals: W of parallel blocks share cache lines, and F_i is written once."""
    w = np.zeros((3, 3))
    for i in range(lo, hi):
        f0 = 0.0
        f1 = 0.0
        f2 = 0.0
        for p in range(first[i], first[i + 1]):
            j = nbr[p]
            g0 = G[p, 0]
            g1 = G[p, 1]
            g2 = G[p, 2]
            f0 += g0
            f1 += g1
            f2 += g2
            F[j, 0] -= g0
            F[j, 1] -= g1
            F[j, 2] -= g2
            for b in range(3):
                w[0, b] -= g0 * R[p, b]
                w[1, b] -= g1 * R[p, b]
                w[2, b] -= g2 * R[p, b]
        F[i, 0] += f0
        F[i, 1] += f1
        F[i, 2] += f2
    for a in range(3):
        for b in range(3):
            W[a, b] += w[a, b]


@njit(cache=True, nogil=True)
def scatter_forces_virial(first, nbr, R, G, n_atoms):
    """Forces F (N, 3) and virial W = -Σ ∂E_i/∂R_ij ⊗ R_ij from the pair gradients G."""
    F = np.zeros((n_atoms, 3))
    W = np.zeros((3, 3))
    _scatter_range(0, n_atoms, first, nbr, R, G, F, W)
    return F, W


@njit(cache=True, nogil=True, parallel=True)
def scatter_forces_virial_parallel(first, nbr, R, G, n_atoms, n_blocks):
    """scatter_forces_virial over n_blocks blocks of atoms on numba's threads; each block
    scatters into its own force array (F_j of a neighbour may lie in any block), summed after."""
    n_blocks = max(1, min(n_blocks, n_atoms))
    Fb = np.zeros((n_blocks, n_atoms, 3))
    Wb = np.zeros((n_blocks, 3, 3))
    for c in prange(n_blocks):
        _scatter_range(c * n_atoms // n_blocks, (c + 1) * n_atoms // n_blocks, first, nbr, R, G,
                       Fb[c], Wb[c])
    F = np.empty((n_atoms, 3))
    for c in prange(n_blocks):    # the block sum, itself split by atoms
        for i in range(c * n_atoms // n_blocks, (c + 1) * n_atoms // n_blocks):
            for a in range(3):
                t = 0.0
                for b in range(n_blocks):
                    t += Fb[b, i, a]
                F[i, a] = t
    W = np.zeros((3, 3))
    for b in range(n_blocks):
        W += Wb[b]
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
