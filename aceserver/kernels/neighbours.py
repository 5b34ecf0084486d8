"""Cell-list neighbour list (numba), for any mix of periodic and open directions.

    first, j, R = neighbour_list(positions, cell, pbc, rcut)

Pairs are grouped by centre atom i in CSR form: the pairs of atom i are ``first[i]:first[i+1]``,
``j`` holds the original index of the neighbour and ``R = r_j + S @ cell - r_i`` (S integer, zero in
open directions) the vector from i to that image of j. Every pair with ``|R| < rcut`` is listed except
the zero self vector (i, i, S=0); other images of atom i are included, and distinct atoms on top of
each other appear with ``R = 0`` so that ``min_distance(R)`` can reveal them. The list is full (i->j and
j->i); within each i pairs are sorted by j, then by S (lexicographic), independently of the binning.

Method: the basis used for binning is a reduced (short, nearly orthogonal) basis of the periodic
lattice, completed by an orthonormal complement for open directions (so these never depend on the
possibly zero or arbitrary cell rows there). Positions are wrapped into the cell along periodic directions, binned into a grid whose
bins are about rcut / ``_BINS_PER_CUTOFF`` thick (thicker in small systems), and every atom scans
the (2m+1)^3 bin images around it; for cells thinner than ``rcut`` m grows, which enumerates all periodic
images. Along the innermost direction the scanned bins are visited as runs of consecutive bins,
whose atoms are contiguous in bin order. Candidates within reach are gathered without branching,
then turned into pairs. Up to a few million candidates the search runs in one pass into scratch
sized by the exact candidate count (per block of atoms when threaded), then copied out; larger
searches count, then fill, so the output is allocated exactly once.

Here: input checks, the grid plan and the limits; the numba kernels are in `neighbour_search`, the
reduced lattice basis in `lattice`. For small structures (serial, unsorted) the same plan runs in
numba with the search, in one kernel call (`batch_neighbours.search_one`), which also searches
many small structures at once for `evaluation.many`.
"""
from __future__ import annotations

import math

import numpy as np
from numba import njit

from aceserver.errors import ACEInputError, TooManyPairsError

from .lattice import binning_basis
from .batch_neighbours import search_one
from .neighbour_search import (_BINS_PER_CUTOFF, _MAX_BIN_IMAGES, _ONE_PASS_MAX_VISITS, _SLACK,
                               _WORK_FREE, _WORK_PER_PAIR, bin_and_count, frame, pairs,
                               pairs_one_pass, pairs_parallel, pairs_parallel_one_pass,
                               refresh_pairs, smallest_distance, sort_pairs, sort_pairs_parallel)

__all__ = ["neighbour_list", "min_distance", "refresh_pairs", "species_if_valid",
           "DEFAULT_MAX_PAIRS", "DEFAULT_MAX_NEIGHBOURS"]

# Limits that turn absurd inputs (a 0.1 Å periodic cell with rcut 6, a unit mix-up) into a clear
# error instead of minutes of work or an out-of-memory crash. ~40 bytes per pair are allocated.
DEFAULT_MAX_PAIRS = 50_000_000
DEFAULT_MAX_NEIGHBOURS = 20_000  # per atom; dense solids at rcut ~10 Å have a few thousand
# The grid plan's constants (work and image limits, bins per cut-off, one-pass size, slack) live
# with the kernels in `neighbour_search`, which `batch_neighbours` shares.
ONE_CALL_MAX_ATOMS = 64   # smaller structures: the plan and the search in one kernel call (~8 µs
                          # instead of ~36 µs for 2 atoms), the same pairs bit for bit


@njit(cache=True, nogil=True)
def species_if_valid(numbers, positions, cell, lookup, max_coordinate):
    """(True, lookup[numbers] as int64 (N,)) when every position and cell entry is within
    ±max_coordinate (NaN is not) and every number has a species (0 <= n < len(lookup),
    lookup[n] >= 0); else (False, an empty array), and the caller's checks name the problem.
    One kernel call instead of six numpy reductions (~8 µs of a 2-atom evaluation)."""
    bad = (False, np.empty(0, dtype=np.int64))
    for v in cell.ravel():
        if not abs(v) <= max_coordinate:
            return bad
    n = numbers.shape[0]
    z = np.empty(n, dtype=np.int64)
    for i in range(n):
        for k in range(3):
            if not abs(positions[i, k]) <= max_coordinate:
                return bad
        if numbers[i] < 0 or numbers[i] >= lookup.shape[0] or lookup[numbers[i]] < 0:
            return bad
        z[i] = lookup[numbers[i]]
    return True, z


def min_distance(R) -> float:
    """Smallest |R| over the pairs of a neighbour list (``inf`` if there are none).

    Zero means two distinct atoms on top of each other (or an atom on its own periodic image).
    """
    R = np.ascontiguousarray(R, dtype=np.float64).reshape(-1, 3)
    return float(smallest_distance(R))


def _validate(positions, cell, pbc, rcut):
    try:
        positions = np.array(positions, dtype=np.float64, order="C", copy=True)
    except (TypeError, ValueError) as exc:
        raise ACEInputError(f"positions must be an (N, 3) array of numbers: {exc}", "positions") from None
    if positions.size == 0:
        positions = positions.reshape(0, 3)
    if positions.ndim != 2 or positions.shape[1] != 3:
        raise ACEInputError(f"positions must have shape (N, 3), got {positions.shape}", "positions")
    if not np.all(np.isfinite(positions)):
        bad = int(np.nonzero(~np.all(np.isfinite(positions), axis=1))[0][0])
        raise ACEInputError(f"positions contain NaN or inf (first at atom {bad})", "positions")

    try:
        cell = np.array(cell, dtype=np.float64, order="C", copy=True)
    except (TypeError, ValueError) as exc:
        raise ACEInputError(f"cell must be a (3, 3) array of numbers: {exc}", "cell") from None
    if cell.shape != (3, 3):
        raise ACEInputError(f"cell must have shape (3, 3) (rows are lattice vectors), got {cell.shape}",
                            "cell")
    if not np.all(np.isfinite(cell)):
        raise ACEInputError("cell contains NaN or inf", "cell")

    pbc_arr = np.asarray(pbc)
    if pbc_arr.ndim == 0:
        pbc_arr = np.repeat(pbc_arr, 3)
    if pbc_arr.shape != (3,) or pbc_arr.dtype.kind not in "biu":
        raise ACEInputError(f"pbc must be 3 booleans, got {pbc!r}", "pbc")
    if pbc_arr.dtype.kind != "b" and not np.all((pbc_arr == 0) | (pbc_arr == 1)):
        raise ACEInputError(f"pbc must be 3 booleans, got {pbc!r}", "pbc")
    pbc_arr = pbc_arr.astype(bool)

    try:
        rcut = float(rcut)
    except (TypeError, ValueError):
        raise ACEInputError(f"rcut must be a number, got {rcut!r}", "rcut") from None
    if not (math.isfinite(rcut) and rcut > 0.0):
        raise ACEInputError(f"rcut must be finite and > 0, got {rcut}", "rcut")
    return positions, cell, pbc_arr, rcut


def _too_many(message, pbc, pairs=None, limit=None):
    if pbc.any():
        hint = (" The periodic cell is too small for this cutoff (use a larger supercell), or the cell"
                " / positions are not in Å.")
    else:
        hint = " Check that positions are in Å, or raise max_pairs / max_neighbours."
    field = "cell" if pbc.any() else "positions"
    if pairs is not None:     # the total pair count over its limit: a work limit the caller may answer apart
        return TooManyPairsError(message + hint, field, pairs, limit)
    return ACEInputError(message + hint, field)


def _check_counts(counts, rcut, max_pairs, max_neighbours, pbc) -> int:
    """The total pair count, after checking it and the largest count of one atom."""
    total = int(counts.sum())
    worst = int(counts.max())
    if worst > max_neighbours:
        raise _too_many(f"atom {int(counts.argmax())} has {worst} neighbours within rcut = {rcut} Å "
                        f"(limit max_neighbours = {max_neighbours}).", pbc)
    if total > max_pairs:
        raise _too_many(f"{total} pairs within rcut = {rcut} Å exceed max_pairs = {max_pairs} "
                        f"(about {40 * total / 1e9:.1f} GB).", pbc, total, int(max_pairs))
    return total


def neighbour_list(positions, cell, pbc, rcut, *, max_pairs=DEFAULT_MAX_PAIRS,
                   max_neighbours=DEFAULT_MAX_NEIGHBOURS, n_chunks=1, sort=True, checked=False):
    """Full neighbour list within ``rcut`` (Å), in CSR form grouped by centre atom.

    Parameters
    ----------
    positions : (N, 3) Å, any values (wrapped internally along periodic directions)
    cell : (3, 3) Å, rows are lattice vectors; rows of open directions are ignored (may be zero)
    pbc : (3,) bool (a single bool applies to all directions)
    rcut : float > 0
    max_pairs, max_neighbours : limits on the total pair count and on the pairs of any one atom;
        exceeding them (or needing more than about 64 candidate checks per permitted pair) raises
        ACEInputError before the output is allocated: field "cell" when any direction is periodic
        (the usual cause is a cell much smaller than rcut), else "positions". Over max_pairs it is
        its subclass TooManyPairsError, with the count (``pairs``) and the limit.

    Returns
    -------
    first : (N+1,) int64, the pairs of atom i are ``first[i]:first[i+1]``
    j : (P,) int64, neighbour atom index
    R : (P, 3) float64, ``positions[j] + S @ cell - positions[i]`` (S integer; the shift is formed
        in a reduced basis of the same lattice, equal to S @ cell up to rounding) with
        0 <= |R| < rcut, sorted by (j, S) within each i. |R| = 0 only for distinct atoms on top of
        each other (see min_distance).
    n_chunks : blocks of centre atoms searched in parallel on numba's threads; 1 runs the serial
        kernels (safe from any thread). The result does not depend on it.
    sort : order each atom's pairs by (j, S). Without it the order is that of the bin scan: still
        the same for the same input, and cheaper (the evaluator does not need the order).
    checked : the caller has checked the arrays (C-contiguous float64 positions (N, 3) and cell
        (3, 3), finite, bool pbc (3,): what `structure.prepare` gives) and keeps them unchanged
        while this runs; their checks and copies are skipped (~6 µs of a small new cell).
    """
    if checked:
        rcut = float(rcut)
    else:
        positions, cell, pbc, rcut = _validate(positions, cell, pbc, rcut)
    N = positions.shape[0]
    basis, T, inv_basis, recip = binning_basis(cell, pbc)  # validates the cell even if N == 0
    if N == 0:
        return np.zeros(1, dtype=np.int64), np.zeros(0, dtype=np.int64), np.zeros((0, 3))
    if N <= ONE_CALL_MAX_ATOMS and n_chunks <= 1 and not sort:
        ok, first, out_j, out_R, counts = search_one(positions, basis, inv_basis, recip, pbc, rcut,
                                                     int(max_pairs), int(max_neighbours))
        if ok:     # else a check below applies: it raises there, or the search runs below
            _check_counts(counts, rcut, max_pairs, max_neighbours, pbc)
            return first, out_j, out_R

    # cell_p: the reduced lattice (zero rows along open directions, which never shift)
    cell_p, s, n, wrapped, reach, scale, s_min, s_max = frame(positions, inv_basis, pbc, basis)
    if reach > 1e12:
        # the integer image of every atom must be exact (and fit int64)
        raise ACEInputError(f"positions lie about {reach:.3g} cells away from the periodic cell; "
                            "wrap them (or check units)", "positions")

    # Search radius with slack for rounding of large coordinates; R itself is tested exactly.
    rsearch = rcut * (1.0 + _SLACK) + 1e-12 * scale
    # |Δs_k| <= |ΔR| |b_k| with b_k the k-th reciprocal (column of inv_basis): the spacing of lattice
    # planes is 1/|b_k| (for open directions |b_k| = 1 and s_k is in Å).
    recip = recip.tolist()
    periodic = pbc.tolist()
    lo = [0.0, 0.0, 0.0]
    width = [1.0, 1.0, 1.0]
    nb = [1, 1, 1]  # Python ints until the grid is capped: open spans / rcut may exceed int64
    for k in range(3):
        if periodic[k]:
            nb[k] = max(1, int(math.floor(_BINS_PER_CUTOFF / (rsearch * recip[k] * (1.0 + 1e-6)))))
            width[k] = 1.0 / nb[k]
        else:
            lo[k] = float(s_min[k])
            width[k] = rsearch * (1.0 + 1e-6) / _BINS_PER_CUTOFF
            nb[k] = int(math.floor((float(s_max[k]) - lo[k]) / width[k])) + 1
    # Keep the grid O(N) (vacuum, isolated atoms far apart): coarsen the finest direction.
    max_bins = 2 * N + 64
    while math.prod(nb) > max_bins:
        k = nb.index(max(nb))
        if periodic[k]:
            nb[k] = max(1, nb[k] // 2)
            width[k] = 1.0 / nb[k]
        else:
            span = float(s_max[k]) - lo[k]
            width[k] *= 2.0
            nb[k] = int(math.floor(span / width[k])) + 1
    m_float = [rsearch * recip[k] / width[k] * (1.0 + _SLACK) for k in range(3)]
    m = [int(math.ceil(x)) for x in m_float]
    # bin images each atom scans: 2m+1 per direction, but never more than nb in an open direction
    images = math.prod(2 * m[k] + 1 if periodic[k] else min(2 * m[k] + 1, nb[k]) for k in range(3))
    if images * math.prod(nb) > _MAX_BIN_IMAGES:
        raise _too_many(f"rcut = {rcut} Å needs about {images:.3g} periodic images of the cell "
                        f"per atom.", pbc)

    cbin, start, order, visits, seen, cap = bin_and_count(
        s, np.array(lo), np.array(width), np.array(nb, dtype=np.int64),
        np.array(m, dtype=np.int64), pbc)
    pair_limit = min(int(max_pairs), int(max_neighbours) * N)
    visits = int(visits)
    cap = int(cap)   # the most candidates one atom visits: the search's scratch
    if visits > _WORK_PER_PAIR * pair_limit + _WORK_FREE:
        raise _too_many(f"rcut = {rcut} Å would need about {visits:.3g} candidate pair checks "
                        f"(limit {_WORK_PER_PAIR * pair_limit + _WORK_FREE:.3g}).", pbc)

    # sort key: h = g @ T is the caller's shift up to a per-(i, j) constant; its range from the
    # largest image index scanned. Python ints to detect int64 overflow (absurdly skewed cells),
    # in which case pairs are ordered by the shift in the reduced basis instead.
    g_max = [m[k] // nb[k] + 1 if periodic[k] else 0 for k in range(3)]
    key_T = T
    Tl = T.tolist()
    key_H = [sum(g_max[a] * abs(Tl[a][k]) for a in range(3)) for k in range(3)]
    if N * math.prod(2 * h + 1 for h in key_H) >= 2**62:
        key_T = np.eye(3, dtype=np.int64)
        key_H = g_max
    key_sp = np.array([2 * h + 1 for h in key_H], dtype=np.int64)
    key_H = np.array(key_H, dtype=np.int64)
    nb = np.array(nb, dtype=np.int64)
    m = np.array(m, dtype=np.int64)

    par = n_chunks > 1
    if visits <= _ONE_PASS_MAX_VISITS:
        # one pass into scratch sized by the candidate count, instead of a counting pass and a
        # filling pass (the search is most of the cost of a small cell)
        if par:
            first, counts, out_j, out_R, out_key = pairs_parallel_one_pass(
                positions, wrapped, n, cell_p, cbin, start, order, nb, m, pbc, rsearch, rcut,
                sort, seen, key_T, key_H, key_sp, cap, n_chunks)
            _check_counts(counts, rcut, max_pairs, max_neighbours, pbc)
        else:
            first = np.zeros(N + 1, dtype=np.int64)
            out_j = np.empty(visits, dtype=np.int64)
            out_R = np.empty((visits, 3))
            out_key = np.empty(visits if sort else 0, dtype=np.int64)
            counts = pairs_one_pass(positions, wrapped, n, cell_p, cbin, start, order, nb, m,
                                     pbc, rsearch, rcut, sort, first, out_j, out_R, out_key,
                                     key_T, key_H, key_sp, cap)
            _check_counts(counts, rcut, max_pairs, max_neighbours, pbc)
            total = int(first[N])
            out_j, out_R = out_j[:total].copy(), out_R[:total].copy()
            out_key = out_key[:total] if sort else out_key
    else:
        first = np.zeros(N + 1, dtype=np.int64)
        dummy_j = np.zeros(0, dtype=np.int64)
        dummy_R = np.zeros((0, 3))
        search = pairs_parallel if par else pairs
        extra = (cap, n_chunks) if par else (cap,)
        counts = search(positions, wrapped, n, cell_p, cbin, start, order, nb, m, pbc, rsearch,
                        rcut, False, False, first, dummy_j, dummy_R, dummy_j, key_T, key_H, key_sp,
                        *extra)
        total = _check_counts(counts, rcut, max_pairs, max_neighbours, pbc)
        np.cumsum(counts, out=first[1:])
        out_j = np.empty(total, dtype=np.int64)
        out_R = np.empty((total, 3))
        out_key = np.empty(total if sort else 0, dtype=np.int64)
        search(positions, wrapped, n, cell_p, cbin, start, order, nb, m, pbc, rsearch, rcut,
               True, sort, first, out_j, out_R, out_key, key_T, key_H, key_sp, *extra)
    if sort and par:
        sort_pairs_parallel(first, out_j, out_R, out_key, n_chunks)
    elif sort:
        sort_pairs(first, out_j, out_R, out_key)
    return first, out_j, out_R
