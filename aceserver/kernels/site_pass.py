"""The fast form of the ACE site pass: neighbours -> radial and angular parts -> A -> AA ->
E_i = E0 + Σ_k c_{z_i,k} AA_k + pair (ace1) or the embedding of the densities (pacemaker), with
the reverse pass giving the pair gradients ∂E_i/∂R_ij, serially or over blocks of atoms on numba's
threads. The shared pieces (A, AA, their pullbacks) are in `atomic_base`; the tables every
potential compiles to are `site_tables.SiteTables`.

Per-pair gradients are written to pair slots (no write conflicts between threads) and scattered into
forces and virial afterwards (`scatter`).
"""
from __future__ import annotations

import numpy as np
from numba import njit, prange

from .atomic_base import (accumulate_a, dot_range, forward_aa, pullback_a, reverse_aa,
                          site_features, site_scratch, sort_neighbours)
from .basis_rows import manybody_row
from .pace_features import embed, table_features
from .radial import agnesi, pair_envelope, spline_eval_one, spline_interval
from .site_tables import DescriptorTables
from .sums import e0_total
from .ylm import project

try:    # what np.einsum runs (optimize=False), without its ~2 µs of argument dispatch per call
    from numpy._core.multiarray import c_einsum as _einsum
except ImportError:     # another numpy layout: the public function, the same numbers
    _einsum = np.einsum


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
def pair_energy_grad(i, first, nbr, R, zat, pr_t, pair_p, pair_spl, G, with_grad, E, H, row, nB,
                     nz, pair_bspl):
    """Pair site energy Σ_j V_{z_i z_j}(r_ij) of parameter set 0 (merged splines) added to E[0, i]
    and its gradient (dV/dr r̂) to G. With committee sets (H non-empty), H[z_i, z_j, k, :] adds
    (t³, t², t, 1)·f_env of every pair on spline interval k: each set's pair energy is then one
    contraction of its spline coefficients with H (`committee_energies`). With a descriptor row
    (non-empty), the pair columns row[nB + n·nz + z_j] add P_n(y)·f_env from the unmerged splines
    pair_bspl on the same interval (as `basis_rows.pair_row`, in the same order)."""
    zi = zat[i]
    hist = H.shape[0] > 0
    rows = row.shape[0] > 0
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
        if rows:
            c = pair_bspl[k]
            col = nB + z
            for n in range(c.shape[1]):
                row[col + n * nz] += (((c[0, n] * t + c[1, n]) * t + c[2, n]) * t + c[3, n]) * f
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
def _fast_range(start, stop, first, nbr, R, zat, T, mode, with_grad, E, G, SAA, H, D, d_base, DT):
    """Fast form for atoms start..stop-1 over the site tables T (see `SiteTables`): site energies
    E[0, i] and the pair gradients G[p] = ∂E_i/∂R_ij of parameter set 0.

    With rows D (non-empty, ace1 only) and descriptor tables DT (`site_tables.DescriptorTables`,
    in T's DAG numbering), site i's descriptor row is written to D[i - d_base] from the same A
    and AA (`basis_rows.manybody_row`, and the pair columns in `pair_energy_grad`): γ then costs
    no second pass over the sites.

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
    rows = mode == 0 and D.shape[0] > 0
    no_row = np.zeros(0)
    nB = DT.c_ptr.shape[0] - 1
    for i in range(start, stop):
        zi = zat[i]
        lo, hi = T.node_lo[zi], T.node_hi[zi]
        for p in range(first[i], first[i + 1]):
            G[p, 0] = 0.0
            G[p, 1] = 0.0
            G[p, 2] = 0.0
        E[0, i] = T.e0[zi]
        J = sort_neighbours(i, first, nbr, zat, zb, slot)
        if rows:
            D[i - d_base] = 0.0
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
        if rows:     # the many-body columns; pair_energy_grad adds the pair columns
            manybody_row(AA, DT.c_ptr, DT.c_node, DT.c_val, D[i - d_base])
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
                             H, D[i - d_base] if rows else no_row, nB, nz, DT.pair_bspl)


@njit(cache=True, nogil=True)
def _committee_sums(T, mode, n):
    """Per-chunk accumulators of the committee sums (empty without committee sets)."""
    if mode == 0 and T.coef.shape[0] > 1:
        return (np.zeros((n, T.coef.shape[1], T.coef.shape[2])),
                np.zeros((n,) + T.pair_spl.shape[1:]))
    return np.zeros((n, 0, 0)), np.zeros((n, 0, 0, 0, 0))


@njit(cache=True, nogil=True)
def _no_rows():
    """Empty descriptor rows and tables: the pass writes no rows."""
    return np.zeros((0, 0)), DescriptorTables(np.zeros(1, dtype=np.int64),
                                              np.zeros(0, dtype=np.int64), np.zeros(0),
                                              np.zeros((1, 4, 0)))


@njit(cache=True, nogil=True)
def _serial(first, nbr, R, zat, T, with_grad, mode):
    N = first.shape[0] - 1
    E = np.empty((1, N))
    G = np.empty((R.shape[0], 3))
    SAA, H = _committee_sums(T, mode, 1)
    D, DT = _no_rows()
    _fast_range(0, N, first, nbr, R, zat, T, mode, with_grad, E, G, SAA[0], H[0], D, 0, DT)
    return E, G, SAA[0], H[0]


@njit(cache=True, nogil=True)
def block_outputs(first, R, T, n_chunks):
    """Outputs of the pass by blocks, for `fast_blocks`: site energies E (1, N), pair gradients
    G (pairs, 3) and the committee sums SAA, H of each of n_chunks threads' ranges (empty
    without committee sets)."""
    E = np.empty((1, first.shape[0] - 1))
    G = np.empty((R.shape[0], 3))
    SAA, H = _committee_sums(T, T.mode, n_chunks)
    return E, G, SAA, H


@njit(cache=True, nogil=True)
def _block_ace1(start, stop, first, nbr, R, zat, T, with_grad, E, G, SAA, H, D, DT):
    _fast_range(start, stop, first, nbr, R, zat, T, 0, with_grad, E, G, SAA[0], H[0], D, start,
                DT)


@njit(cache=True, nogil=True)
def _block_tabulated(start, stop, first, nbr, R, zat, T, with_grad, E, G, SAA, H, D, DT):
    _fast_range(start, stop, first, nbr, R, zat, T, 1, with_grad, E, G, SAA[0], H[0], D, start,
                DT)


@njit(cache=True, nogil=True, parallel=True)
def _parallel_block(start, stop, first, nbr, R, zat, T, with_grad, E, G, SAA, H, D, DT, mode):
    n = stop - start
    n_chunks = min(n, SAA.shape[0])
    for c in prange(n_chunks):
        _fast_range(start + c * n // n_chunks, start + (c + 1) * n // n_chunks, first, nbr, R,
                    zat, T, mode, with_grad, E, G, SAA[c], H[c], D, start, DT)


@njit(cache=True, nogil=True)
def _parallel_block_ace1(start, stop, first, nbr, R, zat, T, with_grad, E, G, SAA, H, D, DT):
    _parallel_block(start, stop, first, nbr, R, zat, T, with_grad, E, G, SAA, H, D, DT, 0)


@njit(cache=True, nogil=True)
def _parallel_block_tabulated(start, stop, first, nbr, R, zat, T, with_grad, E, G, SAA, H, D,
                              DT):
    _parallel_block(start, stop, first, nbr, R, zat, T, with_grad, E, G, SAA, H, D, DT, 1)


@njit(cache=True, nogil=True, parallel=True)
def _parallel(first, nbr, R, zat, T, with_grad, n_chunks, mode, D, DT):
    N = first.shape[0] - 1
    E = np.empty((1, N))
    G = np.empty((R.shape[0], 3))
    n_chunks = min(N, n_chunks)
    SAA, H = _committee_sums(T, mode, n_chunks)
    for c in prange(n_chunks):
        _fast_range(c * N // n_chunks, (c + 1) * N // n_chunks, first, nbr, R, zat, T, mode,
                    with_grad, E, G, SAA[c], H[c], D, 0, DT)
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
    D, DT = _no_rows()     # made here: a parallel function cannot build a namedtuple it uses
    return _parallel(first, nbr, R, zat, T, with_grad, n_chunks, 0, D, DT)


@njit(cache=True, nogil=True)
def _parallel_tabulated(first, nbr, R, zat, T, with_grad, n_chunks):
    D, DT = _no_rows()
    return _parallel(first, nbr, R, zat, T, with_grad, n_chunks, 1, D, DT)


def committee_energies(T, zat, SAA, H, e0=None):
    """Total energies (eV) of parameter sets 1.. (the committee) from the pass's sums; e0: Σ e0[z_i]
    when the caller has it (`e0_total`'s value)."""
    if SAA.shape[1] == 0:
        return None
    mb = _einsum("mzk,zk->m", T.coef[1:], SAA)
    pair = _einsum("mabkc,abkc->m", T.pair_spl[1:], H)
    return mb + pair + (e0_total(T.e0, zat) if e0 is None else e0)   # float(T.e0[zat].sum())'s bits


def fast_serial(first, nbr, R, zat, T, with_grad):
    """Site energies E (1, N) and pair gradients G (pairs, 3) of the potential over the site
    tables T, and the committee's total energies (None without committee sets)."""
    E, G, SAA, H = (_serial_ace1 if T.mode == 0 else _serial_tabulated)(first, nbr, R, zat, T,
                                                                        with_grad)
    return E, G, committee_energies(T, zat, SAA, H)


def fast_blocks(first, nbr, R, zat, T, with_grad, block_atoms, *, stop_requested=None,
                n_chunks=1, DT=None, on_rows=None):
    """As fast_serial (n_chunks 1) or fast_parallel (n_chunks ranges of each block on numba's
    threads), block_atoms atoms at a time. stop_requested() is asked before each block; once it
    says yes the work is abandoned and None returned. With descriptor tables DT (ace1 tables
    only), each block's descriptor rows (stop - start, L) are handed to on_rows(start, stop,
    rows) before the next block, so they never take more than one block's memory.
    Serially, consecutive blocks give fast_serial's bits (sites are independent; the committee
    sums accumulate in the same order). One entry point per radial mode, as for `_serial_ace1`:
    the constant mode lets the compiler drop the other mode's branches (1-3 % on small cells)."""
    E, G, SAA, H = block_outputs(first, R, T, n_chunks)
    if n_chunks > 1:
        block = _parallel_block_ace1 if T.mode == 0 else _parallel_block_tabulated
    else:
        block = _block_ace1 if T.mode == 0 else _block_tabulated
    D, DTe = _no_rows()
    if DT is not None:
        D = np.empty((block_atoms, DT.c_ptr.shape[0] - 1 + DT.pair_bspl.shape[2] * T.e0.shape[0]))
        DTe = DT
    n = first.shape[0] - 1
    for start in range(0, n, block_atoms):
        if stop_requested is not None and stop_requested():
            return None
        stop = min(n, start + block_atoms)
        block(start, stop, first, nbr, R, zat, T, with_grad, E, G, SAA, H, D, DTe)
        if DT is not None:
            on_rows(start, stop, D[:stop - start])
    return E, G, committee_energies(T, zat, SAA.sum(axis=0), H.sum(axis=0))


def fast_parallel(first, nbr, R, zat, T, with_grad, n_chunks):
    """As fast_serial, over n_chunks blocks of atoms on numba's threads (n_chunks >= 1)."""
    E, G, SAA, H = (_parallel_ace1 if T.mode == 0 else _parallel_tabulated)(
        first, nbr, R, zat, T, with_grad, n_chunks)
    return E, G, committee_energies(T, zat, SAA, H)
