"""What every potential shares: structure checks, the neighbour list, the site pass over the
potential's SiteTables (serial or on numba's threads) and the force/virial assembly.

Subclasses (ACEModel from an ace1 basis, PACEPotential from a pacemaker .yace file) provide
`elements`, `rcut`, `_lookup`, `_tables(committee)` and, with a committee, `_committee_forces`.
Front ends (ASE calculator, HTTP, i-PI, bench) call only `evaluate`, `info()`, `elements`,
`rcut`, `sha256` and `committee`.
"""
from __future__ import annotations

import threading

import numba
import numpy as np

from ..errors import ACEInputError, EvaluationCancelled
from ..kernels import site_pass as K
from ..kernels.neighbours import DEFAULT_MAX_PAIRS, min_distance, neighbour_list
from ..kernels.scatter import scatter_forces_virial, scatter_forces_virial_parallel
from ..structure import MIN_DISTANCE, prepare
from . import many
from .result import Evaluation

# numba's default threading layer must not be entered by two threads at once: the parallel
# kernel runs under this lock, and a caller that finds it taken uses the serial kernel.
_PARALLEL_LOCK = threading.Lock()
CANCEL_BLOCK_ATOMS = 1024   # a cancellable evaluation looks at its event this often (~10-50 ms of work)
PARALLEL_MIN_ATOMS = 256   # below this, thread start-up and waits cost more than they save


class SitePotential:
    committee = None
    min_distance = MIN_DISTANCE      # Å; closer pairs are refused

    def _neighbours(self, numbers, positions, cell, pbc, n_chunks=1, verlet=None,
                    max_pairs=DEFAULT_MAX_PAIRS):
        z, pos, cell, pbc = prepare(numbers, positions, cell, pbc, self._lookup, self.elements)
        if verlet is None:
            first, nbr, R = neighbour_list(pos, cell, pbc, self.rcut, n_chunks=n_chunks, sort=False,
                                           max_pairs=max_pairs)
        else:
            first, nbr, R = verlet.pairs(z, pos, cell, pbc, self.rcut, n_chunks=n_chunks)
        if len(R) and min_distance(R) < self.min_distance:
            d2 = np.einsum("ij,ij->i", R, R)
            k = int(np.argmin(d2))
            i = int(np.searchsorted(first, k, side="right") - 1)
            what = ("are on top of each other" if self.min_distance == MIN_DISTANCE else
                    f"are closer than this potential's smallest tabulated distance "
                    f"{self.min_distance:.3g} Å")
            raise ACEInputError(f"atoms {i} and {int(nbr[k])} {what} (distance "
                                f"{np.sqrt(d2[k]):.3g} Å)", "positions")
        return z, first, nbr, R

    def evaluate(self, numbers, positions, cell=None, pbc=False, *, committee=False,
                 committee_forces=False, forces=True, threads=None, verlet=None,
                 max_pairs=DEFAULT_MAX_PAIRS, cancel=None) -> Evaluation:
        """Energy (eV), forces (eV/Å), virial (eV) and per-atom energies of one structure.

        threads=1 forces the serial kernel; otherwise large structures use numba's threads.
        committee: also the energy of every committee member (eV); committee_forces: their forces.
        verlet: a `VerletList` kept by a caller that evaluates one structure as it moves (MD):
        the neighbour search is then reused while atoms move less than half its skin.
        max_pairs: the most neighbour pairs allowed (a work and memory bound, ~50 bytes and
        ~0.3 µs per pair); more raises `TooManyPairsError` before the pairs are allocated.
        cancel: a `threading.Event`; once it is set, the evaluation raises `EvaluationCancelled`
        at the next block of CANCEL_BLOCK_ATOMS atoms (serial kernel; the threaded kernel runs to
        its end, so there it is looked at only on entry). The numbers do not depend on it.
        """
        if cancel is not None and cancel.is_set():
            raise EvaluationCancelled("evaluation cancelled by its caller")
        n = len(numbers) if np.ndim(numbers) == 1 else 0
        with_committee = committee and self.committee is not None
        tables = self._tables(with_committee)
        parallel = threads != 1 and n >= PARALLEL_MIN_ATOMS and _PARALLEL_LOCK.acquire(blocking=False)
        try:
            n_chunks = 4 * numba.get_num_threads() if parallel else 1
            z, first, nbr, R = self._neighbours(numbers, positions, cell, pbc, n_chunks=n_chunks,
                                                verlet=verlet, max_pairs=max_pairs)
            if parallel:
                E, G, ec = K.fast_parallel(first, nbr, R, z, tables, forces, n_chunks)
            elif cancel is None:
                E, G, ec = K.fast_serial(first, nbr, R, z, tables, forces)
            else:
                out = K.fast_serial_blocks(first, nbr, R, z, tables, forces, cancel.is_set,
                                           CANCEL_BLOCK_ATOMS)
                if out is None:
                    raise EvaluationCancelled("evaluation cancelled by its caller")
                E, G, ec = out
            if forces and parallel:
                F, W = scatter_forces_virial_parallel(first, nbr, R, G, len(z), numba.get_num_threads())
            elif forces:
                F, W = scatter_forces_virial(first, nbr, R, G, len(z))
        finally:
            if parallel:
                _PARALLEL_LOCK.release()
        if forces:
            W = 0.5 * (W + W.T)
        else:
            F, W = np.zeros((len(z), 3)), np.zeros((3, 3))
        result = Evaluation(energy=float(E[0].sum()), forces=F, virial=W, energies=E[0], pairs=len(nbr))
        if with_committee:
            result.energy_committee = ec
        if committee_forces and self.committee is not None:
            result.forces_committee = self._committee_forces(z, first, nbr, R)
        return result

    def evaluate_many(self, structures, **options) -> list[Evaluation]:
        """One `Evaluation` per structure (ASE Atoms or (numbers, positions, cell, pbc)), small
        ones packed into one kernel pass: `aceserver.evaluation.many.evaluate_many`."""
        return many.evaluate_many(self, structures, **options)
