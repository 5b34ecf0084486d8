"""Building a model's active sets from structures: per element, MaxVol (`active_set.maxvol`) over
the descriptor rows (`model.descriptors`) of every atom of that element, read batch by batch (the
frames' neighbour lists searched many small frames at a time, `evaluation.many.neighbour_lists`).

    build_active_set(model, structures, batch_atoms=..., tol=..., floor=...) -> ActiveSetBuild

`structures` is read several times (per element: once for the column scales, once for MaxVol's
start and once per pass; then once for the active atoms' environments): a sequence, or a function
returning a fresh iterable (`read_structures(paths)` streams extended-XYZ files that way). Rows
are recomputed on every read, never kept, so memory is O(L² + (block_rows + pool_rows +
batch_atoms) · L) whatever the data's size (plus one (frame, atom) pair of integers per atom of
the element, to name where the active rows came from).

Floor rows. Descriptor columns are far from independent on real data: the pair functions and the
order-1 many-body functions are radial sums of similar polynomials, and symmetric environments
repeat rows (the two atoms of a 2-atom diamond cell are inversion images: the same row). On
Si_tiny the shipped Si-tiny basis (L = 223) spans 178 directions; zuo-Si's data span its 1634
columns only down to 2.7e-16 of the largest singular value (6.7e-14 with scaled columns). An
exact MaxVol then either has no L independent rows (`ActiveSetError`) or an A so ill-conditioned
(κ ≈ 1e13) that γ and the swaps themselves are rounding noise (MaxVol cycles at tol = 1e-9). So
the candidate rows are the data rows plus L floor rows floor · s_k · e_k, s_k the largest |value|
of column k over the data (rounded to a power of two): MaxVol over data ∪ floor rows. A floor row
stays in A only along a direction the data span less than floor · s_k; there γ measures a new
atom's component in units of floor · s_k (pacemaker likewise adds a small diagonal to columns
that are constant on its data). Training atoms keep γ ≤ 1 + tol; where the data span every
direction well, no floor row is chosen and the set is the exact MaxVol of the data. floor = 0
turns them off: data of rank below L are then an `ActiveSetError` naming the element, the rank
and L.

The result holds per element the `ActiveSet` (A, A⁻¹, log |det A|, passes, swaps, max γ over the
data) and the (frame, atom) of each active row (or the column of each floor row), and the active
atoms' local environments (`io.activeset_file`), which are what a model's sidecar stores. The
rows recomputed from those environments are checked against A before they are returned.
"""
from __future__ import annotations

from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path

import ase.io
import numpy as np
from ase.data import atomic_numbers

from aceserver.active_sets import active_set_rows
from aceserver.errors import BatchError
from aceserver.evaluation.many import neighbour_lists
from aceserver.io import activeset_file, asi
from aceserver.io.activeset_file import ActiveSetEnvironments

from .active_set import ActiveSet, ActiveSetError, maxvol, rereadable

BATCH_ATOMS = 1024      # atoms per descriptor call (1024 × 1634 float64 = 13 MB)
BLOCK_ROWS = 4096       # rows per MaxVol block (4096 × 1634 float64 = 54 MB)
POOL_ROWS = 4096        # rows of MaxVol's greedy start
SEARCH_ATOMS = 4096     # frames' atoms whose neighbour lists are searched in one batched call
FLOOR = 1e-6            # floor rows: this fraction of each column's largest value (see above)


@dataclass
class ElementActiveSet:
    """One element's active set: `active_set` (rows A (L, L) in the model's descriptor units,
    inverse A⁻¹, log_abs_det, passes, swaps, max_gamma over the data); per row of A, `frames` and
    `atoms` (L,) (where a data row came from: frame index over the data, atom index in the
    frame; -1 on floor rows) and `columns` (L,) (the column k of a floor row floor·scale_k·e_k;
    -1 on data rows); `atoms_read` (atoms of the element in the data)."""
    element: str
    active_set: ActiveSet
    frames: np.ndarray
    atoms: np.ndarray
    columns: np.ndarray
    atoms_read: int

    @property
    def floor_rows(self) -> int:
        return int((self.columns >= 0).sum())


@dataclass
class ActiveSetBuild:
    """What `build_active_set` returns: the set of every element and the environments of the
    active atoms (the sidecar's contents)."""
    elements: dict[str, ElementActiveSet]
    environments: ActiveSetEnvironments

    def inverses(self) -> dict[str, np.ndarray]:
        """{element: A⁻¹ (L, L)}, as `model.attach_active_set` and pacemaker's `.asi` take it."""
        return {el: e.active_set.inverse for el, e in self.elements.items()}

    def save(self, path) -> None:
        """Write the environments as an `.activeset.npz` sidecar (`io.activeset_file`)."""
        activeset_file.write(path, self.environments)

    def save_asi(self, path) -> None:
        """Write A⁻¹ per element as pacemaker's `.asi` (`io.asi`)."""
        asi.write(path, self.inverses())


def _arrays(s):
    """(numbers, positions Å, cell Å, pbc) of an ase.Atoms or a `data.Config`."""
    if hasattr(s, "get_positions"):
        return s.numbers, s.positions, s.cell.array, s.pbc
    return s.numbers, s.positions, s.cell, s.pbc


def _searched(model, structures, number: int):
    """(frame, arrays, atoms of element `number`, neighbour list) of the frames that hold such atoms,
    in order, their neighbour lists searched SEARCH_ATOMS atoms of frames at a time
    (`evaluation.many.neighbour_lists`: the per-frame search's lists bit for bit, small frames in
    one kernel call). A chunk with a bad frame gets None: `descriptors` then searches each frame
    itself and raises that frame's error where it did before."""
    chunk, atoms = [], 0
    for frame, s in enumerate(structures):
        arrays = _arrays(s)
        mine = np.flatnonzero(np.asarray(arrays[0]) == number)
        if not len(mine):
            continue
        chunk.append((frame, arrays, mine))
        atoms += len(arrays[0])
        if atoms >= SEARCH_ATOMS:
            yield from _with_lists(model, chunk)
            chunk, atoms = [], 0
    yield from _with_lists(model, chunk)


def _with_lists(model, chunk):
    try:
        lists = neighbour_lists(model, [arrays for _, arrays, _ in chunk], threads=1) if chunk else []
    except BatchError:
        lists = [None] * len(chunk)
    for (frame, arrays, mine), found in zip(chunk, lists):
        yield frame, arrays, mine, found


def read_structures(paths, index: str = ":") -> Callable[[], Iterable]:
    """A function returning a fresh stream (ase.io.iread) of the structures in the files, in order:
    what `build_active_set` reads several times without holding the data in memory."""
    paths = [Path(p) for p in paths]
    for p in paths:
        if not p.is_file():
            raise FileNotFoundError(f"data file {p} does not exist")

    def stream():
        for p in paths:
            yield from ase.io.iread(p, index=index)
    return stream


def _source(structures) -> Callable[[], Iterable]:
    return rereadable(structures, "build_active_set", "a sequence or a function returning a fresh "
                      "iterable (e.g. read_structures(paths))")


class _ElementBlocks:
    """The re-iterable source of one element's rows for `maxvol`: each call streams the
    structures again, computes descriptor rows `batch` atoms at a time and yields them in blocks
    of exactly `block` rows (the last one shorter), each column multiplied by `inv_scale` (powers
    of two: exact), then the floor rows, if any, as one last block. MaxVol's swaps depend on the
    blocks, so the blocks do not depend on `batch`: neither does the result. The (frame, atom) of
    each block's rows is kept from the first complete read."""

    def __init__(self, model, read, number: int, width: int, batch: int, block: int,
                 progress=None, name=""):
        self.model, self.read, self.number, self.width = model, read, number, width
        self.batch, self.block = batch, block
        self.inv_scale, self.floor_rows = None, None
        self.progress, self.name = progress, name
        self.sources: list[np.ndarray] | None = None
        self.reads, self.atoms_read = 0, 0

    def _batches(self):
        for frame, (numbers, positions, cell, pbc), mine, lists in _searched(self.model, self.read(),
                                                                             self.number):
            for lo in range(0, len(mine), self.batch):
                part = mine[lo:lo + self.batch]
                D = self.model.descriptors(numbers, positions, cell, pbc, atoms=part, neighbours=lists)
                yield D[:, :self.width], np.column_stack([np.full(len(part), frame), part])

    def __call__(self):
        self.reads += 1
        sources, rows, src, n_rows, count = [], [], [], 0, 0

        def take(n):
            nonlocal rows, src, n_rows
            B, S = np.vstack(rows), np.vstack(src)
            rows, src, n_rows = [B[n:]], [S[n:]], n_rows - n
            sources.append(S[:n])
            return B[:n] if self.inv_scale is None else B[:n] * self.inv_scale

        for D, S in self._batches():
            rows.append(D)
            src.append(S)
            n_rows += len(D)
            count += len(D)
            while n_rows >= self.block:
                yield take(self.block)
        if n_rows:
            yield take(n_rows)
        if self.floor_rows is not None:
            yield self.floor_rows
        self.sources, self.atoms_read = sources, count   # reached only by a read to the end
        if self.progress is not None:
            self.progress(self.name, self.reads, count)


def _column_scales(blocks: _ElementBlocks) -> np.ndarray:
    """The largest |value| of each descriptor column over the data, rounded to a power of two
    (so that scaling by it is exact); a column that is zero on all the data gets the largest
    scale of the others."""
    top = np.zeros(blocks.width)
    for B in blocks():
        np.maximum(top, np.abs(B).max(axis=0), out=top)
    if blocks.atoms_read == 0:
        raise ActiveSetError("the data hold no atoms of this element")
    if not top.any():
        raise ActiveSetError(f"all {blocks.atoms_read} atoms have all-zero descriptors (no "
                             "neighbours within the cutoff?)")
    top[top == 0] = top.max()
    return np.exp2(np.round(np.log2(top)))


def build_element(model, structures, element: str, *, batch_atoms: int = BATCH_ATOMS,
                  tol: float = 1e-9, floor: float = FLOOR, pool_rows: int = POOL_ROWS,
                  block_rows: int = BLOCK_ROWS, progress=None) -> ElementActiveSet:
    """The active set of one element (see `build_active_set`)."""
    if batch_atoms < 1 or block_rows < 1:
        raise ValueError(f"batch_atoms and block_rows must be at least 1, got {batch_atoms} and "
                         f"{block_rows}")
    if not 0 <= floor < 1:
        raise ValueError(f"floor must be in [0, 1), got {floor}")
    number = int(atomic_numbers[element])
    width = int(model.descriptor_sizes[element])
    blocks = _ElementBlocks(model, _source(structures), number, width, batch_atoms, block_rows,
                            progress=progress, name=element)
    try:
        scale = _column_scales(blocks)
        blocks.inv_scale = 1.0 / scale
        blocks.floor_rows = floor * np.eye(width) if floor > 0 else None
        s = maxvol(blocks, tol=tol, pool_rows=max(pool_rows, width))
    except ActiveSetError as err:
        raise ActiveSetError(f"{element}: {err}") from None
    n_data = len(blocks.sources)
    frames, atoms, columns = (np.full(width, -1, dtype=np.int64) for _ in range(3))
    for r, (k, i) in enumerate(s.source):
        if k == n_data:            # a floor row: floor · e_i in scaled columns
            columns[r] = i
        else:
            frames[r], atoms[r] = blocks.sources[k][i]
    # back to the model's descriptor units: A = A_s diag(scale), A⁻¹ = diag(1/scale) A_s⁻¹ (exact)
    s.rows *= scale
    s.inverse /= scale[:, None]
    s.log_abs_det += float(np.log(scale).sum())
    return ElementActiveSet(element, s, frames, atoms, columns, blocks.atoms_read)


def build_active_set(model, structures, *, batch_atoms: int = BATCH_ATOMS, tol: float = 1e-9,
                     floor: float = FLOOR, pool_rows: int = POOL_ROWS,
                     block_rows: int = BLOCK_ROWS, progress=None, data_files=(),
                     data_sha256=()) -> ActiveSetBuild:
    """The active set of every element of `model` from `structures` (ase.Atoms or `data.Config`,
    a sequence or a function returning a fresh iterable of them).

    batch_atoms  atoms per descriptor call (memory batch_atoms · L float64); the result does
                 not depend on it
    tol          every atom of the data ends with γ ≤ 1 + tol
    floor        the floor rows' size, relative to each column's largest value (module
                 docstring); 0: none, and data of rank below L raise `ActiveSetError`
    pool_rows    rows of MaxVol's greedy start (at least L; see `active_set.maxvol`)
    block_rows   rows per MaxVol block (memory block_rows · L float64): the swaps, and so the
                 local maximum of |det A| they end in, depend on the blocks
    progress     progress(element, read, atoms) after each complete read of the data
    data_files, data_sha256   what the sidecar records of the data (file names, no folders)
    Raises `ActiveSetError` naming the element when its atoms cannot give an active set (no
    atoms; with floor=0, fewer linearly independent rows than its L descriptor columns)."""
    if not hasattr(model, "descriptor_sizes"):
        raise ActiveSetError(f"this model ({type(model).__name__}) has no per-atom descriptors, "
                             "so no active set can be built for it")
    read = _source(structures)
    sets = {el: build_element(model, read, el, batch_atoms=batch_atoms, tol=tol, floor=floor,
                              pool_rows=pool_rows, block_rows=block_rows, progress=progress)
            for el in model.elements}
    env = _environments(model, read, sets, floor, data_files, data_sha256)
    return checked_build(model, sets, env)


def checked_build(model, sets: dict[str, ElementActiveSet], env: ActiveSetEnvironments) -> ActiveSetBuild:
    """The build of `sets` and their environments, once the rows recomputed from the environments
    (`active_set_rows`, as a sidecar is read) are found equal to each set's rows A."""
    for el, rows in active_set_rows(model, env).items():
        e = sets[el]
        A = e.active_set.rows[np.argsort(e.columns >= 0, kind="stable")]   # data rows first
        scale = np.abs(A).max(axis=1, keepdims=True)
        # the same neighbour vectors in the same order: only the order of sums can differ
        if not (np.abs(rows - A) <= 1e-9 * scale).all():
            raise ActiveSetError(f"{el}: the descriptor rows recomputed from the stored "
                                 "environments differ from the active set's rows")
    return ActiveSetBuild(sets, env)


def _environments(model, read, sets: dict[str, ElementActiveSet], floor: float, data_files,
                  data_sha256) -> ActiveSetEnvironments:
    """The neighbours (vectors r_j - r_i, Å, and atomic numbers) of every active atom, elements
    in the model's order and each element's atoms in active-set row order, and the floor rows:
    one more read of the data, a neighbour list only for the frames that hold active atoms."""
    els = list(model.elements)
    frames = np.concatenate([sets[el].frames[sets[el].columns < 0] for el in els])
    atoms = np.concatenate([sets[el].atoms[sets[el].columns < 0] for el in els])
    vectors, numbers, centre = neighbour_environments(model, read, frames, atoms)
    return environments_of(model, sets, floor, vectors, numbers, centre, frames, atoms, data_files, data_sha256)


def environments_of(model, sets: dict[str, ElementActiveSet], floor: float, vectors, numbers, centre,
                    source_frame, source_atom, data_files, data_sha256) -> ActiveSetEnvironments:
    """The sidecar contents of `sets`: the data rows' environments (`vectors`, `numbers` per
    atom, `centre` numbers, elements in the model's order, each element's atoms in row order),
    and each set's floor rows, log |det A| and atoms read."""
    els = list(model.elements)
    data = {el: sets[el].columns < 0 for el in els}
    counts = np.array([len(v) for v in vectors], dtype=np.int64)
    floor_cols = [sets[el].columns[~data[el]] for el in els]
    floor_vals = [sets[el].active_set.rows[~data[el]].max(axis=1) for el in els]
    return ActiveSetEnvironments(
        model_sha256=str(model.sha256), elements=els,
        atom_counts=np.array([int(data[el].sum()) for el in els], dtype=np.int64),
        floor_counts=np.array([len(c) for c in floor_cols], dtype=np.int64),
        atoms_read=np.array([sets[el].atoms_read for el in els], dtype=np.int64),
        log_abs_det=np.array([sets[el].active_set.log_abs_det for el in els]),
        rcut=float(model.rcut), floor=float(floor), centre_numbers=centre,
        offsets=np.concatenate([[0], np.cumsum(counts)]).astype(np.int64),
        vectors=np.vstack(vectors) if vectors else np.zeros((0, 3)),
        numbers=np.concatenate(numbers) if numbers else np.zeros(0, dtype=np.int64),
        floor_columns=np.concatenate(floor_cols).astype(np.int64),
        floor_values=np.concatenate(floor_vals).astype(np.float64),
        source_frame=np.asarray(source_frame, dtype=np.int64), source_atom=np.asarray(source_atom, dtype=np.int64),
        data_files=[str(f) for f in data_files], data_sha256=[str(h) for h in data_sha256])


def neighbour_environments(model, read, frames, atoms) -> tuple[list, list, np.ndarray]:
    """(vectors (p_k, 3) Å, neighbour numbers (p_k,), centre numbers (n,)) of atom atoms[k] of
    frame frames[k] of the structures `read()` streams: one read, a neighbour list only for the
    frames named; frames[k] < 0 is skipped (None, None, 0)."""
    wanted: dict[int, list[int]] = {}
    for k, f in enumerate(frames):
        if f >= 0:
            wanted.setdefault(int(f), []).append(k)
    vectors, numbers = [None] * len(frames), [None] * len(frames)
    centre = np.zeros(len(frames), dtype=np.int64)
    for frame, s in enumerate(read() if wanted else ()):
        if frame not in wanted:
            continue
        nums, positions, cell, pbc = _arrays(s)
        nums = np.asarray(nums, dtype=np.int64)
        _, first, nbr, R = model._neighbours(nums, positions, cell, pbc)
        for k in wanted.pop(frame):
            a = atoms[k]
            lo, hi = first[a], first[a + 1]
            vectors[k], numbers[k], centre[k] = R[lo:hi].copy(), nums[nbr[lo:hi]], nums[a]
        if not wanted:
            break
    if wanted:
        raise ActiveSetError(f"the data changed between reads: frames {sorted(wanted)[:5]} are gone")
    return vectors, numbers, centre


def summary(build: ActiveSetBuild) -> list[dict]:
    """One row per element: L, atoms read, swaps, passes, log |det A|, max γ over the data."""
    return [{"element": el, "L": int(e.active_set.rows.shape[0]), "atoms": int(e.atoms_read),
             "floor_rows": e.floor_rows,
             "swaps": int(e.active_set.swaps), "passes": int(e.active_set.passes),
             "log_abs_det": float(e.active_set.log_abs_det),
             "max_gamma": float(e.active_set.max_gamma)} for el, e in build.elements.items()]
