"""Verlet neighbour list for one evolving structure (MD, relaxations, i-PI clients).

Neighbours are searched within rcut + skin once; while no atom has moved more than skin/2 since
then (same atoms, cell and periodicity), every pair now closer than rcut is in that list, so a
call only recomputes its pair vectors and keeps those within rcut (`refresh_pairs`). The search
is the costliest part of evaluating a small cell; the refresh costs a few per cent of it.

The list belongs to one caller (an ASE calculator, an i-PI connection); servers that answer
unrelated structures do not use one.
"""
from __future__ import annotations

import numpy as np

from ..kernels.neighbour_search import refresh_near
from ..kernels.neighbours import neighbour_list, refresh_pairs
from ..kernels.single_call import REUSED, reuse_pass
from ..structure import MAX_COORDINATE, as_given, same_array

DEFAULT_SKIN = 0.3   # Å: MD steps move atoms ~0.01 Å, so a search lasts tens of steps


class VerletList:
    """Pairs within rcut + skin (Å) of the last searched structure; `pairs` answers within rcut."""

    def __init__(self, skin: float = DEFAULT_SKIN):
        if not skin > 0:
            raise ValueError(f"skin must be > 0 Å, got {skin}")
        self.skin = float(skin)
        self.searches = 0      # how often the full search ran (for tests and benchmarks)
        self._ref = None
        self._arrays = None    # the reference as `step` hands it to its kernel
        self._tables = self._fields = None      # the last tables `step` saw, and tuple(tables)

    def step(self, numbers, positions, cell, pbc, lookup, rcut, min_distance, tables):
        """An evaluation's Verlet step and serial site pass with forces, in one kernel call
        (`kernels.single_call.reuse_pass`: its result tuple), when this list answers the
        structure as `pairs` would; None when it does not (no search yet, arrays that need
        conversion, checks that must name a problem, a pair closer than min_distance Å, or a
        structure to search again): the caller then takes the general path. numbers, positions,
        cell, pbc as given to `evaluate`; lookup: the model's species table; tables: its
        SiteTables."""
        ref = self._ref
        # another cell (screening: a new cell every call) is known without the kernel call
        if (ref is None or ref["rcut"] != rcut or not as_given(numbers, positions, cell, pbc)
                or not same_array(ref["cell"], cell)):
            return None
        if self._tables is not tables:          # the tables' fields, made once per tables
            self._tables, self._fields = tables, tuple(tables)
        out = reuse_pass(numbers, positions, cell, pbc, lookup, self._arrays,
                         (MAX_COORDINATE, float(rcut), (0.5 * self.skin) ** 2, float(min_distance)),
                         tables, self._fields)
        return out if out[0] == REUSED else None

    def pairs(self, z, positions, cell, pbc, rcut, n_chunks=1):
        """CSR (first, nbr, R) of the pairs within rcut, as neighbour_list(sort=False) gives them
        up to order. z, positions, cell, pbc: checked arrays (see structure.prepare)."""
        ref = self._ref
        same = (ref is not None and ref["rcut"] == rcut and same_array(ref["z"], z)
                and same_array(ref["cell"], cell) and same_array(ref["pbc"], pbc))
        if same:
            near, first, nbr, R = refresh_near(ref["first"], ref["nbr"], ref["R"], positions,
                                               ref["positions"], rcut, (0.5 * self.skin) ** 2)
            if near:
                return first, nbr, R
        first, nbr, R = neighbour_list(positions, cell, pbc, rcut + self.skin, n_chunks=n_chunks,
                                       sort=False, checked=True)
        self.searches += 1
        self._ref = dict(rcut=rcut, z=z.copy(), cell=cell.copy(), pbc=pbc.copy(),
                         positions=positions.copy(), first=first, nbr=nbr, R=R)
        ref = self._ref
        self._arrays = (ref["z"], ref["cell"], ref["pbc"], ref["positions"], first, nbr, R)
        return refresh_pairs(first, nbr, R, np.zeros_like(positions), rcut)
