"""MaxVol active sets and γ (`fitting/active_set`) and the `.asi` file (`io/asi`), against plain
numpy references: a reference MaxVol written out below (all rows in memory, γ by
numpy.linalg.solve, one swap at a time), and pyace's MaxVol and `.asi` helpers where installed.

Test matrix: per-structure energy rows (sum over atoms) of an ace1 Si basis (order 2, totaldegree
6, L = 23) for rattled, strained diamond cells of 2 to 16 atoms.
"""
from __future__ import annotations

import math

import numpy as np
import pytest
from ase.build import bulk

import aceserver
from aceserver.errors import ModelFileError
from aceserver.evaluation.uncertainty import extrapolation_grade
from aceserver.fitting.active_set import ActiveSetError, maxvol
from aceserver.io import asi

TOL = 1e-8


def diamond(rng, k: int, a0: float = 5.43, strain: float = 0.08):
    a = bulk("Si", "diamond", a=a0 * (1 + rng.uniform(-strain, strain)), cubic=bool(k % 2))
    a = a.repeat((1 + k % 2, 1, 1 + (k // 2) % 2))
    a.set_cell(a.cell @ (np.eye(3) + rng.normal(scale=0.03, size=(3, 3))), scale_atoms=True)
    a.positions += rng.normal(scale=0.1 + 0.3 * (k % 5) / 4, size=a.positions.shape)
    return a


@pytest.fixture(scope="module")
def si_basis():
    return aceserver.ace1_model(elements=["Si"], order=2, totaldegree=6, rcut=5.0)


def energy_row(model, atoms):
    e, _, _ = model.basis_rows(atoms.numbers, atoms.positions, atoms.cell.array, True, forces=False)
    return e


@pytest.fixture(scope="module")
def rows(si_basis):
    rng = np.random.default_rng(3)
    return np.array([energy_row(si_basis, diamond(rng, k)) for k in range(120)])


def blocks_of(X, size):
    return [X[i:i + size] for i in range(0, len(X), size)]


def gamma_by_solve(X, A):
    """γ of each row of X: max_k |c_k| where c A = x, i.e. Aᵀ cᵀ = xᵀ (numpy.linalg.solve)."""
    return np.abs(np.linalg.solve(A.T, X.T)).max(axis=0)


def reference_maxvol(X, tol=1e-9):
    """Plain MaxVol, all rows in memory: greedy start (each step takes the row with the largest
    residual after projecting out the chosen ones), then one swap at a time (the largest |G| over
    all rows, G recomputed by solve) until every |G| ≤ 1 + tol. Returns the chosen row indices."""
    chosen, R = [], X.copy()
    for _ in range(X.shape[1]):
        i = int(np.argmax(np.linalg.norm(R, axis=1)))
        chosen.append(i)
        q = R[i] / np.linalg.norm(R[i])
        R = R - np.outer(R @ q, q)
    for _ in range(10_000):
        G = np.linalg.solve(X[chosen].T, X.T).T
        i, j = np.unravel_index(np.argmax(np.abs(G)), G.shape)
        if abs(G[i, j]) <= 1 + tol:
            return chosen
        chosen[j] = int(i)
    raise AssertionError("reference MaxVol did not converge")


def log_abs_det(A):
    return np.linalg.slogdet(A)[1]


@pytest.mark.parametrize("size", [5, 23, 50, 120])
def test_training_rows_interpolate(rows, size):
    s = maxvol(blocks_of(rows, size))
    assert gamma_by_solve(rows, s.rows).max() <= 1 + TOL
    assert extrapolation_grade(rows, s.inverse).max() <= 1 + TOL
    # the active rows are the rows the sources name, and A⁻¹ is their inverse
    blocks = blocks_of(rows, size)
    np.testing.assert_array_equal(s.rows, [blocks[b][r] for b, r in s.source])
    np.testing.assert_allclose(s.inverse @ s.rows, np.eye(rows.shape[1]), atol=1e-6)


def test_det_not_below_reference_and_block_size_free(rows):
    ref = log_abs_det(rows[reference_maxvol(rows)])
    single = maxvol([rows]).log_abs_det
    for size in (1, 5, 23, 50, 120):
        got = maxvol(blocks_of(rows, size)).log_abs_det
        assert got >= ref + math.log1p(-1e-6), size
        assert abs(got - single) <= 1e-6, size


def test_minimal_pool_is_still_dominant(rows):
    """With the smallest start pool (L rows) the swaps start elsewhere and may end in another
    local maximum of |det| (MaxVol is a local search); every row still interpolates."""
    s = maxvol(blocks_of(rows, 5), pool_rows=rows.shape[1])
    assert gamma_by_solve(rows, s.rows).max() <= 1 + TOL


def test_blocks_from_a_function_and_one_shot_iterators_refused(rows):
    def read():
        for i in range(0, len(rows), 17):
            yield rows[i:i + 17]
    s = maxvol(read)
    assert extrapolation_grade(rows, s.inverse).max() <= 1 + TOL
    with pytest.raises(TypeError, match="several times"):
        maxvol(iter(blocks_of(rows, 17)))


def test_gamma_is_max_abs_b_Ainv(rows, si_basis):
    s = maxvol([rows])
    rng = np.random.default_rng(5)
    new = np.array([energy_row(si_basis, diamond(rng, k, strain=0.15)) for k in range(20)])
    np.testing.assert_allclose(extrapolation_grade(new, s.inverse), gamma_by_solve(new, s.rows),
                               rtol=1e-9)
    assert extrapolation_grade(new[0], s.inverse).shape == (1,)
    assert extrapolation_grade(np.zeros((0, rows.shape[1])), s.inverse).shape == (0,)


def test_far_outside_rows_extrapolate(rows, si_basis):
    s = maxvol([rows])
    assert (extrapolation_grade(10 * s.rows, s.inverse) > 5).all()   # γ(10 a_k) = 10 exactly
    np.testing.assert_allclose(extrapolation_grade(10 * rows, s.inverse),
                               10 * extrapolation_grade(rows, s.inverse), rtol=1e-9)
    # cells compressed by 20 % lie outside the data (these are per-structure rows, so the 2-atom
    # cells reach only γ ≈ 1.9; the γ > 5 claim is for per-atom descriptors)
    rng = np.random.default_rng(9)
    squeezed = [energy_row(si_basis, diamond(rng, k, a0=5.43 * 0.8, strain=0.0)) for k in range(4)]
    assert (extrapolation_grade(np.array(squeezed), s.inverse) > 1 + TOL).all()


def test_too_few_or_dependent_rows_refused(rows):
    L = rows.shape[1]
    with pytest.raises(ActiveSetError, match=r"span only 10 of the 23 .*at least as many atoms"):
        maxvol([rows[:10]])
    dependent = rows.copy()
    dependent[:, -1] = dependent[:, 0] + 2 * dependent[:, 1]
    with pytest.raises(ActiveSetError, match=f"span only {L - 1} of the {L}"):
        maxvol(blocks_of(dependent, 30))
    with pytest.raises(ActiveSetError, match="no rows"):
        maxvol([])
    bad = rows.copy()
    bad[7, 3] = np.nan
    with pytest.raises(ActiveSetError, match="NaN"):
        maxvol(blocks_of(bad, 50))
    with pytest.raises(ActiveSetError, match="shape"):
        maxvol([rows, rows[:, :5]])


# ---- .asi ------------------------------------------------------------------------------------
def test_asi_round_trip_bit_exact(rows, tmp_path):
    inv = {"Si": maxvol([rows]).inverse, "Ti": np.random.default_rng(1).normal(size=(4, 4))}
    path = tmp_path / "model.asi"
    asi.write(path, inv)
    assert path.exists() and not (tmp_path / "model.asi.npz").exists()
    back = asi.read(path)
    assert set(back) == {"Si", "Ti"}
    for k in inv:
        assert back[k].dtype == np.float64
        assert back[k].tobytes() == inv[k].tobytes()


def _savez(path, **arrays):
    with open(path, "wb") as fh:
        np.savez(fh, **arrays)
    return path


@pytest.mark.parametrize("arrays, match", [
    ({"Si": np.ones((3, 4))}, "shape"),
    ({"Si": np.ones(3)}, "shape"),
    ({"Si": np.ones((0, 0))}, "shape"),
    ({"Si": np.array([[1.0, np.nan], [0.0, 1.0]])}, "NaN"),
    ({"Si": np.array([[1.0, np.inf], [0.0, 1.0]])}, "infinite"),
    ({"Si": np.array([[None, 1], [2, 3]], dtype=object)}, "pickle"),
    ({"Si": np.array([["a", "b"], ["c", "d"]])}, "dtype"),
    ({"species_0": np.eye(2)}, "element symbol"),
    ({}, "no active-set arrays"),
])
def test_malformed_asi_refused(tmp_path, arrays, match):
    path = _savez(tmp_path / "bad.asi", **arrays)
    with pytest.raises(ModelFileError, match=match):
        asi.read(path)


def test_unreadable_asi_refused(tmp_path):
    with pytest.raises(ModelFileError, match="does not exist"):
        asi.read(tmp_path / "missing.asi")
    (tmp_path / "text.asi").write_text("not a zip")
    with pytest.raises(ModelFileError, match="not a readable"):
        asi.read(tmp_path / "text.asi")
    np.save(tmp_path / "single.npy", np.eye(2))
    with pytest.raises(ModelFileError, match="single .npy"):
        asi.read(tmp_path / "single.npy")
    with pytest.raises(ModelFileError):
        asi.write(tmp_path / "w.asi", {"Si": np.ones((2, 3))})


# ---- pyace (pacemaker), where installed ---------------------------------------------------------
def test_against_pyace(rows, tmp_path):
    al = pytest.importorskip("pyace.activelearning", reason="pyace (the [pyace] extra) not installed")
    pyace_maxvol = pytest.importorskip("pyace.maxvol").maxvol
    s = maxvol(blocks_of(rows, 23))
    # pacemaker's MaxVol (maxvolpy: LU start, multiplicative tol) on the same rows
    chosen, _ = pyace_maxvol(rows.copy(), tol=1 + 1e-9, max_iters=1000)
    assert s.log_abs_det >= log_abs_det(rows[chosen]) + math.log1p(-1e-6)
    # pacemaker's γ on our active set
    np.testing.assert_allclose(al.compute_extrapolation_grade({0: rows}, {0: s.inverse})[0],
                               extrapolation_grade(rows, s.inverse), rtol=1e-12)
    # .asi both ways (pacemaker sorts the keys and numbers the species in that order)
    al.save_active_inverse_set(tmp_path / "p.asi", {0: s.inverse}, elements_name=["Si"])
    assert asi.read(tmp_path / "p.asi")["Si"].tobytes() == s.inverse.tobytes()
    asi.write(tmp_path / "a.asi", {"Si": s.inverse})
    assert al.load_active_inverse_set(tmp_path / "a.asi")[0].tobytes() == s.inverse.tobytes()
