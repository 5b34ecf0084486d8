"""The steps around the site pass of one small serial evaluation, fused into few kernel calls:
a numba call costs ~0.5-2 µs of argument checks (~5 µs for the site tables), as much as the
work of a 2-atom cell. `reuse_pass` does an MD step whose Verlet list still holds: the species
and coordinate checks, the reuse test and refresh, the closest-pair distance (`verlet_reuse`),
the serial site pass and `assemble` (force/virial scatter, symmetrised virial, energy sum,
one-body total), all in one call.
Each step is the kernel the general path calls, so the numbers are the same bits.
Units: Å, eV, eV/Å.
"""
from __future__ import annotations

import numpy as np
from numba import njit

from .neighbour_search import refresh_near, smallest_distance
from .neighbours import species_if_valid
from .scatter import _scatter_range, symmetrised
from .site_pass import _serial
from .site_tables import SiteTables
from .sums import e0_total, numpy_sum

REUSED, CHECK, SEARCH = 0, 1, 2     # verlet_reuse's status: pairs refreshed; checks to name; search


@njit(cache=True, nogil=True)
def _same_bits(a, b):
    """Exactly the same bytes (as `structure.same_array` compares) of two C-contiguous arrays of
    one dtype and shape."""
    x = a.reshape(a.size).view(np.uint8)
    y = b.reshape(b.size).view(np.uint8)
    for k in range(x.shape[0]):
        if x[k] != y[k]:
            return False
    return True


@njit(cache=True, nogil=True)
def verlet_reuse(numbers, positions, cell, pbc, lookup, max_coordinate, z_ref, cell_ref, pbc_ref,
                 positions_ref, first_ref, nbr_ref, R_ref, rcut, max_move2):
    """One Verlet step of an evaluation: (status, z, first, nbr, R, d_min).

    CHECK: a coordinate beyond ±max_coordinate (or NaN) or a number without a species (the
    caller's checks name it); SEARCH: other species, cell or periodicity than the reference
    (compared bit for bit), or an atom moved more than sqrt(max_move2) Å since it: the caller
    searches again. REUSED: z = lookup[numbers], the pairs within rcut refreshed from the
    reference (`refresh_near`), d_min the closest pair's distance (inf without pairs) as
    `smallest_distance` forms it. numbers (N,) int64, positions (N, 3), cell (3, 3) float64,
    pbc (3,) bool, all C-contiguous."""
    no_pairs = (first_ref[:0].copy(), nbr_ref[:0].copy(), R_ref[:0].copy())
    ok, z = species_if_valid(numbers, positions, cell, lookup, max_coordinate)
    if not ok:
        return CHECK, z, no_pairs[0], no_pairs[1], no_pairs[2], 0.0
    if not (z.shape[0] == z_ref.shape[0] and _same_bits(z, z_ref) and _same_bits(cell, cell_ref)
            and _same_bits(pbc, pbc_ref)):
        return SEARCH, z, no_pairs[0], no_pairs[1], no_pairs[2], 0.0
    near, first, nbr, R = refresh_near(first_ref, nbr_ref, R_ref, positions, positions_ref, rcut,
                                       max_move2)
    if not near:
        return SEARCH, z, first, nbr, R, 0.0
    return REUSED, z, first, nbr, R, smallest_distance(R)


@njit(cache=True, nogil=True)
def assemble(first, nbr, R, G, E, e0, zat):
    """After a serial site pass: forces F (N, 3) eV/Å, the symmetrised virial 0.5 (W + Wᵀ) (eV),
    the energy Σ_i E[0, i] (numpy's order; 0 without atoms) and Σ_i e0[z_i] (eV), as
    `scatter_forces_virial`, `symmetrised`, `numpy_sum` and `e0_total` give them."""
    n = first.shape[0] - 1
    F = np.zeros((n, 3))
    W = np.zeros((3, 3))
    _scatter_range(0, n, first, nbr, R, G, F, W)
    energy = numpy_sum(E[0], 0, n) if n else 0.0
    return F, symmetrised(W), energy, e0_total(e0, zat)


@njit(cache=True, nogil=True)
def _reuse_pass(numbers, positions, cell, pbc, lookup, ref_z, ref_cell, ref_pbc, ref_positions,
                first_ref, nbr_ref, R_ref, limits, T, mode):
    max_coordinate, rcut, max_move2, min_distance = limits
    status, z, first, nbr, R, d_min = verlet_reuse(numbers, positions, cell, pbc, lookup,
                                                   max_coordinate, ref_z, ref_cell, ref_pbc,
                                                   ref_positions, first_ref, nbr_ref, R_ref, rcut,
                                                   max_move2)
    if status == REUSED and R.shape[0] and d_min < min_distance:
        status = CHECK
    if status != REUSED:
        return (status, np.empty((1, 0)), np.empty((0, 3)), np.empty((3, 3)), 0.0, 0.0,
                np.zeros((0, 0)), np.zeros((0, 0, 0, 0)), 0)
    E, G, SAA, H = _serial(first, nbr, R, z, T, True, mode)
    F, W, energy, e0 = assemble(first, nbr, R, G, E, T.e0, z)
    return status, E, F, W, energy, e0, SAA, H, nbr.shape[0]


# One entry point per radial mode, as site_pass's: the mode is a compile-time constant there.
# The tables come as a plain tuple: numba checks a tuple's types in C (~1.8 µs for the site
# tables) but a namedtuple's in Python (~4.7 µs), and the namedtuple is rebuilt inside.
@njit(cache=True, nogil=True)
def _reuse_pass_ace1(numbers, positions, cell, pbc, lookup, ref_z, ref_cell, ref_pbc,
                     ref_positions, first_ref, nbr_ref, R_ref, limits, t):
    return _reuse_pass(numbers, positions, cell, pbc, lookup, ref_z, ref_cell, ref_pbc,
                       ref_positions, first_ref, nbr_ref, R_ref, limits, SiteTables(*t), 0)


@njit(cache=True, nogil=True)
def _reuse_pass_tabulated(numbers, positions, cell, pbc, lookup, ref_z, ref_cell, ref_pbc,
                          ref_positions, first_ref, nbr_ref, R_ref, limits, t):
    return _reuse_pass(numbers, positions, cell, pbc, lookup, ref_z, ref_cell, ref_pbc,
                       ref_positions, first_ref, nbr_ref, R_ref, limits, SiteTables(*t), 1)


def reuse_pass(numbers, positions, cell, pbc, lookup, ref, limits, T, fields=None):
    """A Verlet step and the serial site pass with forces in one kernel call: `verlet_reuse`,
    site_pass's serial pass over the tables T, then `assemble`. ref: the Verlet list's
    (z, cell, pbc, positions, first, nbr, R) of its last search; limits: (max_coordinate Å,
    rcut Å, max_move2 Å², min_distance Å); fields: tuple(T) when the caller keeps it (else made
    here). Returns (status, E (1, N), F (N, 3), W (3, 3) symmetrised, energy, Σ e0[z_i], SAA,
    H, pairs); status REUSED, else `verlet_reuse`'s CHECK or SEARCH (also CHECK when a pair is
    closer than min_distance) and nothing computed."""
    return (_reuse_pass_ace1 if T.mode == 0 else _reuse_pass_tabulated)(
        numbers, positions, cell, pbc, lookup, *ref, limits, tuple(T) if fields is None else fields)
