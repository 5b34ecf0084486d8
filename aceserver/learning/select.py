"""Choosing which candidates to label: a greedy D-optimal design over their descriptor rows.

The current active set A (per element, the L rows MaxVol chose from the training data,
`fitting.active_set_build`) spans what the model has seen; a candidate frame's γ = max over its
atoms of max_k |(b A⁻¹)_k| says how far it lies outside. Labelling the top-γ frames would pick
many near-copies of one excursion (successive MD frames of one run). Instead, frame by frame:

    1. pick the candidate with the largest γ against the current A (stop if it is ≤ the threshold);
    2. A ← MaxVol over the rows of A and of the picked frame's atoms (`fitting.active_set.maxvol`):
       the dominant L rows of the union, so |det A| grows by what the new frame adds;
    3. recompute every remaining candidate's γ against the new A.

A candidate similar to one already picked has its γ lowered by step 2, so the picks spread over
distinct directions of descriptor space (each raises the volume |det A| the most at the time it is
taken). Columns are scaled by powers of two (exact) as in `fitting.active_set_build`, which leaves
γ unchanged and keeps the QR of MaxVol's start well scaled.

Memory: the candidates' rows, O(candidate atoms × L) float64; `MAX_CANDIDATES` frames at most (the
highest-γ ones beyond that are kept).
"""
from __future__ import annotations

import numpy as np
from ase.data import atomic_numbers

from aceserver.fitting.active_set import maxvol

MAX_CANDIDATES = 4096


def frame_rows(model, frames) -> list[dict[str, np.ndarray]]:
    """Per frame {element: descriptor rows (atoms of that element, L_el)} (`model.descriptors`)."""
    sizes = model.descriptor_sizes
    out = []
    for a in frames:
        D = model.descriptors(a.numbers, a.positions, a.cell.array, a.pbc)
        out.append({el: D[a.numbers == atomic_numbers[el], :L] for el, L in sizes.items()
                    if (a.numbers == atomic_numbers[el]).any()})
    return out


def _scale(A: np.ndarray) -> np.ndarray:
    top = np.abs(A).max(axis=0)
    top[top == 0] = top.max() if top.any() else 1.0
    return np.exp2(np.round(np.log2(top)))


def select(model, frames, active_rows: dict[str, np.ndarray], n: int, threshold: float,
           tol: float = 1e-9) -> list[tuple[int, float]]:
    """Up to `n` of `frames` (ase.Atoms) chosen as above, as (index into frames, γ when picked),
    in the order picked. `active_rows`: {element: A (L, L)} in the model's descriptor units."""
    if n <= 0 or not frames:
        return []
    if len(frames) > MAX_CANDIDATES:
        g = np.array([a.info.get("max_gamma", 0.0) for a in frames])
        keep = np.sort(np.argsort(-g, kind="stable")[:MAX_CANDIDATES])
    else:
        keep = np.arange(len(frames))
    rows = frame_rows(model, [frames[i] for i in keep])
    scale = {el: _scale(A) for el, A in active_rows.items()}
    A = {el: active_rows[el] / scale[el] for el in active_rows}
    # all candidates' rows per element, stacked, and which frame each row belongs to
    stacked, owner = {}, {}
    for el in A:
        parts = [(k, r[el]) for k, r in enumerate(rows) if el in r]
        stacked[el] = (np.vstack([p for _, p in parts]) / scale[el] if parts
                       else np.zeros((0, A[el].shape[1])))
        owner[el] = np.concatenate([np.full(len(p), k) for k, p in parts]).astype(np.int64) if parts \
            else np.zeros(0, dtype=np.int64)

    def grades() -> np.ndarray:
        g = np.zeros(len(rows))
        for el in A:
            if len(owner[el]):
                G = np.abs(stacked[el] @ np.linalg.inv(A[el])).max(axis=1)
                np.maximum.at(g, owner[el], G)
        return g

    chosen: list[tuple[int, float]] = []
    taken = np.zeros(len(rows), dtype=bool)
    g = grades()
    while len(chosen) < n:
        g[taken] = -np.inf
        k = int(np.argmax(g))
        if not g[k] > threshold:
            break
        chosen.append((int(keep[k]), float(g[k])))
        taken[k] = True
        for el, B in rows[k].items():
            A[el] = maxvol([A[el], B / scale[el]], tol=tol).rows
        g = grades()
    return chosen
