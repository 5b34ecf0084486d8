"""Extending a model's active set with new structures, without the data it was built from: what
the learning service does after each refit (`learning.learner`), so that γ stays available on
the refitted model.

    extend_active_set(model, env, structures, previous=..., ...) -> ActiveSetBuild

`env` is the sidecar of the model before the refit (`io.activeset_file`: its active atoms' local
environments). For ace1 models the descriptor rows are basis values, independent of the
parameters θ (`descriptor_weights(θ)` is where θ enters), so a refit that keeps the basis leaves
the old set's rows valid: they are recomputed from `env` with the new model (and, given the old
model as `previous`, checked bit for bit against the old model's rows: a refit that changed the
basis is an `ActiveSetError`). Per element, MaxVol (`active_set.maxvol`) starts from those L rows
and reads the new structures' rows, streamed `batch_atoms` atoms at a time, then the floor rows
(`active_set_build`'s rule: floor · s_k · e_k, s_k the largest |value| of column k rounded to a
power of two); memory O(L² + (block_rows + batch_atoms) · L). Every swap raises |det A|, so the
extended set's |det A| is not below the old one's, and every new atom ends with γ ≤ 1 + tol.

What differs from a rebuild over (old data + new structures), which needs the old data:
- s_k. The old data's column maxima are not stored. For a column with a floor row in the old set
  s_k is known (its floor value / floor); for the others the old active rows' maximum stands in,
  a lower bound, so a floor row there is no larger than a rebuild's. A floor row whose s_k grows
  with the new data is replaced by the larger one (|det A| grows by the same factor).
- The old data's atoms that are not in the old set are not read again: each had γ ≤ 1 + tol
  against the old A. A swap of row j for b (b A⁻¹ = g, |g_j| its largest) turns such an atom's
  coefficients β into β_k - β_j g_k/g_j (k ≠ j) and β_j/g_j, so the largest can at most double per
  swap; their γ may rise above 1 + tol where a rebuild would keep it ≤ 1 + tol. Measured: none on
  Si_tiny (tests/test_active_set_extend.py); on zuo-Cu, 10 configurations compressed by 5 %
  (136 swaps) left 597 of 27,416 training atoms above 1 + 1e-8, the largest at 1.55
  (benchmarks/bench_learn_activeset.py --rebuild).

The sidecar of the result lists `data_files` of the set extended followed by the extension's
(`data_files`, `data_sha256` arguments); the atoms it added have `source_frame` counted over the
extension's structures (the old data's frame count is not known), kept atoms keep theirs.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from ase.data import atomic_numbers

from aceserver.active_sets import active_set_rows
from aceserver.io.activeset_file import ActiveSetEnvironments

from .active_set import ActiveSetError, maxvol
from .active_set_build import (BATCH_ATOMS, BLOCK_ROWS, ActiveSetBuild, ElementActiveSet, _ElementBlocks,
                               _source, checked_build, environments_of, neighbour_environments)


@dataclass
class ExtendedElement(ElementActiveSet):
    """An element's extended set: as `ElementActiveSet` (frames/atoms over the new structures),
    and `kept` (L,): the index of a row's atom among the old set's atoms of the element (-1 on
    rows that are not the old set's atoms); `added` rows came from the new structures."""
    kept: np.ndarray = None

    @property
    def added(self) -> int:
        return int((self.frames >= 0).sum())


def _pow2(x: np.ndarray) -> np.ndarray:
    return np.exp2(np.round(np.log2(x)))


def _column_maxima(blocks: _ElementBlocks) -> np.ndarray:
    top = np.zeros(blocks.width)
    for B in blocks():
        np.maximum(top, np.abs(B).max(axis=0), out=top)
    return top


def _extend_element(model, read, el: str, env: ActiveSetEnvironments, rows: np.ndarray, tol: float,
                    batch_atoms: int, block_rows: int) -> ExtendedElement:
    atoms_slice, floor_slice = env.element_slices()[el]
    n_old = atoms_slice.stop - atoms_slice.start
    width = rows.shape[1]
    old_cols = env.floor_columns[floor_slice]
    blocks = _ElementBlocks(model, read, int(atomic_numbers[el]), width, batch_atoms, block_rows)
    top = _column_maxima(blocks)                 # the new rows, unscaled (inv_scale is None)
    new_atoms = blocks.atoms_read
    np.maximum(top, np.abs(rows[:n_old]).max(axis=0, initial=0.0), out=top)
    top[top == 0] = top.max() if top.any() else 1.0
    scale = _pow2(top)
    if env.floor > 0 and len(old_cols):          # s_k of the old data, exact where a floor row shows it
        scale[old_cols] = np.maximum(scale[old_cols], _pow2(env.floor_values[floor_slice] / env.floor))
    start = rows / scale
    start[n_old:] = 0.0                          # the old floor rows at the (possibly larger) new s_k
    start[n_old + np.arange(len(old_cols)), old_cols] = env.floor
    if new_atoms == 0:                           # nothing to add: the old rows, the floor rows at s_k
        s = maxvol([], start=start, tol=tol)
    else:
        blocks.inv_scale = 1.0 / scale
        blocks.floor_rows = env.floor * np.eye(width) if env.floor > 0 else None
        s = maxvol(blocks, start=start, tol=tol)
    n_data = len(blocks.sources)
    frames, atoms, columns, kept = (np.full(width, -1, dtype=np.int64) for _ in range(4))
    for r, (k, i) in enumerate(s.source):
        if k == -1:
            if i < n_old:
                kept[r] = i
            else:
                columns[r] = old_cols[i - n_old]
        elif k == n_data:                        # the floor block: floor · e_i in scaled columns
            columns[r] = i
        else:
            frames[r], atoms[r] = blocks.sources[k][i]
    s.rows *= scale                              # back to descriptor units (powers of two: exact)
    s.inverse /= scale[:, None]
    s.log_abs_det += float(np.log(scale).sum())
    read_total = int(env.atoms_read[env.elements.index(el)]) + new_atoms
    return ExtendedElement(el, s, frames, atoms, columns, read_total, kept)


def extend_active_set(model, env: ActiveSetEnvironments, structures, *, previous=None, tol: float = 1e-9,
                      batch_atoms: int = BATCH_ATOMS, block_rows: int = BLOCK_ROWS, data_files=(),
                      data_sha256=()) -> ActiveSetBuild:
    """The active set of `model` extended from the sidecar contents `env` by `structures`
    (ase.Atoms or `data.Config`, a sequence or a function returning a fresh iterable), keyed to
    `model.sha256` (module docstring). previous: the model `env` belongs to; its rows must equal
    `model`'s. Raises `ActiveSetError` (or the sidecar's `ModelFileError`) saying why not."""
    if not hasattr(model, "descriptor_sizes"):
        raise ActiveSetError(f"this model ({type(model).__name__}) has no per-atom descriptors")
    if list(env.elements) != list(model.elements):
        raise ActiveSetError(f"the active set has elements {list(env.elements)}; the model {list(model.elements)}")
    rows = active_set_rows(model, env)
    if previous is not None:
        if env.model_sha256 != previous.sha256:
            raise ActiveSetError(f"the active set belongs to the model {env.model_sha256[:12]}, not to "
                                 f"the previous model {previous.sha256[:12]}")
        for el, A in active_set_rows(previous, env).items():
            if not np.array_equal(A, rows[el]):
                raise ActiveSetError(f"{el}: the new model's descriptor rows of the active atoms differ from "
                                     "the previous model's (another basis): the set cannot be carried over")
    read = _source(structures)
    sets = {el: _extend_element(model, read, el, env, rows[el], tol, batch_atoms, block_rows)
            for el in model.elements}
    return checked_build(model, sets, _environments(model, read, env, sets, data_files, data_sha256))


def _environments(model, read, env: ActiveSetEnvironments, sets: dict[str, ExtendedElement], data_files,
                  data_sha256) -> ActiveSetEnvironments:
    """The sidecar contents of the extended sets: each element's atoms in row order (kept atoms'
    environments copied from `env`, added atoms' read from the structures), then its floor rows."""
    els = list(model.elements)
    slices = env.element_slices()
    data = {el: sets[el].columns < 0 for el in els}
    frames = np.concatenate([sets[el].frames[data[el]] for el in els])
    atoms = np.concatenate([sets[el].atoms[data[el]] for el in els])
    old = np.concatenate([np.where(sets[el].kept[data[el]] >= 0, sets[el].kept[data[el]] + slices[el][0].start, -1)
                          for el in els])
    vectors, numbers, centre = neighbour_environments(model, read, frames, atoms)
    for k in np.flatnonzero(old >= 0):
        lo, hi = env.offsets[old[k]], env.offsets[old[k] + 1]
        vectors[k], numbers[k], centre[k] = env.vectors[lo:hi], env.numbers[lo:hi], env.centre_numbers[old[k]]
    source_frame = np.where(old >= 0, env.source_frame[np.maximum(old, 0)], frames)
    source_atom = np.where(old >= 0, env.source_atom[np.maximum(old, 0)], atoms)
    return environments_of(model, sets, env.floor, vectors, numbers, centre, source_frame, source_atom,
                           [*env.data_files, *data_files], [*env.data_sha256, *data_sha256])


__all__ = ["ExtendedElement", "extend_active_set"]
