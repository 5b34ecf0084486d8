"""`batch_neighbours.reduce_many` (scalar dot products with a certified rounding bound, and
`lattice._reduce_into` where a decision is not certain) against `lattice._reduce_lattice` (the
per-structure reduction, BLAS ddot), cell by cell: the integer T must be identical, since the
binning basis T @ cell, and so the pair list and its order, follow from it.

Identical, not close: T is integer and every step of the reduction is a decision (|x| against
0.5 + 1e-9, the rounding of x, a candidate's length against the row's). The fast route takes
a decision only when its margin exceeds twice the largest difference two roundings of a 3-term
dot product can have (γ3·Σ|x_i y_i| each, any summation order, with or without FMA), so on any
CPU and BLAS it takes the decisions ddot takes; everything nearer is handed to `_reduce_into`.
The cells: random, skewed by unimodular shears (several reduction steps), built to sit on the
decision thresholds (x within 3e-16 of 0.5 + 1e-9 or of a half-integer: the fallback must run
and agree), and near-cubic cells with rounded entries and exact (signed) zeros, for 1, 2 and 3
periodic vectors: over 100k cells of each periodicity. And `bases` (the whole binning basis of a
batch) against `lattice.binning_basis`, bit for bit.
"""
import numpy as np
import pytest

from aceserver.kernels import batch_neighbours as BN
from aceserver.kernels.lattice import _reduce_lattice

PER_KIND = 28000      # 4 kinds: 112k cells per periodicity (~104k left after the shape filter)


def cells(rng, p, kind, n=PER_KIND):
    v = rng.normal(size=(n, p, 3))
    if kind == "skewed":
        v = (np.triu(rng.integers(-5, 6, (n, p, p)), 1) + np.eye(p)) @ v
    elif kind == "thresholds" and p >= 2:
        a = v[:, 0]
        x = (rng.choice([0.5 + 1e-9, -0.5 - 1e-9, 1.5, 2.5, 0.5], size=n)
             + rng.choice([0.0, 1e-17, 1e-16, -1e-16, 3e-16], size=n))
        v[:, 1] = x[:, None] * a + np.cross(a, rng.normal(size=(n, 3)))
    elif kind == "near-cubic":
        v = np.eye(3)[:p] + rng.normal(size=(n, p, 3)) * 0.15
        v[::3] = np.round(v[::3], 1)
        v[1::7, :, 1] = 0.0
        v[2::7, :, 1] = -0.0
    v = np.ascontiguousarray(v)
    return np.ascontiguousarray(v[BN.well_shaped(v)])     # what `bases` reduces


@pytest.mark.parametrize("p", [1, 2, 3])
def test_reduce_many_is_reduce_lattice(p):
    rng = np.random.default_rng(25 + p)
    total = 0
    for kind in ("random", "skewed", "thresholds", "near-cubic"):
        v = cells(rng, p, kind)
        got = BN.reduce_many(v)
        want = np.array([_reduce_lattice(c) for c in v])
        assert np.array_equal(got, want), (p, kind)
        if p >= 2 and kind != "near-cubic":
            assert (got != np.eye(p, dtype=np.int64)).any()     # reductions that do something
        total += len(v)
    assert total > 100_000


@pytest.mark.parametrize("p", [2, 3])
def test_uncertain_decisions_go_to_reduce_into(p):
    """Cells on a threshold: the scalar route declines (returns False) and `reduce_many`'s T is
    still `_reduce_lattice`'s; cells far from every threshold: it decides, with the same T."""
    rng = np.random.default_rng(7)
    a = rng.normal(size=3)
    b = (0.5 + 1e-9) * a + np.cross(a, rng.normal(size=3))
    on = np.zeros((p, 3))
    on[0], on[1] = a, b
    if p == 3:
        on[2] = np.cross(a, b)
    T = np.empty((p, p), dtype=np.int64)
    assert not BN._reduce_sure(on, T, np.empty(p, dtype=np.int64))
    assert np.array_equal(BN.reduce_many(on[None])[0], _reduce_lattice(on))
    off = np.eye(3)[:p] + 0.1 * rng.normal(size=(p, 3))
    assert BN._reduce_sure(off, T, np.empty(p, dtype=np.int64))
    assert np.array_equal(T, _reduce_lattice(off))
    assert BN.reduce_many(np.zeros((0, p, 3))).shape == (0, p, p)


@pytest.mark.parametrize("pattern", ["all periodic", "mixed"])
def test_bases_are_binning_basis(pattern):
    """`bases` of a batch (all cells periodic: one pass without the pattern split; mixed: one
    pass per pbc pattern) against `lattice.binning_basis` cell by cell, bit for bit: basis,
    inverse and the inverse's column lengths (`_column_norms`); degenerate cells (a zero
    vector, two dependent vectors) come back not ok, and the others are unaffected by them."""
    from aceserver.kernels.lattice import binning_basis
    rng = np.random.default_rng(11)
    S = 3000
    cells = np.eye(3) + rng.normal(size=(S, 3, 3)) * 0.3
    cells[::4] = (np.triu(rng.integers(-4, 5, (3, 3)), 1) + np.eye(3)) @ cells[::4]
    cells[5::50] = np.round(cells[5::50], 1)
    cells *= rng.uniform(0.5, 4.0, size=(S, 1, 1))
    pbc = (np.ones((S, 3), dtype=bool) if pattern == "all periodic"
           else rng.random((S, 3)) < 0.6)
    cells[7::97, 1] = 0.0
    cells[9::101, 2] = cells[9::101, 0] * 3.0
    bad = np.zeros(S, dtype=bool)
    bad[7::97] = pbc[7::97, 1]
    bad[9::101] = pbc[9::101, 0] & pbc[9::101, 2]
    basis, inv, recip, ok = BN.bases(cells, pbc)
    assert np.array_equal(ok, ~bad) and bad.any()
    for s in np.flatnonzero(ok):
        b, _, ib, r = binning_basis(cells[s].copy(), pbc[s].copy())
        assert np.array_equal(b, basis[s]) and np.array_equal(ib, inv[s]), s
        assert np.array_equal(r, recip[s]), s
    assert (basis[bad] == np.eye(3)).all()
    empty = BN.bases(np.zeros((0, 3, 3)), np.zeros((0, 3), dtype=bool))
    assert [x.shape for x in empty] == [(0, 3, 3), (0, 3, 3), (0, 3), (0,)]
