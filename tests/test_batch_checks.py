"""`kernels.batch_checks` against the numpy code it replaced in `evaluation.many` (kept here as
the reference, line for line): the input checks of a packed batch (`check_packed`) and the
pairs and per-structure judgements after the batched search (`after_search`). Both sides are
comparisons and integer sums of the same numbers (the square root is correctly rounded in
numpy and numba alike), so z, status, pairs and the neutralised arrays must be equal exactly.

Batches: mixed sizes (empty structures, single atoms, up to 12), species known and unknown,
negative and too-large atomic numbers, NaN / inf / huge positions and cells, every pbc; after
the search: clusters, cells smaller than the cut-off, atoms too close, and limits low enough
that some atoms have too many neighbours.
"""
import numpy as np
import pytest

import aceserver
from aceserver.kernels import batch_neighbours as BN
from aceserver.kernels.batch_checks import after_search, check_packed
from aceserver.structure import MAX_COORDINATE


def owner(offsets, atom_mask):
    return np.unique(np.searchsorted(offsets, np.flatnonzero(atom_mask), side="right") - 1)


def checked_numpy(numbers, pos, cells, pbc, offsets, lk):
    """`_Run.checked` before `check_packed` (without the γ refusal, which stays in Python)."""
    S = len(offsets) - 1
    bad = np.zeros(S, dtype=bool)
    if len(pos) and not float(np.abs(pos).max()) <= MAX_COORDINATE:
        bad[owner(offsets, ~(np.abs(pos) <= MAX_COORDINATE).all(axis=1))] = True
    if S:
        bad |= ~(np.abs(cells).reshape(S, 9) <= MAX_COORDINATE).all(axis=1)
    ok = (numbers >= 0) & (numbers < len(lk))
    z = lk[np.where(ok, numbers, 0)]
    if not (ok.all() and (z >= 0).all()):
        bad[owner(offsets, ~ok | (z < 0))] = True
    z = np.ascontiguousarray(z)
    status = np.zeros(S, dtype=np.int64)
    for s in np.flatnonzero(bad):
        a, b = offsets[s], offsets[s + 1]
        pos[a:b] = 0.0
        z[a:b] = 0
        cells[s] = 0.0
        pbc[s] = False
        status[s] = 2
    return z, status


def after_search_numpy(first, offsets, closest, status, min_distance, max_neighbours):
    counts = np.diff(first)
    c = np.zeros(len(counts) + 1, dtype=np.int64)
    np.cumsum(counts, out=c[1:])
    pairs = c[offsets[1:]] - c[offsets[:-1]]
    status[(status == 0) & (np.sqrt(closest) < min_distance)] = 1
    if len(counts) and counts.max() > max_neighbours:
        status[owner(offsets, counts > max_neighbours)] = 1
    return pairs


def packed_batch(rng, S):
    sizes = rng.integers(0, 13, S)
    sizes[::7] = 1
    offsets = np.concatenate([[0], np.cumsum(sizes)]).astype(np.int64)
    N = int(offsets[-1])
    numbers = rng.choice([14, 14, 22, 13, 29], N).astype(np.int64)
    cells = np.eye(3) * rng.uniform(2.0, 9.0, (S, 1, 1)) + rng.normal(size=(S, 3, 3)) * 0.3
    pos = rng.random((N, 3)) * 6.0
    pbc = rng.random((S, 3)) < 0.6
    return offsets, numbers, pos, cells, pbc


def test_check_packed_is_the_numpy_checks():
    lk = np.full(119, -1, dtype=np.int64)
    lk[[13, 22]] = [0, 1]                       # TiAl-like species; 14 and 29 unknown in half
    rng = np.random.default_rng(3)
    for trial in range(20):
        offsets, numbers, pos, cells, pbc = packed_batch(rng, 300)
        if trial % 2:
            lk[14] = 2
        else:
            lk[14] = -1
        N = len(numbers)
        numbers[rng.integers(0, N, 3)] = rng.choice([-1, 119, 500, -7], 3)
        pos[rng.integers(0, N, 4), rng.integers(0, 3, 4)] = [np.nan, np.inf, -2 * MAX_COORDINATE,
                                                              MAX_COORDINATE]
        cells[rng.integers(0, 300, 3), rng.integers(0, 3, 3), 1] = [np.nan, -np.inf, 1e300]
        want = [x.copy() for x in (pos, cells, pbc)]
        z_want, st_want = checked_numpy(numbers, *want, offsets, lk)
        z, st = check_packed(numbers, pos, cells, pbc, offsets, lk, MAX_COORDINATE)
        assert np.array_equal(z, z_want) and np.array_equal(st, st_want)
        assert 0 < (st == 2).sum() < 300
        for got, ref in zip((pos, cells, pbc), want):
            assert np.array_equal(got, ref, equal_nan=True)
    z, st = check_packed(np.zeros(0, np.int64), np.zeros((0, 3)), np.zeros((0, 3, 3)),
                         np.zeros((0, 3), bool), np.zeros(1, np.int64), lk, MAX_COORDINATE)
    assert z.shape == (0,) and st.shape == (0,)


@pytest.mark.parametrize("max_neighbours", [20000, 40])
def test_after_search_is_the_numpy_judgement(max_neighbours):
    """On the batched search's own output for mixed structures (clusters, open and periodic
    directions, cells smaller than the cut-off, empty structures), some atoms moved onto others."""
    model = aceserver.load_model("models/Si-tiny/Si-tiny.json")
    rng = np.random.default_rng(5)
    offsets, _, pos, cells, pbc = packed_batch(rng, 400)
    close = 0.5 * model.min_distance
    for s in range(0, 400, 9):                  # atoms too close: half min_distance apart
        a, b = offsets[s], offsets[s + 1]
        if b - a >= 2:
            pos[a + 1] = pos[a] + [close, 0.0, 0.0]
    status = np.zeros(400, dtype=np.int64)
    status[5::31] = 2
    basis, inv, recip, ok = BN.bases(cells, pbc)
    status[~ok] = 1
    first, nbr, R, closest = BN.search(pos, offsets, status, basis, inv, recip, pbc, model.rcut,
                                       64, 10**8, 20000)
    st = status.copy()
    want = after_search_numpy(first, offsets, closest, status, model.min_distance, max_neighbours)
    got = after_search(first, offsets, closest, st, model.min_distance, max_neighbours)
    assert np.array_equal(got, want) and np.array_equal(st, status)
    assert (st == 0).any() and (st == 1).any() and (st == 2).any() and (got > 0).any()
    if max_neighbours == 40:
        assert np.diff(first).max() > 40
