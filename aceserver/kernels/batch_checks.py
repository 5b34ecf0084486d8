"""The checks of many packed structures around the batched search, one kernel call each (numba,
GIL released, so that pieces of a batch on two threads overlap): before it, the input checks
(`check_packed`: positions and cells within ±max_coordinate Å, known species, per structure, by
`neighbours.species_if_valid`); after it, the pairs per structure and the structures that the
per-structure path must judge (`after_search`: atoms closer than the potential allows, too many
neighbours of one atom).

Packing as in `batch_neighbours`: atoms of structure s are ``offsets[s]:offsets[s+1]``; the
CSR list ``first`` (N + 1) runs over all packed atoms.
"""
from __future__ import annotations

import math

import numpy as np
from numba import njit

from .neighbours import species_if_valid


@njit(cache=True, nogil=True)
def check_packed(numbers, positions, cells, pbc, offsets, lookup, max_coordinate):
    """Species indices z (N,) int64 and status (S,) int64: 0 ok, 2 failed (a position or cell
    entry beyond ±max_coordinate or not finite, an unknown element). A failed structure is
    neutralised in place (positions and cell 0, pbc False, z 0): the search skips it and the
    caller evaluates it alone for its error."""
    S = offsets.shape[0] - 1
    z = np.zeros(numbers.shape[0], dtype=np.int64)
    status = np.zeros(S, dtype=np.int64)
    for s in range(S):
        a, b = offsets[s], offsets[s + 1]
        ok, zs = species_if_valid(numbers[a:b], positions[a:b], cells[s], lookup, max_coordinate)
        if ok:
            z[a:b] = zs
        else:
            _neutralise(s, offsets, positions, z, cells, pbc, status)
    return z, status


@njit(cache=True, nogil=True, inline="always")
def _neutralise(s, offsets, positions, z, cells, pbc, status):
    """Structure s failed a check (status 2): positions and cell 0, pbc False, z 0, so that the
    search skips it and the caller evaluates it alone for its error."""
    a, b = offsets[s], offsets[s + 1]
    positions[a:b] = 0.0
    z[a:b] = 0
    cells[s] = 0.0
    pbc[s] = False
    status[s] = 2


@njit(cache=True, nogil=True)
def neutralise(structures, offsets, positions, z, cells, pbc, status):
    """`_neutralise` each of `structures` (indices): those a later check refused."""
    for s in structures:
        _neutralise(s, offsets, positions, z, cells, pbc, status)


@njit(cache=True, nogil=True)
def after_search(first, offsets, closest, status, min_distance, max_neighbours):
    """Pairs of each structure (S,) int64 from the CSR ``first``; a searched structure (status
    0) whose closest pair is nearer than min_distance Å (closest: smallest |R|² of each, inf
    without pairs) or with an atom of more than max_neighbours neighbours gets status 1."""
    S = offsets.shape[0] - 1
    pairs = np.empty(S, dtype=np.int64)
    for s in range(S):
        a, b = offsets[s], offsets[s + 1]
        pairs[s] = first[b] - first[a]
        if status[s] != 0:
            continue
        if math.sqrt(closest[s]) < min_distance:
            status[s] = 1
            continue
        for i in range(a, b):
            if first[i + 1] - first[i] > max_neighbours:
                status[s] = 1
                break
    return pairs
