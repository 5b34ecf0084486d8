"""D-optimal active sets (pacemaker's MaxVol) and the extrapolation grade γ, for one species.

Rows are atoms (or any samples), columns the L basis functions their energy is linear in. The active
set is L rows A (L × L) of the data chosen so that |det A| is locally maximal: no single row swap
increases it by more than a factor 1 + tol. Equivalently (Goreinov–Tyrtyshnikov), every data row b
has the extrapolation grade

    γ(b) = max_k |(b A⁻¹)_k| ≤ 1 + tol,

since replacing active row k by b multiplies |det A| by |(b A⁻¹)_k|. γ ≤ 1 interpolates; pacemaker
calls 1–5 mild extrapolation and > 5 unreliable. γ is unchanged by any invertible change of the
column basis (B M (A M)⁻¹ = B A⁻¹), so column scaling does not matter.

`maxvol` reads the rows as blocks, several times, and keeps only the active rows, A⁻¹, one block
and the start pool in memory: O(L² + (block + pool_rows) × L), not O(rows).

1. Greedy start: blocks are gathered until the pool (the start rows so far plus new blocks) holds
   `pool_rows` rows, then reduced to its first min(rank, L) pivots of a column-pivoted QR of poolᵀ
   (greedy volume); repeated with further blocks until L independent rows are found. Fewer rows than L, or rows of rank < L, raise `ActiveSetError`:
   pacemaker needs at least L atoms per species too, and we do not regularise, because a γ computed
   with a regularised A⁻¹ would be meaningless along the directions the data never spanned.
2. Swaps, block by block: G = B A⁻¹; while max |G_ij| > 1 + tol, active row j becomes data row i
   and A⁻¹ and G are updated by Sherman–Morrison (A⁻¹ ← A⁻¹ − A⁻¹e_j (g_i − e_j)ᵀ / g_ij, the same
   rank-one change of G), each swap raising |det A| by the factor |g_ij| > 1 + tol.
3. Passes over all blocks repeat until a pass swaps nothing. A⁻¹ is recomputed from A before each
   block that follows swaps (no drift), so the returned A⁻¹ is exactly the one every row was
   checked against in the last pass.

MaxVol is a local search: the swaps end in *a* dominant submatrix, which depends on the start and
on the order of the swaps. When the start pool holds all rows (`pool_rows` ≥ rows, the default up
to 4096), the result on our test data does not depend on the block size; with a smaller pool it
can end in another local maximum of |det A| (every row still has γ ≤ 1 + tol).
"""
from __future__ import annotations

from collections.abc import Callable, Iterable
from dataclasses import dataclass

import numpy as np
import scipy.linalg
import scipy.linalg.blas



class ActiveSetError(ValueError):
    """The rows cannot give an active set: fewer independent rows than columns, or bad values."""


@dataclass
class ActiveSet:
    """A MaxVol active set of one species.

    rows     (L, L)  the active rows A, in the data's column order
    inverse  (L, L)  A⁻¹ (what pacemaker's `.asi` stores per element)
    source   (L, 2)  int, (block index, row index within that block) of each active row
    log_abs_det      log |det A|
    passes, swaps    passes over all blocks (the last one swapped nothing) and swaps made
    max_gamma        the largest γ of any row in the last pass (≤ 1 + tol, or above it by what
                     rounding allows, see `maxvol`)
    """
    rows: np.ndarray
    inverse: np.ndarray
    source: np.ndarray
    log_abs_det: float
    passes: int
    swaps: int
    max_gamma: float = float("nan")


def rereadable(items, what: str, hint: str) -> Callable[[], Iterable]:
    """A function returning a fresh iterable of `items` (a sequence, or already such a function):
    `what` is read several times, so a one-shot iterator is refused (TypeError naming `hint`)."""
    if callable(items):
        return items
    if iter(items) is items:
        raise TypeError(f"{what} reads its input several times: pass {hint}, not a one-shot iterator")
    return lambda: items


def _checked(block, k: int, n_cols: int | None) -> np.ndarray:
    b = np.asarray(block, dtype=np.float64)
    if b.ndim != 2 or (n_cols is not None and b.shape[1] != n_cols):
        raise ActiveSetError(f"block {k} has shape {b.shape}; expected (rows, {n_cols or 'L'})")
    if not np.isfinite(b).all():
        raise ActiveSetError(f"block {k} holds NaN or infinite values")
    return b


def _greedy_start(read, rcond: float, pool_rows: int):
    """(rows (L, L), source (L, 2)): blocks are gathered until the pool holds `pool_rows` rows
    (or all of them), then reduced to the first min(rank, L) pivots of a column-pivoted QR of
    poolᵀ; repeated with the next blocks while the rank is below L."""
    rows, source, n_cols, seen, rank = None, None, None, 0, 0
    parts, srcs = [], []

    def reduce():
        nonlocal rows, source, rank, parts, srcs
        pool, src = np.vstack([rows] + parts), np.vstack([source] + srcs)
        parts, srcs = [], []
        _, r, piv = scipy.linalg.qr(pool.T, mode="economic", pivoting=True)
        d = np.abs(np.diag(r))
        rank = int((d > rcond * d[0]).sum()) if d.size and d[0] > 0 else 0
        keep = piv[:min(rank, n_cols)]
        rows, source = pool[keep], src[keep]

    for k, block in enumerate(read()):
        b = _checked(block, k, n_cols)
        if n_cols is None:
            n_cols = b.shape[1]
            rows, source = np.zeros((0, n_cols)), np.zeros((0, 2), dtype=np.int64)
        seen += b.shape[0]
        if b.shape[0] == 0:
            continue
        parts.append(b)
        srcs.append(np.column_stack([np.full(b.shape[0], k), np.arange(b.shape[0])]))
        if sum(len(p) for p in parts) + len(rows) >= max(pool_rows, n_cols):
            reduce()
            if rank >= n_cols:
                return rows, source
    if parts:
        reduce()
        if rank >= n_cols:
            return rows, source
    if n_cols is None:
        raise ActiveSetError("no rows: an active set needs at least L rows")
    raise ActiveSetError(
        f"the {seen} rows span only {rank} of the {n_cols} basis functions; an active set needs "
        f"{n_cols} linearly independent rows (pacemaker needs at least as many atoms of a species "
        "as functions): add training structures of this species or use a smaller basis")


def _argmax_abs(G: np.ndarray) -> tuple[int, int]:
    """(i, j) of the largest |G_ij|: the larger of max and -min (two reads, no |G| copy)."""
    hi, lo = int(G.argmax()), int(G.argmin())
    k = hi if G.flat[hi] >= -G.flat[lo] else lo
    return divmod(k, G.shape[1])


def _subtract_outer(M: np.ndarray, x: np.ndarray, y: np.ndarray) -> None:
    """M -= outer(x, y) in place (BLAS dger on the transposed, Fortran-ordered view): no
    (n, L) temporary per swap, 2-4x faster than numpy's outer product at n = 4096, L = 1634."""
    out = scipy.linalg.blas.dger(-1.0, y, x, a=M.T, overwrite_a=True)
    if not np.shares_memory(out, M):        # M was not C-contiguous float64: copy back
        M[...] = out.T


def maxvol(blocks, *, tol: float = 1e-9, rcond: float = 1e-12, pool_rows: int = 4096,
           max_passes: int = 50, start: np.ndarray | None = None) -> ActiveSet:
    """The MaxVol active set of the rows in `blocks`.

    blocks      a sequence of arrays (n_k, L), or a function returning a fresh iterable of them
                (read once for the start, then once per pass)
    tol         stop when every row has γ ≤ 1 + tol; where B A⁻¹ rounds by more than tol (its
                error is ~cond(A)·ε), swaps on rounding are detected (they do not raise |det A|
                as they claim) and the threshold rises to what rounding cannot explain: the
                result's `max_gamma` is the largest γ of the last pass, the bound that holds
    rcond       rank threshold of the greedy start, relative to the largest pivot of its QR
    pool_rows   rows gathered for the greedy start's QR (at least L): a larger pool gives a start
                nearer the global optimum, at O(pool_rows × L) memory
    max_passes  `ActiveSetError` if the swaps have not converged after this many passes
    start       (L, L) rows to start the swaps from instead of the greedy start (an earlier active
                set, extended by the rows of `blocks`); their `source` is (-1, row of start).
                Every swap raises |det A|, so the result's |det A| is not below start's
    """
    read = rereadable(blocks, "maxvol", "a sequence of arrays or a function returning a fresh "
                      "iterable of them")
    if start is None:
        A, source = _greedy_start(read, rcond, pool_rows)
    else:
        A = _checked(start, -1, None).copy()
        d = np.abs(np.diag(scipy.linalg.qr(A.T, mode="r", pivoting=True)[0])) if A.size else np.zeros(0)
        # singular to working precision (an active set read back is invertible; this catches garbage)
        if A.shape[0] != A.shape[1] or not len(d) or not (d > len(d) * np.finfo(float).eps * d[0]).all():
            raise ActiveSetError(f"the start rows (shape {A.shape}) are not a square matrix invertible to "
                                 "working precision")
        source = np.column_stack([np.full(len(A), -1), np.arange(len(A))]).astype(np.int64)
    n_cols = A.shape[1]
    swaps, threshold, A_inv = 0, 1.0 + tol, None
    logdet, claimed, pass_swap_max = np.linalg.slogdet(A)[1], 0.0, 0.0
    for passes in range(1, max_passes + 1):
        if claimed > 0.0:
            # each swap multiplied |det A| by its |g|: a pass whose swaps did not pay half of
            # what they claimed swapped on rounding (G = B A⁻¹ is known to ~cond(A)·ε only, and
            # a fresh A⁻¹ rounds differently from the updated one), which would cycle. Swap from
            # now on only above the largest |g| of those swaps: what rounding cannot explain.
            new_logdet = np.linalg.slogdet(A)[1]
            if new_logdet - logdet < 0.5 * claimed:
                threshold = max(threshold, 2.0 * pass_swap_max - 1.0)
            logdet = new_logdet
        pass_swaps, stale, pass_max, pass_swap_max, claimed = 0, True, 0.0, 0.0, 0.0
        for k, block in enumerate(read()):
            B = _checked(block, k, n_cols)
            if B.shape[0] == 0:
                continue
            if stale:
                A_inv, stale = np.linalg.inv(A), False
            G = B @ A_inv
            while True:
                i, j = _argmax_abs(G)
                g = G[i, j]
                if abs(g) <= threshold:
                    pass_max = max(pass_max, abs(g))
                    break
                pass_swap_max = max(pass_swap_max, abs(g))
                claimed += np.log(abs(g))
                col = A_inv[:, j].copy()
                u = G[i].copy()
                u[j] -= 1.0
                u /= g
                _subtract_outer(A_inv, col, u)
                _subtract_outer(G, G[:, j].copy(), u)
                A[j] = B[i]
                source[j] = (k, i)
                pass_swaps += 1
                stale = True
        swaps += pass_swaps
        if pass_swaps == 0:
            sign, logdet = np.linalg.slogdet(A)
            if A_inv is None:                # no block held a row (a start and nothing to add)
                A_inv = np.linalg.inv(A)
            return ActiveSet(A, A_inv, source, float(logdet), passes, swaps, float(pass_max))
    raise ActiveSetError(f"MaxVol did not converge in {max_passes} passes ({swaps} swaps); raise "
                         "max_passes or tol")
