"""Many structures in one call: `evaluate_many` packs small structures into one neighbour list
and runs one site pass and one force/virial scatter over all of them, then hands back one
`Evaluation` per structure (units as `Evaluation`). With threads, a chunk of structures is cut
into pieces of about equal work (`_Run.pieces`), each packed, searched, passed and turned into
results on one thread of a pool, so that the Python stages of one piece overlap the kernels of
the others (the kernels release the GIL); with a pair budget (spent in the caller's order) the
chunk stays whole and only its kernels are split across the threads. numba's own threading
layer is not used for them. The numbers do not depend on the threads.

Which path a structure takes (both give `SitePotential.evaluate`'s numbers bit for bit):

* small structures (at most `BATCH_MAX_ATOMS` atoms, a cell and positions that need no closer
  look): packed. Their neighbour lists come from `kernels.batch_neighbours`, which runs the
  per-structure search's own kernels and plan inside one numba call (the same pairs in the same
  order, bit for bit); then one site pass and one scatter over all (`kernels.batch_pass`),
  whose per-site work is that of the serial `evaluate`.
* every other structure (large ones, and every structure with a problem, so that its error is
  the one `evaluate` raises): `potential.evaluate` itself, one call each.

γ, committee site energies and descriptors (gamma=, energies_committee=, descriptors=) of the
packed structures come from one rows pass per chunk: `many_uncertainty`.

`evaluate_packed` takes the structures already packed (counts, numbers, positions, cells, pbc:
the HTTP packed batch) and runs the same chunks without a Python object per structure.

Input checks run once over the packed arrays (finite, in range, known elements); a structure
that fails them is re-run through `evaluate` for its error. Errors are per structure: every
structure that can be evaluated is, and `BatchError` carries the results (None where a structure
failed) and the errors by index.
"""
from __future__ import annotations

import copy
from concurrent.futures import ThreadPoolExecutor
from functools import partial
from itertools import repeat
from operator import attrgetter

import numba
import numpy as np
from ase import Atoms

from ..errors import ACEInputError, BatchError, EvaluationCancelled, TooManyPairsError
from ..kernels import batch_neighbours as BN
from ..kernels.batch_checks import after_search, check_packed, neutralise
from ..kernels.batch_pass import committee_sums, outputs, pass_range, structure_sums
from ..kernels.neighbours import DEFAULT_MAX_NEIGHBOURS, DEFAULT_MAX_PAIRS
from ..structure import MAX_COORDINATE
from .many_uncertainty import PackedUncertainty
from .result import Evaluation

BATCH_MAX_ATOMS = 64         # larger structures amortise their own set-up (~50-100 µs)
CHUNK_ATOMS = 1 << 16        # structures are packed this many atoms at a time (bounds the scratch)
CANCEL_CHUNK_ATOMS = 1024    # ... and this many when the caller may cancel (looked at per chunk)
COMMITTEE_CHUNK_BYTES = 1 << 26   # per-structure committee sums of one chunk
THREADS_MIN_ATOMS = 256      # fewer atoms in a chunk: one thread (as evaluate's PARALLEL_MIN_ATOMS)
PIECES_PER_THREAD = 1        # pieces per thread of a threaded chunk (`_Run.pieces`): more cost CPU


def read_structure(s):
    """(numbers, positions, cell, pbc) of an ASE Atoms or of such a tuple, as given."""
    arrays = getattr(s, "arrays", None)
    if arrays is not None:          # ase.Atoms: its own arrays, no copies
        return arrays["numbers"], arrays["positions"], s.cell.array, s.pbc
    try:
        numbers, positions, cell, pbc = s
    except (TypeError, ValueError):
        raise ACEInputError("a structure must be an ase.Atoms or a (numbers, positions, cell, "
                            f"pbc) tuple, got {type(s).__name__}") from None
    return numbers, positions, cell, pbc


def is_atoms(s) -> bool:
    """An ase.Atoms (its arrays have the types and shapes `_plain` asks for: ASE's setters keep them)."""
    return type(s) is Atoms


_ATOMS = {Atoms}


def _plain(numbers, positions, cell, pbc) -> bool:
    """Arrays that need no conversion (what ASE holds): checked over the whole batch at once."""
    return (type(numbers) is np.ndarray and numbers.ndim == 1 and numbers.dtype == np.int64
            and type(positions) is np.ndarray and positions.dtype == np.float64
            and positions.shape == (numbers.shape[0], 3)
            and type(cell) is np.ndarray and cell.dtype == np.float64 and cell.shape == (3, 3)
            and type(pbc) is np.ndarray and pbc.dtype == np.bool_ and pbc.shape == (3,))


class _Batch:
    """Packed structures: sizes, offsets, numbers, positions, cells, pbc; `index` maps a packed
    structure to the caller's index."""

    def __init__(self, index, numbers, positions, cells, pbc, sizes):
        self.index = index
        self.sizes = sizes
        self.offsets = np.zeros(len(numbers) + 1, dtype=np.int64)
        np.cumsum(self.sizes, out=self.offsets[1:])
        n = int(self.offsets[-1])
        S = len(sizes)
        self.numbers = _concat(numbers, _INT64, n) if n else np.zeros(0, dtype=np.int64)
        self.positions = _concat(positions, _FLOAT64, 3 * n).reshape(n, 3) if n else np.zeros((0, 3))
        # (3, 3) float64 cells and (3,) bool pbc (`_plain`, or an Atoms'): copies
        self.cells = _concat(cells, _FLOAT64, 9 * S).reshape(S, 3, 3)
        self.pbc = _concat(pbc, _BOOL, 3 * S).reshape(S, 3)

    @classmethod
    def packed(cls, lo, hi, offsets, numbers, positions, cells, pbc) -> "_Batch":
        """Structures lo..hi-1 of a packed batch (`evaluate_packed`): the same arrays as
        concatenating them one by one, as slices (numbers) and copies (what `checked` may zero)."""
        self = cls.__new__(cls)
        a0, a1 = int(offsets[lo]), int(offsets[hi])
        self.index = range(lo, hi)
        self.offsets = offsets[lo:hi + 1] - a0
        self.sizes = np.diff(self.offsets)
        self.numbers = numbers[a0:a1]
        self.positions = positions[a0:a1].copy()
        self.cells = cells[lo:hi].copy()
        self.pbc = pbc[lo:hi].copy()
        self.given = (self.numbers, positions[a0:a1], cells[lo:hi], pbc[lo:hi])   # the caller's
        return self

    def raw(self):
        """Each structure's (numbers, positions, cell, pbc) as given (views), made when asked for
        (the structures that `_Run.single` evaluates on their own)."""
        return _Views(self.offsets, *self.given)

    def owner(self, atom_mask) -> np.ndarray:
        """Packed structures that hold any atom of the mask."""
        atoms = np.flatnonzero(atom_mask)
        return np.unique(np.searchsorted(self.offsets, atoms, side="right") - 1)


_INT64, _FLOAT64, _BOOL = np.dtype(np.int64), np.dtype(np.float64), np.dtype(np.bool_)
_DTYPE = attrgetter("dtype")


def _concat(arrays, dtype, size) -> np.ndarray:
    """np.concatenate(arrays) flattened (the same elements, the same bits). Arrays of that dtype,
    all C-contiguous and of `size` elements in all (what ASE and `_plain` hold) are joined as
    bytes, one C-level pass (~30 ns an array against concatenate's ~100-130 ns); others go to
    np.concatenate as before."""
    if set(map(_DTYPE, arrays)) <= {dtype}:
        try:
            out = np.frombuffer(bytearray().join(arrays), dtype=dtype)   # writeable
        except (TypeError, BufferError):      # an array that is not C-contiguous
            out = None
        if out is not None and out.size == size and out.flags.aligned:   # the kernels' types
            return out
    return np.concatenate(arrays).reshape(-1)


class _Views:
    """raw[s] of a packed chunk: structure s's arrays, views of the caller's (which `checked`,
    working on the batch's copies, leaves as they were)."""

    def __init__(self, offsets, numbers, positions, cells, pbc):
        self.offsets = offsets
        self.numbers, self.positions, self.cells, self.pbc = numbers, positions, cells, pbc

    def __getitem__(self, s):
        a, b = self.offsets[s], self.offsets[s + 1]
        return self.numbers[a:b], self.positions[a:b], self.cells[s], self.pbc[s]


class _Given:
    """raw[s] of a chunk of Atoms: structure s's (numbers, positions, cell, pbc), made when
    asked for (only structures that `_Run.single` evaluates on their own are)."""

    def __init__(self, nums, poss, cells, pbcs):
        self.lists = nums, poss, cells, pbcs

    def __getitem__(self, s):
        return tuple(x[s] for x in self.lists)


_POOL: list = []     # [ThreadPoolExecutor] shared by all calls, made on first threaded use


def _run(fn, parts, workers=None) -> list:
    """fn(part) for every part, on the pool's threads when there are several (at most workers
    at once; None: one per part)."""
    if len(parts) <= 1:
        return [fn(p) for p in parts]
    workers = min(len(parts), workers or len(parts))
    if not _POOL or _POOL[0]._max_workers < workers:
        if _POOL:
            _POOL[0].shutdown(wait=False)
        _POOL[:] = [ThreadPoolExecutor(workers, thread_name_prefix="aceserver-many")]
    if _POOL[0]._max_workers == workers:
        return list(_POOL[0].map(fn, parts))
    # a larger pool than asked for: `workers` runners, each taking the next part
    todo = iter(enumerate(parts))
    out = [None] * len(parts)

    def runner(_):
        for i, p in todo:          # next() of a shared iterator: one part each, under the GIL
            out[i] = fn(p)

    list(_POOL[0].map(runner, range(workers)))
    return out


_PRIVATE: dict = {}   # id(tables) -> (tables, [private copies]): see `_private_tables`


def _copy_tables(T):
    """A copy of every C-contiguous array of the tables T (a namedtuple), with its writeable flag
    (so that the kernels see the same types and need no new compile)."""
    out = []
    for x in T:
        if isinstance(x, np.ndarray) and x.flags.c_contiguous:
            c = x.copy()
            c.flags.writeable = x.flags.writeable
            x = c
        out.append(x)
    return type(T)(*out)


def _private_tables(T, n) -> list:
    """n sets of the tables T, one per piece run at once: T itself and n - 1 copies, kept for
    later calls. numba counts references to an array atomically at every view a kernel takes,
    and two cores that count on one set of tables slow each other down (Si-tiny: two threads
    no faster than one); copies hold the same numbers, so the results are the same bits."""
    hit = _PRIVATE.get(id(T))
    if hit is None or hit[0] is not T:
        if len(_PRIVATE) >= 8:
            _PRIVATE.clear()
        hit = _PRIVATE[id(T)] = (T, [])
    copies = hit[1]
    while len(copies) < n - 1:
        copies.append(_copy_tables(T))
    return [T] + copies[:n - 1]


def _blocks(cost, n_blocks) -> np.ndarray:
    """Boundaries of n_blocks consecutive runs of structures of about equal total cost."""
    c = np.cumsum(cost, dtype=np.float64)
    total = c[-1] if len(c) else 0.0
    cuts = np.searchsorted(c, np.linspace(0.0, total, n_blocks + 1)[1:-1], side="right")
    return np.concatenate([[0], cuts, [len(cost)]]).astype(np.int64)


class _Run:
    """One evaluate_many call: options, results and errors by the caller's index, the budget."""

    def __init__(self, potential, n, forces, committee, committee_forces, threads, max_pairs,
                 cancel, gamma=False, energies_committee=False, descriptors=False):
        self.potential = potential
        self.gamma, self.energies_committee, self.descriptors = gamma, energies_committee, descriptors
        # γ, committee site energies, descriptors: many_uncertainty (its checks run here, first)
        self.extra = (PackedUncertainty(potential, gamma, energies_committee, descriptors)
                      if gamma or energies_committee or descriptors else None)
        self.forces, self.threads, self.cancel = forces, threads, cancel
        self.with_committee = committee and potential.committee is not None
        self.committee, self.committee_forces = committee, committee_forces
        self.tables = potential._tables(self.with_committee)
        self.rcut = float(potential.rcut)
        self.min_distance = float(potential.min_distance)
        self.lookup = potential._lookup
        self.results: list = [None] * n
        self.errors: dict = {}
        self.budget = max_pairs is not None       # a pair budget over the batch, else per structure
        self.limit = int(DEFAULT_MAX_PAIRS if max_pairs is None else max_pairs)
        self.remaining = self.limit

    def chunking(self, n: int) -> tuple[int, int]:
        """(atoms, structures) per chunk of n structures: CHUNK_ATOMS atoms (CANCEL_CHUNK_ATOMS when
        the caller may cancel), and with committee sums as many structures as COMMITTEE_CHUNK_BYTES
        of per-structure sums allow."""
        chunk_atoms = CHUNK_ATOMS if self.cancel is None else CANCEL_CHUNK_ATOMS
        if not self.with_committee:
            return chunk_atoms, n
        t = self.tables
        per = 8 * (t.coef[0].size + t.pair_spl[0].size)
        return chunk_atoms, max(1, COMMITTEE_CHUNK_BYTES // max(per, 1))

    def single(self, k, structure):
        """Structure k through `evaluate` (its error, if any, recorded), within the budget left."""
        numbers, positions, cell, pbc = structure
        try:
            ev = self.potential.evaluate(numbers, positions, cell, pbc, committee=self.committee,
                                         committee_forces=self.committee_forces,
                                         forces=self.forces, threads=self.threads,
                                         max_pairs=self.remaining, cancel=self.cancel,
                                         gamma=self.gamma, energies_committee=self.energies_committee)
            if self.descriptors:      # the same structure again, so the same pairs
                ev.descriptors = self.potential.descriptors(numbers, positions, cell, pbc,
                                                            threads=self.threads, max_pairs=ev.pairs)
        except ACEInputError as err:
            self.errors[k] = err
            return
        if self.budget:
            self.remaining -= ev.pairs
        self.results[k] = ev

    def checked(self, batch: _Batch) -> np.ndarray:
        """Status per packed structure after the input checks: 0 ok, 2 failed (sent through
        `single` for its error). Failed structures are neutralised in the packed arrays."""
        z, status = check_packed(batch.numbers, batch.positions, batch.cells, batch.pbc,
                                 batch.offsets, self.lookup, MAX_COORDINATE)
        batch.z = z
        refused = None if self.extra is None else self.extra.refused(z)
        if refused is not None:              # no active-set entry for γ: evaluate's error
            neutralise(batch.owner(refused), batch.offsets, batch.positions, z, batch.cells, batch.pbc,
                       status)
        return status

    def parts(self, cost, n_atoms) -> list[tuple[int, int]]:
        """Runs of structures of about equal cost, one per thread (one without threads)."""
        n = 1 if self.threads == 1 or n_atoms < THREADS_MIN_ATOMS else (
            self.threads or numba.get_num_threads())
        if n == 1 or len(cost) <= 1:         # what _blocks(cost, 1) gives, without its numpy
            return [(0, len(cost))] if len(cost) else []
        b = _blocks(cost, min(n, len(cost))).tolist()
        return [(lo, hi) for lo, hi in zip(b[:-1], b[1:]) if hi > lo]

    def pieces(self, sizes) -> list | None:
        """Cuts of a chunk of structures (sizes: atoms of each) into pieces of about equal work,
        each packed and run whole (search, pass, results) on one thread of the pool, so that one
        piece's Python stages overlap the others' kernels; None: the chunk is run as one, its
        kernels split across threads (one thread, few atoms, or a pair budget, which is spent in
        the caller's order)."""
        k = 1 if self.threads == 1 or self.budget else (self.threads or numba.get_num_threads())
        n = min(PIECES_PER_THREAD * k, int(sizes.sum()) // THREADS_MIN_ATOMS, len(sizes))
        if k <= 1 or n < 2:
            return None
        return _blocks(sizes + 2, n).tolist()     # work: the atoms and a fixed cost per structure

    def run_pieces(self, piece, cuts) -> None:
        """piece(lo, hi) -> (batch, raw) of structures lo..hi-1 of the chunk, for every run of
        cuts, at once on the pool: each piece on one thread (its kernels unsplit), and the
        structures that `single` evaluates on their own afterwards on this thread, in order
        (their `evaluate` may use threads of its own)."""
        deferred = []
        parts = [(lo, hi) for lo, hi in zip(cuts[:-1], cuts[1:]) if hi > lo]
        subs = []
        for tables in _private_tables(self.tables, len(parts)):
            sub = copy.copy(self)       # the same results, errors and options; one thread each
            sub.threads, sub.tables = 1, tables
            sub.single = lambda k, structure: deferred.append((k, structure))
            subs.append(sub)

        def run(i):
            subs[i].run_batch(*piece(*parts[i]))

        _run(run, list(range(len(parts))), self.threads or numba.get_num_threads())
        for k, structure in sorted(deferred, key=lambda d: d[0]):
            self.single(k, structure)

    def search_batch(self, batch: _Batch, raw):
        """The neighbour lists of one chunk of packed structures (parts of it searched at once
        on threads of a pool), after the budget: (status, pairs per structure, first, nbr, R)
        with the pairs of the structures of status 0 only; None if there are none."""
        status = self.checked(batch)
        offsets = batch.offsets

        def search(part):
            lo, hi = part
            a0, a1 = offsets[lo], offsets[hi]
            # the bases on the part's thread too (numpy's stacked linear algebra releases the GIL)
            basis, inv_basis, recip, ok = BN.bases(batch.cells[lo:hi], batch.pbc[lo:hi])
            st = status[lo:hi]
            st[(st == 0) & ~ok] = 1
            # private copies: numba counts references to arrays atomically, and threads that
            # share an array would fight over its count for every view they take
            return BN.search(batch.positions[a0:a1].copy(), offsets[lo:hi + 1] - a0, st, basis,
                             inv_basis, recip, batch.pbc[lo:hi].copy(), self.rcut,
                             BATCH_MAX_ATOMS, self.limit, DEFAULT_MAX_NEIGHBOURS)

        parts = self.parts(batch.sizes * batch.sizes + 1, len(batch.numbers))
        found = _run(search, parts)
        if len(found) == 1:
            first, nbr, R, closest = found[0]
        else:
            shift = np.cumsum([0] + [len(f[1]) for f in found])
            first = np.concatenate([[0]] + [f[0][1:] + p for f, p in zip(found, shift)])
            nbr = np.concatenate([f[1] + offsets[lo] for f, (lo, _) in zip(found, parts)])
            R = np.concatenate([f[2] for f in found])
            closest = np.concatenate([f[3] for f in found])
        # structures the per-structure search must judge (it raises there): atoms too close
        # (evaluate's own test on the same numbers), too many neighbours of one atom
        pairs = after_search(first, offsets, closest, status, self.min_distance,
                             DEFAULT_MAX_NEIGHBOURS)
        self.spend(batch, raw, status, pairs)
        ok = status == 0
        if not ok.any():
            return None
        if (pairs[~ok] > 0).any():            # drop the pairs of structures not evaluated here
            counts = np.diff(first)
            keep = np.repeat(np.repeat(ok, batch.sizes), counts)
            nbr, R = nbr[keep], R[keep]
            first = np.zeros_like(first)
            np.cumsum(counts * np.repeat(ok, batch.sizes), out=first[1:])
        return status, pairs, first, nbr, R

    def run_batch(self, batch: _Batch, raw) -> None:
        """Search, budget, pass and results of one chunk of packed structures; the kernels of
        parts of it run at once on threads of a pool (they release the GIL)."""
        found = self.search_batch(batch, raw)
        if found is None:
            return
        status, pairs, first, nbr, R = found
        ok = status == 0
        offsets = batch.offsets
        out = outputs(first, R, self.tables, len(batch.sizes))

        def site_pass(part):
            pass_range(part[0], part[1], offsets, first, nbr, R, batch.z, self.tables,
                       self.forces, out)

        parts = self.parts(pairs * ok + batch.sizes, len(batch.numbers))
        if self.extra is None:
            _run(site_pass, parts)
        else:
            extras = self.extra.run(self, batch, first, nbr, R, out, parts, _run)
        committee = committee_sums(self.tables, batch.z, offsets, out, 0, len(batch.sizes))
        E, _, F, W = out[:4]
        self.collect(batch, raw, status, pairs, E, F, W, committee, first, nbr, R)
        if self.extra is not None:
            self.extra.attach(self.results, batch, status, extras)

    def spend(self, batch, raw, status, pairs) -> None:
        """The pair budget in the caller's order: a structure may use what the structures before
        it left (as HTTP's per-request budget); the others go through `single` here."""
        if not self.budget:                 # each structure within the limit on its own
            status[(status == 0) & (pairs > self.limit)] = 1      # evaluate raises it there
            for s in np.flatnonzero(status != 0).tolist():
                self.single(batch.index[s], raw[s])
            return
        todo = status != 0
        if not todo.any() and int(pairs.sum()) <= self.remaining:
            self.remaining -= int(pairs.sum())
            return
        for s in range(len(status)):
            k = batch.index[s]
            if status[s] != 0:
                self.single(k, raw[s])
            elif pairs[s] > self.remaining:
                status[s] = 3
                field = "cell" if batch.pbc[s].any() else "positions"
                self.errors[k] = TooManyPairsError(
                    f"{int(pairs[s])} neighbour pairs within rcut = {self.rcut} Å, more than the "
                    f"{self.remaining} left of max_pairs = {self.limit} for this batch",
                    field, int(pairs[s]), self.remaining)
            else:
                self.remaining -= int(pairs[s])

    def collect(self, batch, raw, status, pairs, E, F, W, committee, first, nbr, R) -> None:
        """One `Evaluation` per structure of the chunk that the packed pass evaluated."""
        if self.forces:
            W = 0.5 * (W + W.transpose(0, 2, 1))
        energies = E[0]
        total = structure_sums(energies, batch.offsets).tolist()   # e.sum()'s bits
        offsets = batch.offsets.tolist()
        pairs = pairs.tolist()
        index = batch.index
        results = self.results
        with_cf = self.committee_forces and self.potential.committee is not None
        if not with_cf and type(index) is range and bool((status == 0).all()):
            # the usual chunk (every structure packed, the caller's order): the same fields as
            # below, made by C-level iteration (views of F, W and E; Evaluation's field order:
            # energy, forces, virial, energies, energy_committee, forces_committee, pairs)
            lo, hi = offsets[:-1], offsets[1:]    # slices made twice: none kept (fewer GC passes)
            results[index.start:index.stop] = map(
                Evaluation, total, map(F.__getitem__, map(slice, lo, hi)), W,
                map(energies.__getitem__, map(slice, lo, hi)),
                committee if self.with_committee else repeat(None), repeat(None), pairs)
            return
        for s in np.flatnonzero(status == 0).tolist():
            a, b = offsets[s], offsets[s + 1]
            ev = Evaluation(energy=total[s], forces=F[a:b], virial=W[s], energies=energies[a:b],
                            pairs=pairs[s])
            if self.with_committee:
                ev.energy_committee = committee[s]
            if with_cf:
                f = first[a:b + 1]
                ev.forces_committee = self.potential._committee_forces(
                    batch.z[a:b], f - f[0], nbr[f[0]:f[-1]] - a, R[f[0]:f[-1]])
            results[index[s]] = ev


def evaluate_many(potential, structures, *, forces=True, committee=False, committee_forces=False,
                  threads=None, max_pairs=None, cancel=None, gamma=False, energies_committee=False,
                  descriptors=False) -> list[Evaluation]:
    """One `Evaluation` per structure (energy eV, forces eV/Å, virial eV, per-atom energies eV,
    committee energies eV), in the order given. structures: a sequence of ASE `Atoms` or
    (numbers, positions Å, cell Å, pbc) tuples.

    threads: 1 runs everything on the calling thread; k > 1 (None: numba.get_num_threads())
    splits the packed structures into k runs of about equal work, run at once on a thread pool
    (the numbers do not depend on it; structures evaluated one by one get `evaluate(threads=...)`).
    max_pairs: a budget of neighbour pairs summed over the batch, spent in order (a structure
    may use what the ones before it left; HTTP's per-request budget); a structure over it fails
    with `TooManyPairsError`. None: each structure has `evaluate`'s own limit (DEFAULT_MAX_PAIRS).
    cancel: a `threading.Event`, looked at between chunks of ~`CANCEL_CHUNK_ATOMS` atoms (and
    inside structures evaluated one by one); once set, `EvaluationCancelled` is raised.
    gamma, energies_committee: as `evaluate` (`Evaluation.gamma`, `.energies_committee`; γ of a
    model without an active set raises its `NoActiveSetError` before any work); descriptors:
    also `Evaluation.descriptors`, each structure's `SitePotential.descriptors` rows. Packed
    structures get them from one rows pass over the chunk (`many_uncertainty`: rows bit for bit,
    γ and committee site energies within the rounding of their BLAS products).

    Raises `BatchError` when any structure fails: `.errors` maps the caller's index to its
    `ACEInputError` (the one `evaluate` raises for it), `.results` holds the others' results.
    """
    if cancel is not None and cancel.is_set():
        raise EvaluationCancelled("evaluation cancelled by its caller")
    n = len(structures)
    run = _Run(potential, n, forces, committee, committee_forces, threads, max_pairs, cancel,
               gamma, energies_committee, descriptors)
    _drive(run, structures, *run.chunking(n))
    if run.errors:
        raise BatchError(dict(sorted(run.errors.items())), run.results)
    return run.results


def _drive(run, structures, chunk_atoms, max_structures) -> None:
    """Read the structures and hand them to `run` in chunks (the others to `run.single`)."""
    if set(map(type, structures)) == _ATOMS:      # all ase.Atoms (is_atoms), read at C level
        return _drive_atoms(run, structures, chunk_atoms, max_structures)
    index, nums, poss, cells, pbcs = [], [], [], [], []
    atoms = 0
    for k, s in enumerate(structures):
        try:
            numbers, positions, cell, pbc = read_structure(s)
        except ACEInputError as err:
            run.errors[k] = err
            continue
        if not (is_atoms(s) or _plain(numbers, positions, cell, pbc)):
            if index:       # the structures before it first: the pair budget is spent in order
                _given_chunk(run, index, nums, poss, cells, pbcs)
                index, nums, poss, cells, pbcs = [], [], [], [], []
                atoms = 0
            run.single(k, (numbers, positions, cell, pbc))  # converts, checks, evaluates
            continue
        index.append(k)
        nums.append(numbers)
        poss.append(positions)
        cells.append(cell)
        pbcs.append(pbc)
        atoms += len(numbers)
        if atoms >= chunk_atoms or len(index) >= max_structures:
            _given_chunk(run, index, nums, poss, cells, pbcs)
            index, nums, poss, cells, pbcs = [], [], [], [], []
            atoms = 0
    if index:
        _given_chunk(run, index, nums, poss, cells, pbcs)


def _drive_atoms(run, structures, chunk_atoms, max_structures) -> None:
    """`_drive` for ase.Atoms only (the usual call): their arrays read in bulk, the same chunks
    (a chunk ends at the structure that reaches chunk_atoms, or at max_structures). Only the
    numbers are read here (the sizes cut the chunks); the rest by each piece (`_read_atoms`),
    on the pool's threads, where it overlaps the other pieces' kernels."""
    nums = [s.arrays["numbers"] for s in structures]
    sizes = np.fromiter(map(len, nums), dtype=np.int64, count=len(nums))
    ends = np.cumsum(sizes)
    lo = 0
    while lo < len(nums):       # the chunk ends at the structure that reaches chunk_atoms
        start = int(ends[lo - 1]) if lo else 0
        hi = min(len(nums), lo + max_structures,
                 int(np.searchsorted(ends, start + chunk_atoms, side="left")) + 1)
        _chunk(run, range(lo, hi), sizes[lo:hi], partial(_read_atoms, structures, nums, lo))
        lo = hi


def _read_atoms(structures, nums, base, lo, hi) -> tuple:
    """(numbers, positions, cells, pbc) lists of Atoms base+lo..base+hi-1: the arrays they hold."""
    part = structures[base + lo:base + hi]
    return (nums[base + lo:base + hi], [s.arrays["positions"] for s in part],
            [s.cell.array for s in part], [s.pbc for s in part])


def evaluate_packed(potential, counts, numbers, positions, cells, pbc, *, forces=True, committee=False,
                    committee_forces=False, threads=None, max_pairs=None, cancel=None, gamma=False,
                    energies_committee=False, descriptors=False) -> list[Evaluation]:
    """`evaluate_many` of structures given packed: counts (S,) atoms of each structure, numbers
    (N,) atomic numbers, positions (N, 3) Å, cells (S, 3, 3) Å, pbc (S, 3), N = sum(counts);
    the same results (bit for bit), options and errors by index, without a Python object per
    structure on the way in (the HTTP packed batch)."""
    if cancel is not None and cancel.is_set():
        raise EvaluationCancelled("evaluation cancelled by its caller")
    counts = np.asarray(counts, dtype=np.int64).reshape(-1)
    S = len(counts)
    offsets = np.zeros(S + 1, dtype=np.int64)
    np.cumsum(counts, out=offsets[1:])
    try:
        numbers = np.ascontiguousarray(numbers, dtype=np.int64).reshape(-1)
        positions = np.ascontiguousarray(positions, dtype=np.float64).reshape(-1, 3)
        cells = np.ascontiguousarray(cells, dtype=np.float64).reshape(S, 3, 3)
        pbc = np.ascontiguousarray(pbc, dtype=np.bool_).reshape(S, 3)
    except (TypeError, ValueError) as err:
        raise ACEInputError(f"packed structures could not be read: {err}") from None
    if (counts < 0).any() or len(numbers) != offsets[-1] or len(positions) != offsets[-1]:
        raise ACEInputError(f"counts add up to {int(offsets[-1])} atoms, but there are {len(numbers)} numbers "
                            f"and {len(positions)} positions", "positions")
    run = _Run(potential, S, forces, committee, committee_forces, threads, max_pairs, cancel,
               gamma, energies_committee, descriptors)
    chunk_atoms, max_structures = run.chunking(S)
    lo = 0
    while lo < S:      # the chunks `_drive` makes: up to the structure that reaches chunk_atoms
        hi = min(S, lo + max_structures,
                 int(np.searchsorted(offsets, offsets[lo] + chunk_atoms, side="left")))
        hi = max(hi, lo + 1)
        if run.cancel is not None and run.cancel.is_set():
            raise EvaluationCancelled("evaluation cancelled by its caller")
        cuts = run.pieces(counts[lo:hi])
        if cuts is None:
            batch = _Batch.packed(lo, hi, offsets, numbers, positions, cells, pbc)
            run.run_batch(batch, batch.raw())
        else:
            def piece(a, b, lo=lo):
                batch = _Batch.packed(lo + a, lo + b, offsets, numbers, positions, cells, pbc)
                return batch, batch.raw()

            run.run_pieces(piece, cuts)
        lo = hi
    if run.errors:
        raise BatchError(dict(sorted(run.errors.items())), run.results)
    return run.results


class _Lists(_Run):
    """`neighbour_lists`: the search and its checks only; each structure's limit is its own."""

    def single(self, k, structure):
        try:
            self.results[k] = self.potential._neighbours(*structure)
        except ACEInputError as err:
            self.errors[k] = err

    def spend(self, batch, raw, status, pairs) -> None:
        status[(status == 0) & (pairs > self.limit)] = 1     # the search raises it there
        for s in np.flatnonzero(status != 0).tolist():
            self.single(batch.index[s], raw[s])

    def run_batch(self, batch: _Batch, raw) -> None:
        found = self.search_batch(batch, raw)
        if found is None:
            return
        status, _, first, nbr, R = found
        offsets = batch.offsets.tolist()
        for s in np.flatnonzero(status == 0).tolist():
            a, b = offsets[s], offsets[s + 1]
            f = first[a:b + 1]
            self.results[batch.index[s]] = (batch.z[a:b], f - f[0], nbr[f[0]:f[-1]] - a,
                                            R[f[0]:f[-1]])


def neighbour_lists(potential, structures, *, threads=None) -> list:
    """(z, first, nbr, R) of every structure, as `potential._neighbours` gives them one by one
    (species indices; the CSR list of `kernels.neighbours.neighbour_list(sort=False)`, bit for
    bit), small structures searched in one kernel call. Raises `BatchError` (errors by index,
    the lists of the others in `.results`)."""
    run = _Lists(potential, len(structures), False, False, False, threads, None, None)
    _drive(run, structures, CHUNK_ATOMS, len(structures))
    if run.errors:
        raise BatchError(dict(sorted(run.errors.items())), run.results)
    return run.results


def _chunk(run, index, sizes, read):
    """One chunk of structures given one by one (the caller's index, atoms of each; read(lo, hi):
    the lists (numbers, positions, cells, pbc) of its structures lo..hi-1), packed whole or in
    pieces (`_Run.pieces`), each piece read on its own thread."""
    if run.cancel is not None and run.cancel.is_set():
        raise EvaluationCancelled("evaluation cancelled by its caller")
    cuts = run.pieces(sizes)
    if cuts is None:
        lists = read(0, len(sizes))
        run.run_batch(_Batch(index, *lists, sizes), _Given(*lists))
        return

    def piece(lo, hi):
        lists = read(lo, hi)
        return _Batch(index[lo:hi], *lists, sizes[lo:hi]), _Given(*lists)

    run.run_pieces(piece, cuts)


def _given_chunk(run, index, nums, poss, cells, pbcs) -> None:
    """`_chunk` of structures read into lists."""
    sizes = np.fromiter(map(len, nums), dtype=np.int64, count=len(nums))
    _chunk(run, index, sizes, lambda lo, hi: (nums[lo:hi], poss[lo:hi], cells[lo:hi], pbcs[lo:hi]))
