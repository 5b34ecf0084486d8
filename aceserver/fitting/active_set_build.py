"""Building a model's active sets from structures: per element, MaxVol (`active_set.maxvol`) over
the descriptor rows (`model.descriptors`) of every atom of that element, read batch by batch.

    build_active_set(model, structures, batch_atoms=..., tol=...) -> ActiveSetBuild

`structures` is read several times (once for MaxVol's start and once per pass, per element, and
once more for the active atoms' environments): a sequence, or a function returning a fresh
iterable (`read_structures(paths)` streams extended-XYZ files that way). Rows are recomputed on
every read, never kept, so memory is O(L² + batch_atoms · L) whatever the data's size (plus one
(frame, atom) pair of integers per atom of the element, to name where the active rows came from).

The result holds per element the `ActiveSet` (A, A⁻¹, log |det A|, passes, swaps, max γ over the
data) and the (frame, atom) of each active row, and the active atoms' local environments
(`io.activeset_file`), which are what a model's sidecar stores. The rows recomputed from those
environments are checked against A before they are returned.
"""
from __future__ import annotations

from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path

import ase.io
import numpy as np
from ase.data import atomic_numbers

from aceserver.io import activeset_file, asi
from aceserver.io.activeset_file import ActiveSetEnvironments
from aceserver.loading import active_set_rows

from .active_set import ActiveSet, ActiveSetError, maxvol

BATCH_ATOMS = 2048      # rows per MaxVol block (2048 × 1634 float64 = 27 MB)


@dataclass
class ElementActiveSet:
    """One element's active set: `active_set` (rows A (L, L) in the model's descriptor units,
    inverse A⁻¹, log_abs_det, passes, swaps, max_gamma over the data), `frames` and `atoms` (L,)
    (where each active row came from: frame index over the data, atom index in the frame) and
    `atoms_read` (atoms of the element in the data)."""
    element: str
    active_set: ActiveSet
    frames: np.ndarray
    atoms: np.ndarray
    atoms_read: int


@dataclass
class ActiveSetBuild:
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
    if callable(structures):
        return structures
    if iter(structures) is structures:
        raise TypeError("build_active_set reads the structures several times: pass a sequence or a "
                        "function returning a fresh iterable (e.g. read_structures(paths))")
    return lambda: structures


class _ElementBlocks:
    """The re-iterable source of one element's rows for `maxvol`: each call streams the
    structures again and yields blocks of at most `batch` rows; the (frame, atom) of each block's
    rows is kept from the first complete read."""

    def __init__(self, model, read, number: int, width: int, batch: int, progress=None, name=""):
        self.model, self.read, self.number, self.width, self.batch = model, read, number, width, batch
        self.progress, self.name = progress, name
        self.sources: list[np.ndarray] | None = None
        self.reads, self.atoms_read = 0, 0

    def __call__(self):
        self.reads += 1
        sources, rows, src, n_rows, count = [], [], [], 0, 0
        for frame, s in enumerate(self.read()):
            numbers, positions, cell, pbc = _arrays(s)
            mine = np.flatnonzero(np.asarray(numbers) == self.number)
            for lo in range(0, len(mine), self.batch):
                part = mine[lo:lo + self.batch]
                if n_rows + len(part) > self.batch:
                    sources.append(np.vstack(src))
                    yield np.vstack(rows)
                    rows, src, n_rows = [], [], 0
                D = self.model.descriptors(numbers, positions, cell, pbc, atoms=part)
                rows.append(D[:, :self.width])
                src.append(np.column_stack([np.full(len(part), frame), part]))
                n_rows += len(part)
                count += len(part)
        if rows:
            sources.append(np.vstack(src))
            yield np.vstack(rows)
        self.sources, self.atoms_read = sources, count   # reached only by a read to the end
        if self.progress is not None:
            self.progress(self.name, self.reads, count)


def build_element(model, structures, element: str, *, batch_atoms: int = BATCH_ATOMS,
                  tol: float = 1e-9, pool_rows: int = 4096, progress=None) -> ElementActiveSet:
    """The active set of one element (see `build_active_set`)."""
    if batch_atoms < 1:
        raise ValueError(f"batch_atoms must be at least 1, got {batch_atoms}")
    number = int(atomic_numbers[element])
    width = int(model.descriptor_sizes[element])
    blocks = _ElementBlocks(model, _source(structures), number, width, batch_atoms, progress, element)
    try:
        s = maxvol(blocks, tol=tol, pool_rows=max(pool_rows, width))
    except ActiveSetError as err:
        raise ActiveSetError(f"{element}: {err}") from None
    where = np.array([blocks.sources[k][i] for k, i in s.source], dtype=np.int64).reshape(-1, 2)
    return ElementActiveSet(element, s, where[:, 0], where[:, 1], blocks.atoms_read)


def build_active_set(model, structures, *, batch_atoms: int = BATCH_ATOMS, tol: float = 1e-9,
                     pool_rows: int = 4096, progress=None, data_files=(),
                     data_sha256=()) -> ActiveSetBuild:
    """The active set of every element of `model` from `structures` (ase.Atoms or `data.Config`,
    a sequence or a function returning a fresh iterable of them).

    batch_atoms  rows per MaxVol block (memory batch_atoms · L float64)
    tol          every atom of the data ends with γ ≤ 1 + tol
    pool_rows    rows of MaxVol's greedy start (at least L; see `active_set.maxvol`)
    progress     progress(element, read, atoms) after each complete read of the data
    data_files, data_sha256   what the sidecar records of the data (file names, no folders)
    Raises `ActiveSetError` naming the element when its atoms cannot give an active set (fewer
    linearly independent rows than its L descriptor columns)."""
    read = _source(structures)
    sets = {el: build_element(model, read, el, batch_atoms=batch_atoms, tol=tol,
                              pool_rows=pool_rows, progress=progress) for el in model.elements}
    env = _environments(model, read, sets, data_files, data_sha256)
    for el, rows in active_set_rows(model, env).items():
        A = sets[el].active_set.rows
        scale = np.abs(A).max(axis=1, keepdims=True)
        # the same neighbour vectors in the same order: only the order of sums can differ
        if not (np.abs(rows - A) <= 1e-9 * scale).all():
            raise ActiveSetError(f"{el}: the descriptor rows recomputed from the stored "
                                 "environments differ from the active set's rows")
    return ActiveSetBuild(sets, env)


def _environments(model, read, sets: dict[str, ElementActiveSet], data_files,
                  data_sha256) -> ActiveSetEnvironments:
    """The neighbours (vectors r_j - r_i, Å, and atomic numbers) of every active atom, elements
    in the model's order and each element's atoms in active-set row order: one more read of the
    data, a neighbour list only for the frames that hold active atoms."""
    frames = np.concatenate([sets[el].frames for el in model.elements])
    atoms = np.concatenate([sets[el].atoms for el in model.elements])
    wanted: dict[int, list[int]] = {}
    for k, f in enumerate(frames):
        wanted.setdefault(int(f), []).append(k)
    vectors, numbers = [None] * len(frames), [None] * len(frames)
    centre = np.zeros(len(frames), dtype=np.int64)
    for frame, s in enumerate(read()):
        if frame not in wanted:
            continue
        nums, positions, cell, pbc = _arrays(s)
        nums = np.asarray(nums, dtype=np.int64)
        _, first, nbr, R = model._neighbours(nums, positions, cell, pbc)
        for k in wanted.pop(frame):
            a = atoms[k]
            lo, hi = first[a], first[a + 1]
            vectors[k], numbers[k], centre[k] = R[lo:hi].copy(), nums[nbr[lo:hi]], nums[a]
    if wanted:
        raise ActiveSetError(f"the data changed between reads: frames {sorted(wanted)[:5]} are gone")
    counts = np.array([len(v) for v in vectors], dtype=np.int64)
    return ActiveSetEnvironments(
        model_sha256=str(model.sha256), elements=list(model.elements),
        sizes=np.array([len(sets[el].frames) for el in model.elements], dtype=np.int64),
        log_abs_det=np.array([sets[el].active_set.log_abs_det for el in model.elements]),
        rcut=float(model.rcut), centre_numbers=centre,
        offsets=np.concatenate([[0], np.cumsum(counts)]).astype(np.int64),
        vectors=np.vstack(vectors) if vectors else np.zeros((0, 3)),
        numbers=np.concatenate(numbers) if numbers else np.zeros(0, dtype=np.int64),
        source_frame=frames.astype(np.int64), source_atom=atoms.astype(np.int64),
        data_files=[str(f) for f in data_files], data_sha256=[str(h) for h in data_sha256])


def summary(build: ActiveSetBuild) -> list[dict]:
    """One row per element: L, atoms read, swaps, passes, log |det A|, max γ over the data."""
    return [{"element": el, "L": int(e.active_set.rows.shape[0]), "atoms": int(e.atoms_read),
             "swaps": int(e.active_set.swaps), "passes": int(e.active_set.passes),
             "log_abs_det": float(e.active_set.log_abs_det),
             "max_gamma": float(e.active_set.max_gamma)} for el, e in build.elements.items()]
