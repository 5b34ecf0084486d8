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


@njit(cache=True, nogil=True)
def _reduce_into(vecs, T, va, vb, cand):
    """Integer unimodular T (p x p, written in place) such that T @ vecs is a short, nearly
    orthogonal basis of the same lattice, on scratch va, vb (3,) and cand (p,), so that many
    cells can be reduced in one kernel call without allocations (`batch_neighbours`). Binning a
    skewed cell in a reduced basis scans far fewer candidates; the pairs found are the same since
    both bases generate the same translations."""
    p = vecs.shape[0]
    for a in range(p):
        for b in range(p):
            T[a, b] = 1 if a == b else 0
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
                    q = np.int64(math.floor(x + 0.5))
                    for c in range(p):
                        T[b, c] -= q * T[a, c]
                    changed = True
        if p == 3:
            # the pairwise step can miss a shorter c +- a +- b
            for k in range(3):
                o1 = 1 if k == 0 else 0
                o2 = 1 if k == 2 else 2
                for s1 in (-1, 1):
                    for s2 in (-1, 1):
                        for a in range(3):
                            cand[a] = T[k, a] + s1 * T[o1, a] + s2 * T[o2, a]
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
        hit = (basis, T, inv_basis, np.linalg.norm(inv_basis, axis=0))
        for a in hit:
            a.flags.writeable = False    # shared between calls (and threads)
        if len(_BASIS_CACHE) >= 64:
            _BASIS_CACHE.clear()
        _BASIS_CACHE[key] = hit
    return hit


_BASIS_CACHE: dict = {}


def _cell_basis(cell, pbc):
    """Rows: a reduced basis of the periodic lattice, completed by an orthonormal basis of its
    orthogonal complement; and the integer T (3x3, identity on open directions) with
    basis[periodic] = T[periodic][:, periodic] @ cell[periodic].

    Raises ACEInputError when the periodic vectors are (nearly) linearly dependent or vanishing.
    """
    per = [k for k in range(3) if pbc[k]]
    opn = [k for k in range(3) if not pbc[k]]
    vecs = cell[per]
    lengths = np.linalg.norm(vecs, axis=1)
    for k, length in zip(per, lengths):
        if length < 1e-8:
            raise ACEInputError(
                f"the cell is degenerate: cell vector {k} has length {length:.3g} Å but direction {k} "
                f"is periodic", "cell")
    if len(per) >= 2:
        # volume (area) of the periodic vectors relative to the product of their lengths: a sine
        gram = vecs @ vecs.T
        sine = math.sqrt(max(np.linalg.det(gram), 0.0)) / math.prod(float(x) for x in lengths)
        if sine < 1e-6:
            raise ACEInputError(
                f"the periodic cell vectors {per} are (nearly) linearly dependent "
                f"(normalised volume {sine:.3g}); the cell is degenerate", "cell")
    Tp = _reduce_lattice(np.ascontiguousarray(vecs))
    vecs = Tp @ vecs
    T = np.eye(3, dtype=np.int64)
    T[np.ix_(per, per)] = Tp
    if len(per) == 3:
        comp = np.zeros((0, 3))
    elif len(per) == 2:
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
