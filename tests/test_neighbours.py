"""Neighbour list against ase.neighborlist.neighbor_list, an independent implementation."""
from __future__ import annotations

import itertools
import time
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import pytest
from ase import Atoms
from ase.build import bulk, fcc111, molecule
from ase.neighborlist import neighbor_list as ase_neighbor_list

from aceserver.errors import ACEInputError
from aceserver.kernels import neighbours as nl
from aceserver.kernels.lattice import binning_basis
from aceserver.kernels.neighbour_search import _bin_visits
from aceserver.kernels.neighbours import min_distance, neighbour_list


def _ours(positions, cell, pbc, rcut, **kw):
    first, j, R = neighbour_list(positions, cell, pbc, rcut, **kw)
    n = len(positions)
    assert first.shape == (n + 1,) and first.dtype == np.int64 and first[0] == 0
    assert np.all(np.diff(first) >= 0)
    P = int(first[-1])
    assert j.shape == (P,) and j.dtype == np.int64
    assert R.shape == (P, 3) and R.dtype == np.float64
    i = np.repeat(np.arange(n), np.diff(first))
    return i, j, R


def _reference(positions, cell, pbc, rcut):
    atoms = Atoms(positions=positions, cell=cell, pbc=pbc)
    i, j, d, D = ase_neighbor_list("ijdD", atoms, rcut, self_interaction=False)
    return i, j, d, D


def _assert_same(ours, ref, positions, cell, pbc):
    """Pair sets equal exactly (i, j, R rounded to 1e-6 Å); R and |R| agree to 1e-12 Å."""
    i, j, R = ours
    ri, rj, rd, rD = ref
    assert len(i) == len(ri), f"{len(i)} pairs, ase has {len(ri)}"
    ours_set = set(zip(i.tolist(), j.tolist(), map(tuple, np.round(R, 6).tolist())))
    ref_set = set(zip(ri.tolist(), rj.tolist(), map(tuple, np.round(rD, 6).tolist())))
    assert len(ours_set) == len(i), "duplicate pairs"
    assert ours_set == ref_set, (
        f"missing {sorted(ref_set - ours_set)[:5]}, extra {sorted(ours_set - ref_set)[:5]}")
    oa = np.lexsort((*np.round(R, 6).T[::-1], j, i))
    ra = np.lexsort((*np.round(rD, 6).T[::-1], rj, ri))
    np.testing.assert_array_equal(i[oa], ri[ra])
    np.testing.assert_array_equal(j[oa], rj[ra])
    np.testing.assert_allclose(R[oa], rD[ra], rtol=0, atol=1e-12)
    np.testing.assert_allclose(np.linalg.norm(R[oa], axis=1), rd[ra], rtol=0, atol=1e-12)
    # R = r_j + S @ cell - r_i with S integer (and zero along open directions)
    per = np.broadcast_to(np.asarray(pbc, bool), (3,))
    if len(i):
        rest = R - (positions[j] - positions[i])
        if per.any():
            S, *_ = np.linalg.lstsq(np.asarray(cell)[per].T, rest.T, rcond=None)
            np.testing.assert_allclose(S, np.round(S), atol=1e-6)
            np.testing.assert_allclose(rest, np.round(S).T @ np.asarray(cell)[per], atol=1e-9)
        else:
            np.testing.assert_allclose(rest, 0.0, atol=1e-12)


def check(positions, cell, pbc, rcut):
    positions = np.asarray(positions, dtype=float)
    ours = _ours(positions, cell, pbc, rcut)
    _assert_same(ours, _reference(positions, cell, pbc, rcut), positions, cell, pbc)
    _assert_canonical_order(ours, positions, cell, pbc)
    assert np.all(np.linalg.norm(ours[2], axis=1) < rcut)
    return ours


def _assert_canonical_order(ours, positions, cell, pbc):
    """Within each i: sorted by j, then by the integer shift S (lexicographic)."""
    i, j, R = ours
    if not len(i):
        return
    per = np.broadcast_to(np.asarray(pbc, bool), (3,))
    S = np.zeros((len(i), 3))
    if per.any():
        rest = R - (positions[j] - positions[i])
        sol, *_ = np.linalg.lstsq(np.asarray(cell)[per].T, rest.T, rcond=None)
        S[:, per] = np.round(sol).T
    order = np.lexsort((S[:, 2], S[:, 1], S[:, 0], j, i))
    np.testing.assert_array_equal(order, np.arange(len(i)))


def _rattled(atoms, stdev, seed):
    atoms = atoms.copy()
    atoms.rattle(stdev, seed=seed)
    return atoms


# ---------------------------------------------------------------------------------------------
# agreement with ase
# ---------------------------------------------------------------------------------------------


def test_comparison_detects_a_wrong_list():
    """The checker itself must fail on a dropped pair or a perturbed vector."""
    atoms = bulk("Si", "diamond", 5.43, cubic=True)
    ref = _reference(atoms.positions, atoms.cell.array, atoms.pbc, 4.0)
    i, j, R = _ours(atoms.positions, atoms.cell.array, atoms.pbc, 4.0)
    with pytest.raises(AssertionError):
        _assert_same((i[1:], j[1:], R[1:]), ref, atoms.positions, atoms.cell.array, atoms.pbc)
    R2 = R.copy()
    R2[3, 1] += 1e-9
    with pytest.raises(AssertionError):
        _assert_same((i, j, R2), ref, atoms.positions, atoms.cell.array, atoms.pbc)
    j2 = j.copy()
    j2[[0, 1]] = j2[[1, 0]]
    with pytest.raises(AssertionError):
        _assert_same((i, j2, R), ref, atoms.positions, atoms.cell.array, atoms.pbc)


@pytest.mark.parametrize("rcut", [2.0, 3.0, 5.5, 6.0])
def test_fcc_periodic(rcut):
    atoms = bulk("Cu", "fcc", 3.61, cubic=True) * (3, 3, 3)
    i, j, R = check(atoms.positions, atoms.cell.array, True, rcut)
    # perfect crystal: every atom has the same number of neighbours
    assert len(set(np.bincount(i, minlength=len(atoms)).tolist())) == 1


@pytest.mark.parametrize("seed", [0, 1])
def test_diamond_rattled(seed):
    atoms = _rattled(bulk("Si", "diamond", 5.43, cubic=True) * (2, 2, 2), 0.1, seed)
    check(atoms.positions, atoms.cell.array, True, 5.5)


@pytest.mark.parametrize("seed", range(6))
def test_random_triclinic(seed):
    rng = np.random.default_rng(seed)
    cell = 7.0 * (np.eye(3) + 0.35 * rng.standard_normal((3, 3)))
    if np.linalg.det(cell) < 0:
        cell = cell[[1, 0, 2]]
    frac = rng.random((20, 3))
    pos = frac @ cell + 0.05 * rng.standard_normal((20, 3))
    check(pos, cell, True, rng.uniform(2.0, 7.0))


@pytest.mark.parametrize("rcut", [3.0, 5.5, 9.0])
def test_strongly_skewed_cell(rcut):
    rng = np.random.default_rng(7)
    cell = np.array([[5.0, 0.0, 0.0], [4.6, 1.2, 0.0], [-4.3, 3.9, 1.5]])
    pos = rng.random((6, 3)) @ cell
    check(pos, cell, True, rcut)


@pytest.mark.parametrize("pbc", list(itertools.product([False, True], repeat=3)))
def test_every_pbc_combination_triclinic(pbc):
    rng = np.random.default_rng(sum(2**k * p for k, p in enumerate(pbc)))
    cell = 6.0 * (np.eye(3) + 0.25 * rng.standard_normal((3, 3)))
    # atoms partly outside the cell, in every direction
    pos = (rng.random((25, 3)) * 1.6 - 0.3) @ cell
    check(pos, cell, pbc, 4.5)


def test_slab_mixed_pbc_true_false_true():
    slab = fcc111("Al", size=(2, 2, 4), vacuum=6.0)  # surface normal along z
    slab = _rattled(slab, 0.05, 3)
    # rotate axes so that the open direction is y: pbc (True, False, True)
    perm = [0, 2, 1]
    pos = slab.positions[:, perm]
    cell = slab.cell.array[:, perm][perm]
    check(pos, cell, (True, False, True), 5.0)
    # the open direction's cell row may be zero, or anything: it must be ignored
    i, j, R = check(pos, np.where(np.array([[0], [1], [0]], bool), 0.0, cell), (True, False, True), 5.0)
    cell_odd = cell.copy()
    cell_odd[1] = [3.0, 0.5, 0.2]
    i2, j2, R2 = _ours(pos, cell_odd, (True, False, True), 5.0)
    np.testing.assert_array_equal(j, j2)
    np.testing.assert_array_equal(R, R2)


def test_wire_one_periodic_direction():
    rng = np.random.default_rng(11)
    cell = np.array([[0.0, 0.0, 0.0], [0.0, 0.0, 0.0], [1.3, 0.4, 2.5]])
    pos = rng.random((8, 3)) * [4.0, 4.0, 2.7]
    check(pos, cell, (False, False, True), 5.0)


def test_molecule_zero_cell():
    mol = molecule("C60")
    mol.positions += 100.0  # far from the (zero) cell
    check(mol.positions, np.zeros((3, 3)), False, 3.0)
    check(mol.positions, np.zeros((3, 3)), False, 8.0)


def test_molecule_tiny_cell_open():
    """Open directions with a nonzero cell smaller than the molecule: atoms lie outside it."""
    mol = molecule("CH3CH2OH")
    check(mol.positions, np.eye(3) * 0.5, False, 2.5)


@pytest.mark.parametrize("rcut", [6.0, 8.0])
def test_cell_much_smaller_than_cutoff(rcut):
    atoms = bulk("Cu", "fcc", 3.61)  # 1-atom primitive cell: the atom sees its own images
    i, j, R = check(atoms.positions, atoms.cell.array, True, rcut)
    assert np.all(j == 0) and len(j) >= 78  # 12+6+24+12+24 images within 6 Å
    atoms = _rattled(bulk("Si", "diamond", 5.43), 0.05, 1)  # 2-atom primitive
    check(atoms.positions, atoms.cell.array, True, rcut)


def test_small_skewed_cell_mixed_pbc():
    cell = np.array([[2.1, 0.0, 0.0], [1.9, 0.7, 0.0], [0.3, 0.2, 9.0]])
    pos = np.array([[0.1, 0.2, 0.3], [1.0, 0.4, 4.2]])
    check(pos, cell, (True, True, False), 6.5)


def test_atoms_far_outside_the_cell():
    atoms = _rattled(bulk("Si", "diamond", 5.43, cubic=True), 0.1, 5)
    rng = np.random.default_rng(5)
    shifts = rng.integers(-50, 50, size=(len(atoms), 3))
    pos = atoms.positions + shifts @ atoms.cell.array
    i, j, R = check(pos, atoms.cell.array, True, 5.5)
    # same list as the wrapped structure: R does not depend on which image the caller gave
    i0, j0, R0 = _ours(atoms.positions, atoms.cell.array, True, 5.5)
    np.testing.assert_array_equal(j, j0)
    np.testing.assert_allclose(R, R0, atol=1e-10)


def test_single_atom_no_neighbours():
    first, j, R = neighbour_list([[1.0, 2.0, 3.0]], np.zeros((3, 3)), False, 5.0)
    assert first.tolist() == [0, 0] and j.shape == (0,) and R.shape == (0, 3)
    assert min_distance(R) == np.inf
    check([[1.0, 2.0, 3.0]], np.eye(3) * 10.0, True, 4.9)


def test_empty_structure():
    for pbc in (False, True):
        first, j, R = neighbour_list(np.zeros((0, 3)), np.eye(3) * 5.0, pbc, 5.0)
        assert first.tolist() == [0] and j.shape == (0,) and R.shape == (0, 3)
        assert first.dtype == np.int64 and j.dtype == np.int64


def test_sparse_atoms_in_huge_vacuum():
    """Bins stay O(N) for isolated atoms kilometres apart and for huge periodic cells."""
    pos = np.array([[0.0, 0, 0], [1.0, 0, 0], [1e7, 0, 0], [1e7, 1e7, 2.0], [0, 0, -1e6]])
    check(pos, np.zeros((3, 3)), False, 3.0)
    cell = np.diag([2000.0, 1500.0, 3000.0])
    check(pos[:2] + 5.0, cell, True, 3.0)


def test_coincident_atoms_are_listed_with_zero_vector():
    pos = np.array([[0.0, 0.0, 0.0], [0.0, 0.0, 0.0], [1.5, 0.0, 0.0]])
    i, j, R = check(pos, np.zeros((3, 3)), False, 2.0)
    first, _, R = neighbour_list(pos, np.zeros((3, 3)), False, 2.0)
    assert min_distance(R) == 0.0
    # an atom on its own periodic image would also be zero, but a non-degenerate cell prevents it
    atoms = bulk("Cu", "fcc", 3.61)
    _, _, R = neighbour_list(atoms.positions, atoms.cell.array, True, 3.0)
    assert min_distance(R) == pytest.approx(3.61 / np.sqrt(2), abs=1e-12)


def test_binning_resolution_does_not_change_the_result(monkeypatch):
    atoms = _rattled(bulk("Si", "diamond", 5.43, cubic=True) * (3, 2, 2), 0.2, 9)
    ref = neighbour_list(atoms.positions, atoms.cell.array, (True, False, True), 4.0)
    for bins in (1, 3):
        monkeypatch.setattr(nl, "_BINS_PER_CUTOFF", bins)
        got = neighbour_list(atoms.positions, atoms.cell.array, (True, False, True), 4.0)
        for a, b in zip(ref, got):
            np.testing.assert_array_equal(a, b)


def test_deterministic_and_thread_safe():
    atoms = _rattled(bulk("Si", "diamond", 5.43, cubic=True) * (3, 3, 3), 0.1, 2)
    args = (atoms.positions, atoms.cell.array, True, 5.5)
    ref = neighbour_list(*args)
    with ThreadPoolExecutor(4) as ex:
        results = list(ex.map(lambda _: neighbour_list(*args), range(8)))
    for got in results:
        for a, b in zip(ref, got):
            np.testing.assert_array_equal(a, b)


def test_does_not_modify_inputs():
    pos = np.array([[12.0, -3.0, 0.5], [0.2, 0.1, 0.3]])
    cell = np.eye(3) * 4.0
    pos0, cell0 = pos.copy(), cell.copy()
    neighbour_list(pos, cell, True, 3.0)
    np.testing.assert_array_equal(pos, pos0)
    np.testing.assert_array_equal(cell, cell0)


# ---------------------------------------------------------------------------------------------
# errors
# ---------------------------------------------------------------------------------------------


def _raises(field, *args, match=None, **kw):
    with pytest.raises(ACEInputError, match=match) as info:
        neighbour_list(*args, **kw)
    assert info.value.field == field, info.value
    return info.value


GOOD_POS = np.array([[0.0, 0.0, 0.0], [1.0, 1.0, 1.0]])


@pytest.mark.parametrize("pos", [np.zeros((3, 2)), np.zeros(3), np.zeros((2, 3, 1)), [["a", "b", "c"]]])
def test_bad_position_shapes(pos):
    _raises("positions", pos, np.eye(3) * 5, True, 3.0)


@pytest.mark.parametrize("bad", [np.nan, np.inf, -np.inf])
def test_non_finite_positions(bad):
    pos = GOOD_POS.copy()
    pos[1, 2] = bad
    err = _raises("positions", pos, np.eye(3) * 5, True, 3.0)
    assert "atom 1" in str(err)


@pytest.mark.parametrize("cell", [np.eye(3)[:2], np.ones(3), np.full((3, 3), np.nan)])
def test_bad_cell(cell):
    _raises("cell", GOOD_POS, cell, True, 3.0)


def test_positions_absurdly_far_from_periodic_cell():
    _raises("positions", GOOD_POS * 1e14, np.eye(3) * 5, (False, True, False), 3.0)
    neighbour_list(GOOD_POS * 1e14, np.eye(3) * 5, False, 3.0)  # fine without periodicity


@pytest.mark.parametrize("pbc,cell", [
    ((True, True, True), np.diag([5.0, 5.0, 0.0])),  # zero periodic vector
    ((True, False, False), np.zeros((3, 3))),
    ((True, True, True), np.array([[5.0, 0, 0], [0, 5.0, 0], [5.0, 5.0, 0]])),  # coplanar
    ((True, True, False), np.array([[5.0, 0, 0], [10.0, 1e-9, 0], [0, 0, 1.0]])),  # nearly parallel
])
def test_degenerate_periodic_cell(pbc, cell):
    _raises("cell", GOOD_POS, cell, pbc, 3.0, match="cell")
    _raises("cell", np.zeros((0, 3)), cell, pbc, 3.0)


def test_degenerate_cell_fine_along_open_directions():
    neighbour_list(GOOD_POS, np.diag([5.0, 5.0, 0.0]), (True, True, False), 3.0)


@pytest.mark.parametrize("rcut", [0.0, -1.0, np.nan, np.inf, "x", None])
def test_bad_rcut(rcut):
    _raises("rcut", GOOD_POS, np.eye(3) * 5, True, rcut)


@pytest.mark.parametrize("pbc", [(True, False), [[True] * 3], "yes", (1, 2, 0), (0.5, 1.0, 1.0)])
def test_bad_pbc(pbc):
    _raises("pbc", GOOD_POS, np.eye(3) * 5, pbc, 3.0)


def test_pbc_accepts_scalar_and_ints():
    a = neighbour_list(GOOD_POS, np.eye(3) * 3, True, 3.0)
    b = neighbour_list(GOOD_POS, np.eye(3) * 3, (1, 1, 1), 3.0)
    for x, y in zip(a, b):
        np.testing.assert_array_equal(x, y)


@pytest.mark.parametrize("n_atoms,edge", [(1, 0.1), (2, 0.1), (64, 0.5), (1, 1e-5), (1000, 0.3)])
def test_too_many_images_is_a_clear_fast_error(n_atoms, edge):
    rng = np.random.default_rng(0)
    pos = rng.random((n_atoms, 3)) * edge
    _raises("cell", pos, np.eye(3) * edge, True, 6.0, match="too small")   # compiles what it uses
    t0 = time.perf_counter()
    err = _raises("cell", pos, np.eye(3) * edge, True, 6.0, match="too small")
    assert time.perf_counter() - t0 < 5.0
    assert "rcut" in str(err)


def test_pair_limit():
    atoms = bulk("Si", "diamond", 5.43, cubic=True) * (2, 2, 2)
    args = (atoms.positions, atoms.cell.array, True, 5.5)
    P = len(neighbour_list(*args)[1])
    assert len(neighbour_list(*args, max_pairs=P)[1]) == P
    _raises("cell", *args, max_pairs=P - 1, match="pairs")
    _raises("cell", *args, max_neighbours=10, match="neighbours")


def test_pair_limit_without_periodicity_names_positions():
    mol = molecule("C60")
    err = _raises("positions", mol.positions, np.zeros((3, 3)), False, 3.0, max_pairs=10)
    assert "max_pairs" in str(err)


def test_open_direction_far_away_with_periodic_in_plane():
    """Huge coordinates along an open direction do not disturb wrapping in periodic ones."""
    pos = np.array([[0.5, 0.5, 1e13], [1.5, 0.5, 1e13 + 1.0], [0.0, 0.0, -1e13]])
    cell = np.diag([2.4, 2.4, 0.0])
    i, j, R = _ours(pos, cell, (True, True, False), 2.5)
    # each atom sees its 4 in-plane images at 2.4 Å; atoms 0 and 1 see each other twice each way
    assert len(i) == 3 * 4 + 2 * 2
    assert np.bincount(i).tolist() == [6, 6, 4]
    assert np.all(np.linalg.norm(R, axis=1) < 2.5)


@pytest.mark.parametrize("pbc", [True, (True, True, False)])
def test_same_lattice_in_a_skewed_basis_gives_the_same_pairs(pbc):
    """A unimodular change of basis describes the same crystal: same pairs, same vectors."""
    atoms = _rattled(bulk("Si", "diamond", 5.43, cubic=True), 0.1, 4)
    U = np.array([[1, 0, 0], [5, 1, 0], [-3, 4, 1]]) if pbc is True else np.array(
        [[1, 0, 0], [7, 1, 0], [0, 0, 1]])
    skewed = U @ atoms.cell.array
    i0, j0, R0 = _ours(atoms.positions, atoms.cell.array, pbc, 5.5)
    i1, j1, R1 = check(atoms.positions, skewed, pbc, 5.5)
    a = sorted(zip(i0.tolist(), j0.tolist(), np.round(R0, 8).tolist()))
    b = sorted(zip(i1.tolist(), j1.tolist(), np.round(R1, 8).tolist()))
    assert a == b
    # the binning basis found for the skewed cell is as short as the cubic one
    basis, T, _, _ = binning_basis(skewed, np.broadcast_to(np.asarray(pbc), (3,)))
    per = np.broadcast_to(np.asarray(pbc), (3,))
    np.testing.assert_allclose(np.sort(np.linalg.norm(basis[per], axis=1)), 5.43, atol=1e-9)
    assert round(abs(np.linalg.det(T))) == 1


def test_parallel_search_gives_identical_lists():
    from ase.build import bulk
    at = bulk("Si", "diamond", a=5.43, cubic=True) * (3, 3, 3)
    at.rattle(0.1, seed=5)
    serial = neighbour_list(at.positions, at.cell[:], at.pbc, 5.5)
    for n_chunks in (2, 7, 1000):
        par = neighbour_list(at.positions, at.cell[:], at.pbc, 5.5, n_chunks=n_chunks)
        for a, b in zip(serial, par):
            np.testing.assert_array_equal(a, b)


def test_unsorted_lists_hold_the_same_pairs():
    from ase.build import bulk
    at = bulk("Cu", "fcc", a=3.61) * (2, 3, 2)
    at.rattle(0.1, seed=6)
    first, j, R = neighbour_list(at.positions, at.cell[:], at.pbc, 6.0)
    uf, uj, uR = neighbour_list(at.positions, at.cell[:], at.pbc, 6.0, sort=False)
    np.testing.assert_array_equal(first, uf)
    for i in range(len(at)):
        a, b = first[i], first[i + 1]
        ref = sorted(zip(j[a:b], *np.round(R[a:b], 9).T))
        got = sorted(zip(uj[a:b], *np.round(uR[a:b], 9).T))
        assert ref == got


@pytest.mark.parametrize("sort", [True, False])
def test_one_pass_and_two_pass_searches_agree(monkeypatch, sort):
    # small searches append pairs into candidate-sized scratch in one pass (serial or per block
    # of atoms); large ones count, then fill: all four give the same arrays, in the same order
    at = bulk("Si", "diamond", a=5.43, cubic=True) * (3, 3, 2)
    at.rattle(0.1, seed=7)
    args = (at.positions, at.cell[:], (True, False, True), 5.0)
    ref = neighbour_list(*args, sort=sort)
    got = [neighbour_list(*args, sort=sort, n_chunks=5)]
    monkeypatch.setattr(nl, "_ONE_PASS_MAX_VISITS", 0)
    got += [neighbour_list(*args, sort=sort), neighbour_list(*args, sort=sort, n_chunks=5)]
    for other in got:
        for a, b in zip(ref, other):
            np.testing.assert_array_equal(a, b)
    if sort:
        check(*args)   # and the two-pass list is right (against ase)


def test_visit_count_equals_a_direct_count():
    # the per-bin candidate count sizes the one-pass scratch: check the separable box sum
    # against a direct sum over every scanned bin image (periodic images count once each)
    rng = np.random.default_rng(0)
    for _ in range(100):
        nb = rng.integers(1, 6, 3)
        m = rng.integers(0, 4, 3)
        periodic = rng.random(3) < 0.6
        occ = rng.integers(0, 3, nb.prod())
        start = np.concatenate([[0], np.cumsum(occ)]).astype(np.int64)
        want = np.zeros(nb.prod(), dtype=np.int64)
        for b in itertools.product(*(range(k) for k in nb)):
            for d in itertools.product(*(range(-k, k + 1) for k in m)):
                c = [b[k] + d[k] for k in range(3)]
                if any(not periodic[k] and not 0 <= c[k] < nb[k] for k in range(3)):
                    continue
                c = [c[k] % nb[k] for k in range(3)]
                want[np.ravel_multi_index(b, nb)] += occ[np.ravel_multi_index(c, nb)]
        np.testing.assert_array_equal(_bin_visits(start, nb, m, periodic), want)


@pytest.mark.parametrize("pbc", [(True, True, True), (True, False, True), (False, False, False)])
def test_checked_arrays_give_the_same_pairs(pbc):
    """checked=True (the evaluator's arrays, already checked) skips the checks and copies only:
    the same pairs, in the same order, with the same bits, for small and larger structures."""
    rng = np.random.default_rng(5)
    for n in (1, 2, 7, 80):
        cell = np.eye(3) * (2.0 + n ** (1 / 3) * 2.5) + rng.normal(size=(3, 3)) * 0.4
        positions = rng.random((n, 3)) @ cell
        pbc_arr = np.array(pbc)
        want = neighbour_list(positions, cell, pbc_arr, 4.5, sort=False)
        got = neighbour_list(positions, cell, pbc_arr, 4.5, sort=False, checked=True)
        for a, b in zip(got, want):
            assert a.dtype == b.dtype and np.array_equal(a, b)


def test_lattice_norms_are_numpys():
    """lattice._norms (Python floats, used for a new cell's lengths and the reciprocal lengths
    that size the bins) gives np.linalg.norm's bits along either axis of a 3x3 matrix."""
    from aceserver.kernels.lattice import _norms
    rng = np.random.default_rng(11)
    for _ in range(3000):
        m = rng.normal(size=(3, 3)) * 10.0 ** rng.uniform(-3, 3, size=(3, 1))
        assert np.array_equal(np.array(_norms(m.tolist())), np.linalg.norm(m, axis=1))
        assert np.array_equal(np.array(_norms(m.T.tolist())), np.linalg.norm(m, axis=0))
