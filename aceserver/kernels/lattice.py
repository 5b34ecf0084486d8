"""Lattice geometry for the neighbour search: a reduced (short, nearly orthogonal) basis of the
periodic lattice, completed by an orthonormal complement for open directions, and its inverse,
cached per cell (MD and servers see the same cell call after call). Lengths in Å.
"""
from __future__ import annotations

import math

import numpy as np
from numba import njit

from aceserver.errors import ACEInputError


@njit(cache=True, nogil=True)
def _row_into(T, k, vecs, v):
    """v = row k of T @ vecs."""
    v[:] = 0.0
    for a in range(T.shape[0]):
        for c in range(3):
            v[c] += T[k, a] * vecs[a, c]


@njit(cache=True, nogil=True, inline="always")
def _identity(T):
    """T = the identity (p x p, integer), in place."""
    for a in range(T.shape[0]):
        for b in range(T.shape[1]):
            T[a, b] = 1 if a == b else 0


@njit(cache=True, nogil=True, inline="always")
def _shear(T, a, b, q):
    """Row b of T -= q times row a (the pairwise step of the reduction)."""
    for c in range(T.shape[0]):
        T[b, c] -= q * T[a, c]


@njit(cache=True, nogil=True, inline="always")
def _candidate(T, k, s1, s2, cand):
    """cand = row k of T + s1 row o1 + s2 row o2 (o1 < o2 the other two rows of a 3x3 T)."""
    o1 = 1 if k == 0 else 0
    o2 = 1 if k == 2 else 2
    for a in range(3):
        cand[a] = T[k, a] + s1 * T[o1, a] + s2 * T[o2, a]


@njit(cache=True, nogil=True)
def _reduce_into(vecs, T, va, vb, cand):
    """Integer unimodular T (p x p, written in place) such that T @ vecs is a short, nearly
    orthogonal basis of the same lattice, on scratch va, vb (3,) and cand (p,), so that many
    cells can be reduced in one kernel call without allocations (`batch_neighbours`). Binning a
    skewed cell in a reduced basis scans far fewer candidates; the pairs found are the same since
    both bases generate the same translations."""
    p = vecs.shape[0]
    _identity(T)
    for _ in range(100):
        changed = False
        # pairwise (Gauss) step: b -= q a shortens b whenever |b.a| > |a|^2 / 2
        for a in range(p):
            for b in range(p):
                if a == b:
                    continue
                _row_into(T, a, vecs, va)
                _row_into(T, b, vecs, vb)
                x = np.dot(vb, va) / np.dot(va, va)
                if abs(x) > 0.5 + 1e-9:
                    _shear(T, a, b, np.int64(math.floor(x + 0.5)))
                    changed = True
        if p == 3:
            # the pairwise step can miss a shorter c +- a +- b
            for k in range(3):
                for s1 in (-1, 1):
                    for s2 in (-1, 1):
                        _candidate(T, k, s1, s2, cand)
                        va[:] = 0.0
                        for a in range(3):
                            for c in range(3):
                                va[c] += cand[a] * vecs[a, c]
                        _row_into(T, k, vecs, vb)
                        if np.dot(va, va) < np.dot(vb, vb) * (1.0 - 1e-9):
                            for a in range(3):
                                T[k, a] = cand[a]
                            changed = True
        if not changed:
            break


@njit(cache=True, nogil=True)
def _reduce_lattice(vecs):
    """`_reduce_into` on fresh arrays: T (p x p). (numba only to keep the per-call overhead small:
    this is 3x3 work.)"""
    p = vecs.shape[0]
    T = np.empty((p, p), dtype=np.int64)
    _reduce_into(vecs, T, np.empty(3), np.empty(3), np.empty(p, dtype=np.int64))
    return T


def binning_basis(cell, pbc):
    """Cached _cell_basis, the inverse of the basis and the lengths of its columns: MD and
    servers see the same cell call after call."""
    key = (cell.tobytes(), pbc.tobytes())
    hit = _BASIS_CACHE.get(key)
    if hit is None:
        basis, T = _cell_basis(cell, pbc)
        inv_basis = np.linalg.inv(basis)
        hit = (basis, T, inv_basis, np.array(_norms(inv_basis.T.tolist())))   # norm(axis=0)'s bits
        for a in hit:
            a.flags.writeable = False    # shared between calls (and threads)
        if len(_BASIS_CACHE) >= 64:
            _BASIS_CACHE.clear()
        _BASIS_CACHE[key] = hit
    return hit


_BASIS_CACHE: dict = {}


def _norms(rows) -> list[float]:
    """Length of each 3-vector (lists of Python floats) as np.linalg.norm(v, axis=-1) gives it
    (sqrt of the squares summed in order): Python floats, a tenth of numpy's call cost."""
    return [math.sqrt(x * x + y * y + z * z) for x, y, z in rows]


def _sine(rows, lengths) -> float:
    """sqrt(det(Gram)) / Π lengths of 2 or 3 vectors: how far from linearly dependent they are
    (1 orthogonal, 0 dependent); only compared with a threshold, so Python floats will do."""
    if len(rows) == 2:
        (a0, a1, a2), (b0, b1, b2) = rows
        ab = a0 * b0 + a1 * b1 + a2 * b2
        gram_det = lengths[0] ** 2 * lengths[1] ** 2 - ab * ab
    else:
        (a0, a1, a2), (b0, b1, b2), (c0, c1, c2) = rows
        v = a0 * (b1 * c2 - b2 * c1) - a1 * (b0 * c2 - b2 * c0) + a2 * (b0 * c1 - b1 * c0)
        gram_det = v * v
    return math.sqrt(max(gram_det, 0.0)) / math.prod(lengths)


def _cell_basis(cell, pbc):
    """Rows: a reduced basis of the periodic lattice, completed by an orthonormal basis of its
    orthogonal complement; and the integer T (3x3, identity on open directions) with
    basis[periodic] = T[periodic][:, periodic] @ cell[periodic].

    Raises ACEInputError when the periodic vectors are (nearly) linearly dependent or vanishing.
    The checks and lengths use Python floats (a new cell costs ~15 µs instead of ~35 µs);
    the basis itself comes from numpy's operations as before (its bits set the pairs' order).
    """
    per = [k for k in range(3) if pbc[k]]
    opn = [k for k in range(3) if not pbc[k]]
    rows = cell.tolist()
    lengths = _norms([rows[k] for k in per])
    for k, length in zip(per, lengths):
        if length < 1e-8:
            raise ACEInputError(
                f"the cell is degenerate: cell vector {k} has length {length:.3g} Å but direction {k} "
                f"is periodic", "cell")
    if len(per) >= 2:
        # volume (area) of the periodic vectors relative to the product of their lengths: a sine
        sine = _sine([rows[k] for k in per], lengths)
        if sine < 1e-6:
            raise ACEInputError(
                f"the periodic cell vectors {per} are (nearly) linearly dependent "
                f"(normalised volume {sine:.3g}); the cell is degenerate", "cell")
    vecs = cell[per]
    Tp = _reduce_lattice(np.ascontiguousarray(vecs))
    vecs = Tp @ vecs
    if len(per) == 3:          # the usual cell: the reduced vectors are the basis
        return vecs, Tp
    T = np.eye(3, dtype=np.int64)
    T[np.ix_(per, per)] = Tp
    if len(per) == 2:
        nrm = np.cross(vecs[0], vecs[1])
        comp = (nrm / np.linalg.norm(nrm))[None, :]
    elif len(per) == 1:
        a = vecs[0] / lengths[0]
        e = np.zeros(3)
        e[int(np.argmin(np.abs(a)))] = 1.0
        u = e - (e @ a) * a
        u /= np.linalg.norm(u)
        comp = np.stack([u, np.cross(a, u)])
    else:
        comp = np.eye(3)
    basis = np.empty((3, 3))
    basis[per] = vecs
    basis[opn] = comp
    return basis, T
