"""The site pass and the force/virial scatter over many structures packed into one neighbour
list (numba), over a range of structures per call: callers run ranges on threads of their own.

Packing: atoms of structure s are ``offsets[s]:offsets[s+1]``; the CSR list (first, nbr, R) holds
every structure's pairs with neighbour indices into the packed atoms, and no pair joins two
structures. Sites are independent, so the site energies and pair gradients are those of
`site_pass.fast_serial` on each structure's own list, bit for bit; forces and the virial are
scattered structure by structure with `scatter`'s own loop, so they are `scatter_forces_virial`'s
bits too, with one virial per structure. Committee sums (ace1 committees) are kept per structure,
so each structure's committee energies come from its own sums, as in a call of its own.
"""
from __future__ import annotations

import numpy as np
from numba import njit

from .scatter import _scatter_range
from .site_pass import _fast_range, _no_rows, committee_energies
from .sums import numpy_sum


@njit(cache=True, nogil=True)
def _structures(lo, hi, offsets, first, nbr, R, zat, T, mode, with_grad, E, G, F, W, SAA, H, D,
                DT):
    """Structures lo..hi-1: site energies E[0, i], pair gradients G, and with with_grad their
    forces F and virials W[s]. SAA, H: per-structure committee sums, or (1, 0, ...) without.
    D, DT: descriptor rows of these atoms (D[i - offsets[lo]], ace1 only) and their tables, or
    `_no_rows()` (no rows)."""
    d_base = offsets[lo]
    if SAA.shape[1] == 0:
        # no committee sums: one pass over the atoms of all these structures
        _fast_range(offsets[lo], offsets[hi], first, nbr, R, zat, T, mode, with_grad, E, G,
                    SAA[0], H[0], D, d_base, DT)
    else:
        for s in range(lo, hi):
            _fast_range(offsets[s], offsets[s + 1], first, nbr, R, zat, T, mode, with_grad, E, G,
                        SAA[s], H[s], D, d_base, DT)
    if with_grad:
        for s in range(lo, hi):
            _scatter_range(offsets[s], offsets[s + 1], first, nbr, R, G, F, W[s])


@njit(cache=True, nogil=True)
def outputs(first, R, T, n_structures):
    """Zeroed outputs for `pass_range`: site energies E (1, N), pair gradients G (pairs, 3),
    forces F (N, 3), virials W (S, 3, 3) and the committee sums SAA, H (per structure for an
    ace1 committee, else (1, 0, ...))."""
    N = first.shape[0] - 1
    E = np.empty((1, N))
    G = np.empty((R.shape[0], 3))
    F = np.zeros((N, 3))
    W = np.zeros((n_structures, 3, 3))
    if T.mode == 0 and T.coef.shape[0] > 1:     # ace1 committee: sums per structure
        SAA = np.zeros((n_structures, T.coef.shape[1], T.coef.shape[2]))
        H = np.zeros((n_structures,) + T.pair_spl.shape[1:])
    else:
        SAA = np.zeros((1, 0, 0))
        H = np.zeros((1, 0, 0, 0, 0))
    return E, G, F, W, SAA, H


# One entry point per radial mode, as in site_pass: the mode is a compile-time constant.
@njit(cache=True, nogil=True)
def _range_ace1(lo, hi, offsets, first, nbr, R, zat, T, with_grad, E, G, F, W, SAA, H):
    D, DT = _no_rows()
    _structures(lo, hi, offsets, first, nbr, R, zat, T, 0, with_grad, E, G, F, W, SAA, H, D, DT)


@njit(cache=True, nogil=True)
def _range_tabulated(lo, hi, offsets, first, nbr, R, zat, T, with_grad, E, G, F, W, SAA, H):
    D, DT = _no_rows()
    _structures(lo, hi, offsets, first, nbr, R, zat, T, 1, with_grad, E, G, F, W, SAA, H, D, DT)


@njit(cache=True, nogil=True)
def _rows_ace1(lo, hi, offsets, first, nbr, R, zat, T, with_grad, D, DT, E, G, F, W, SAA, H):
    _structures(lo, hi, offsets, first, nbr, R, zat, T, 0, with_grad, E, G, F, W, SAA, H, D, DT)


@njit(cache=True, nogil=True)
def structure_sums(e, offsets):
    """Σ e over each structure's atoms, summed as numpy's e[a:b].sum() sums them
    (`sums.numpy_sum`, any length), so the energies are `evaluate`'s bit for bit."""
    S = offsets.shape[0] - 1
    out = np.empty(S)
    for s in range(S):
        a, b = offsets[s], offsets[s + 1]
        out[s] = 0.0 if b == a else numpy_sum(e, a, b)
    return out


def pass_range(lo, hi, offsets, first, nbr, R, zat, T, with_grad, out):
    """The site pass and scatter of structures lo..hi-1 into `out` (from `outputs`). Ranges
    write disjoint parts of it, so callers may run several at once on threads of their own
    (the kernels release the GIL)."""
    if hi > lo:
        (_range_ace1 if T.mode == 0 else _range_tabulated)(lo, hi, offsets, first, nbr, R, zat,
                                                          T, with_grad, *out)


def pass_range_rows(lo, hi, offsets, first, nbr, R, zat, T, with_grad, out, D, DT):
    """`pass_range` of ace1 tables that also writes the descriptor rows of structures lo..hi-1
    to D[i - offsets[lo]] (D: (atoms, nB + pair columns), DT: `site_tables.DescriptorTables`),
    from the same A and AA (`site_pass._fast_range`): the rows `basis_rows.site_descriptors`
    makes, and the energies and gradients `pass_range` makes, bit for bit."""
    if hi > lo:
        _rows_ace1(lo, hi, offsets, first, nbr, R, zat, T, with_grad, D, DT, *out)


def committee_sums(T, zat, offsets, out, lo, hi):
    """Committee energies (K,) of structures lo..hi-1 from their sums (None without a committee)."""
    SAA, H = out[4], out[5]
    if SAA.shape[1] == 0:
        return [None] * (hi - lo)
    return [committee_energies(T, zat[offsets[s]:offsets[s + 1]], SAA[s], H[s])
            for s in range(lo, hi)]


def many_pass(offsets, first, nbr, R, zat, T, with_grad, bounds=None):
    """Site energies E (1, N), pair gradients G (pairs, 3), forces F (N, 3) eV/Å and virials
    W (S, 3, 3) eV (W = -Σ G ⊗ R, not symmetrised; F and W zero without with_grad) of the S packed
    structures, and per structure its committee energies (a list of (K,) arrays, None without
    committee sets in T). bounds: run as ranges bounds[c]:bounds[c+1] (one after the other here;
    the numbers do not depend on it)."""
    S = len(offsets) - 1
    out = outputs(first, R, T, S)
    bounds = np.array([0, S]) if bounds is None else bounds
    for c in range(len(bounds) - 1):
        pass_range(bounds[c], bounds[c + 1], offsets, first, nbr, R, zat, T, with_grad, out)
    committee = committee_sums(T, zat, offsets, out, 0, S)
    E, G, F, W = out[:4]
    return E, G, F, W, (None if out[4].shape[1] == 0 else committee)
