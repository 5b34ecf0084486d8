"""What every potential shares: structure checks, the neighbour list, the site pass over the
potential's SiteTables (serial or on numba's threads) and the force/virial assembly.

Subclasses (ACEModel from an ace1 basis, PACEPotential from a pacemaker .yace file) provide
`elements`, `rcut`, `_lookup`, `_tables(committee)`, `descriptor_sizes` and `_descriptor_rows`
and, with a committee, `_committee_forces` and `descriptor_weights`.
Front ends (ASE calculator, HTTP, i-PI, bench) call only `evaluate`, `descriptors`, `info()`,
`elements`, `rcut`, `sha256`, `committee` and `active_set`.
"""
from __future__ import annotations

import threading

import numba
import numpy as np

from ..errors import ACEInputError, EvaluationCancelled, NoActiveSetError
from ..kernels import site_pass as K
from ..kernels.neighbour_search import smallest_distance
from ..kernels.neighbours import DEFAULT_MAX_PAIRS, neighbour_list, species_if_valid
from ..kernels.scatter import scatter_forces_virial, scatter_forces_virial_parallel, symmetrised
from ..kernels.sums import numpy_sum
from ..structure import MAX_COORDINATE, MIN_DISTANCE, as_given, prepare
from . import many, uncertainty
from .result import Evaluation

# numba's default threading layer must not be entered by two threads at once: the parallel
# kernel runs under this lock, and a caller that finds it taken uses the serial kernel.
_PARALLEL_LOCK = threading.Lock()
CANCEL_BLOCK_ATOMS = 1024   # a cancellable evaluation looks at its event this often (~10-50 ms of work)
PARALLEL_MIN_ATOMS = 256   # below this, thread start-up and waits cost more than they save


class SitePotential:
    committee = None
    min_distance = MIN_DISTANCE      # Å; closer pairs are refused
    active_set: uncertainty.ActiveSetInverse | None = None   # A⁻¹ per element, for γ
    active_set_problem: str | None = None    # why none is attached (said when γ is asked for)

    def _neighbours(self, numbers, positions, cell, pbc, n_chunks=1, verlet=None,
                    max_pairs=DEFAULT_MAX_PAIRS):
        ok = False
        if as_given(numbers, positions, cell, pbc):     # an ASE Atoms' arrays: checks in one kernel
            ok, z = species_if_valid(numbers, positions, cell, self._lookup, MAX_COORDINATE)
            pos, pbc = positions, pbc.copy()
        if not ok:                                      # conversions, and the checks that name
            z, pos, cell, pbc = prepare(numbers, positions, cell, pbc, self._lookup, self.elements)
        if verlet is None:
            first, nbr, R = neighbour_list(pos, cell, pbc, self.rcut, n_chunks=n_chunks, sort=False,
                                           max_pairs=max_pairs, checked=True)
        else:
            first, nbr, R = verlet.pairs(z, pos, cell, pbc, self.rcut, n_chunks=n_chunks)
        if len(R) and smallest_distance(R) < self.min_distance:    # R: the search's float64 (P, 3)
            d2 = np.einsum("ij,ij->i", R, R)
            k = int(np.argmin(d2))
            i = int(np.searchsorted(first, k, side="right") - 1)
            what = ("are on top of each other" if self.min_distance == MIN_DISTANCE else
                    f"are closer than this potential's smallest tabulated distance "
                    f"{self.min_distance:.3g} Å")
            raise ACEInputError(f"atoms {i} and {int(nbr[k])} {what} (distance "
                                f"{np.sqrt(d2[k]):.3g} Å)", "positions")
        return z, first, nbr, R

    # ---- per-atom descriptors and uncertainty -----------------------------------------------
    def descriptors(self, numbers, positions, cell=None, pbc=False, *, atoms=None, threads=None,
                    max_pairs=DEFAULT_MAX_PAIRS, neighbours=None) -> np.ndarray:
        """Per-atom descriptor rows (n, max L_el): the values each site's energy is linear in
        (ace1: B_k(i), then the pair sums; see the family's `_descriptor_rows`), row k for atom
        atoms[k] (all atoms if None); columns past L of the row's element are 0. ace1: the
        dimensionless basis values (E = Σ_i D[i]·descriptor_weights()[z_i] + ΣE0, eV); pacemaker:
        the projections ∂E_i/∂s in eV (`pacemaker.projections`). Uses numba's threads for large
        structures unless threads=1. neighbours: this structure's (z, first, nbr, R) as
        `evaluation.many.neighbour_lists` gives them (the search then is not repeated)."""
        n = len(numbers) if np.ndim(numbers) == 1 else 0
        idx = np.arange(n, dtype=np.int64) if atoms is None else np.asarray(atoms, dtype=np.int64)
        if idx.ndim != 1 or (len(idx) and (idx.min() < 0 or idx.max() >= n)):
            raise ACEInputError(f"atoms must be indices 0..{n - 1} of the structure", "atoms")
        parallel = threads != 1 and len(idx) >= PARALLEL_MIN_ATOMS and _PARALLEL_LOCK.acquire(
            blocking=False)
        try:
            z, first, nbr, R = (self._neighbours(numbers, positions, cell, pbc, max_pairs=max_pairs)
                                if neighbours is None else neighbours)
            return self._descriptor_rows(z, first, nbr, R, idx, self._row_chunks(parallel))
        finally:
            if parallel:
                _PARALLEL_LOCK.release()

    @staticmethod
    def _row_chunks(parallel: bool) -> int:
        return 4 * numba.get_num_threads() if parallel else 1

    def attach_active_set(self, inverses: dict, model_sha256: str | None = None) -> None:
        """Attach A⁻¹ of each element's active set (what `.asi` files hold), in this model's
        descriptor columns. model_sha256, when given, must be this model's sha256 (an active set
        of another model would give meaningless γ). ValueError names what does not fit."""
        if model_sha256 is not None and model_sha256 != self.sha256:
            raise ValueError(f"the active set was built for model sha256 {model_sha256[:12]}…, "
                             f"not this model ({self.sha256[:12]}…): rebuild it with "
                             f"`aceserver activeset`")
        checked = uncertainty.checked_inverses(inverses, self.descriptor_sizes)
        self.active_set = uncertainty.ActiveSetInverse(checked, model_sha256)
        self.active_set_problem = None

    def _uncertainty(self, z, gamma, energies_committee,
                     threaded=False) -> uncertainty.SiteUncertainty | None:
        """The collector of what was asked for (None: nothing), checked before any work."""
        inverses = weights = e0 = None
        if gamma:
            if self.active_set is None:
                raise NoActiveSetError(
                    "this model has no active set, so it has no extrapolation grade γ"
                    + (f" ({self.active_set_problem})" if self.active_set_problem else "")
                    + ": build one from its training data with `aceserver activeset MODEL DATA...`")
            inverses = [self.active_set.inverses.get(el) for el in self.elements]
            present = np.flatnonzero(np.bincount(z, minlength=len(self.elements)))
            missing = [self.elements[s] for s in present if inverses[s] is None]
            if missing:
                raise NoActiveSetError(f"the active set has no entry for {missing}, so their "
                                       f"atoms have no extrapolation grade γ")
        if energies_committee and self.committee is not None:
            weights = np.stack([self.descriptor_weights(theta) for theta in self.committee])
            e0 = np.array([self.E0[el] for el in self.elements])
        if inverses is None and weights is None:
            return None
        sizes = [self.descriptor_sizes[el] for el in self.elements]
        return uncertainty.SiteUncertainty(z, sizes, inverses, weights, e0, threaded)

    def _descriptor_tables(self, tables):
        """Tables for the site pass to write descriptor rows as it goes (None: this family or
        these tables cannot; the rows then take a pass of their own)."""
        return None

    def _rows_by_blocks(self, z, first, nbr, R, collect, parallel, cancel):
        """Descriptor rows in a pass of their own, CANCEL_BLOCK_ATOMS atoms at a time."""
        n = len(z)
        for start in range(0, n, CANCEL_BLOCK_ATOMS):
            if cancel is not None and cancel.is_set():
                raise EvaluationCancelled("evaluation cancelled by its caller")
            stop = min(n, start + CANCEL_BLOCK_ATOMS)
            atoms = np.arange(start, stop, dtype=np.int64)
            collect.add(start, stop, self._descriptor_rows(z, first, nbr, R, atoms,
                                                           self._row_chunks(parallel)))

    def evaluate(self, numbers, positions, cell=None, pbc=False, *, committee=False,
                 committee_forces=False, forces=True, threads=None, verlet=None,
                 max_pairs=DEFAULT_MAX_PAIRS, cancel=None, gamma=False,
                 energies_committee=False) -> Evaluation:
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
        gamma: also the extrapolation grade γ of every atom (needs an attached active set, else
        `NoActiveSetError`; costs ~L² flops per atom, see `uncertainty`); energies_committee:
        every committee member's site energies (K, N) eV (models with a committee and
        descriptor weights), whose spread is `Evaluation.energies_std`.
        """
        if cancel is not None and cancel.is_set():
            raise EvaluationCancelled("evaluation cancelled by its caller")
        n = (numbers.shape[0] if numbers.ndim == 1 else 0) if type(numbers) is np.ndarray else (
            len(numbers) if np.ndim(numbers) == 1 else 0)
        with_committee = committee and self.committee is not None
        tables = self._tables(with_committee)
        neighbours = None
        if (verlet is not None and forces and cancel is None and not gamma and not energies_committee
                and not committee_forces and (threads == 1 or n < PARALLEL_MIN_ATOMS)):
            # MD's usual step: the Verlet list answers, serial pass; one kernel call for all of it
            step = verlet.step(numbers, positions, cell, pbc, self._lookup, self.rcut,
                               self.min_distance, tables)
            if step is None:
                # the general search (or its named errors), after which the list answers with
                # zero displacements: the same pairs, and MD keeps to one compiled site pass
                neighbours = self._neighbours(numbers, positions, cell, pbc, verlet=verlet,
                                              max_pairs=max_pairs)
                step = verlet.step(numbers, positions, cell, pbc, self._lookup, self.rcut,
                                   self.min_distance, tables)
            if step is not None:
                _, E, F, W, energy, e0, SAA, H, pairs = step
                result = Evaluation(energy=energy, forces=F, virial=W, energies=E[0], pairs=pairs)
                if with_committee:
                    result.energy_committee = K.committee_energies(tables, None, SAA, H, e0)
                return result
        parallel = threads != 1 and n >= PARALLEL_MIN_ATOMS and _PARALLEL_LOCK.acquire(blocking=False)
        try:
            n_chunks = 4 * numba.get_num_threads() if parallel else 1
            z, first, nbr, R = neighbours or self._neighbours(
                numbers, positions, cell, pbc, n_chunks=n_chunks, verlet=verlet, max_pairs=max_pairs)
            # called from the main thread, γ's products use BLAS threads only where the site pass
            # uses numba's: on a busy machine threaded BLAS beside a serial call cost 10x (64 zuo-Si
            # atoms, 2 cores); elsewhere the process's count (`uncertainty.one_blas_thread`)
            collect = (self._uncertainty(z, gamma, energies_committee, parallel)
                       if gamma or energies_committee else None)
            row_tables = None if collect is None else self._descriptor_tables(tables)
            if row_tables is not None or (cancel is not None and not parallel):
                out = K.fast_blocks(first, nbr, R, z, tables, forces, CANCEL_BLOCK_ATOMS,
                                    stop_requested=None if cancel is None else cancel.is_set,
                                    n_chunks=n_chunks, DT=row_tables,
                                    on_rows=None if collect is None else collect.add)
                if out is None:
                    raise EvaluationCancelled("evaluation cancelled by its caller")
                E, G, ec = out
            elif parallel:
                E, G, ec = K.fast_parallel(first, nbr, R, z, tables, forces, n_chunks)
            else:
                E, G, ec = K.fast_serial(first, nbr, R, z, tables, forces)
            if collect is not None and row_tables is None:
                self._rows_by_blocks(z, first, nbr, R, collect, parallel, cancel)
            if forces and parallel:
                F, W = scatter_forces_virial_parallel(first, nbr, R, G, len(z), numba.get_num_threads())
            elif forces:
                F, W = scatter_forces_virial(first, nbr, R, G, len(z))
        finally:
            if parallel:
                _PARALLEL_LOCK.release()
        if forces:
            W = symmetrised(W)          # 0.5 (W + Wᵀ)
        else:
            F, W = np.zeros((len(z), 3)), np.zeros((3, 3))
        energies = E[0]
        # energies.sum()'s bits (numpy's pairwise order) in one kernel call
        result = Evaluation(energy=numpy_sum(energies, 0, len(z)) if len(z) else 0.0, forces=F,
                            virial=W, energies=energies, pairs=len(nbr))
        if collect is not None:
            result.gamma, result.energies_committee = collect.gamma, collect.energies
        if with_committee:
            result.energy_committee = ec
        if committee_forces and self.committee is not None:
            result.forces_committee = self._committee_forces(z, first, nbr, R)
        return result

    def evaluate_many(self, structures, **options) -> list[Evaluation]:
        """One `Evaluation` per structure (ASE Atoms or (numbers, positions, cell, pbc)), small
        ones packed into one kernel pass: `aceserver.evaluation.many.evaluate_many`."""
        return many.evaluate_many(self, structures, **options)

    def evaluate_packed(self, counts, numbers, positions, cells, pbc, **options) -> list[Evaluation]:
        """`evaluate_many` of structures given as arrays: counts (S,), numbers (N,), positions
        (N, 3) Å, cells (S, 3, 3) Å, pbc (S, 3): `aceserver.evaluation.many.evaluate_packed`."""
        return many.evaluate_packed(self, counts, numbers, positions, cells, pbc, **options)
