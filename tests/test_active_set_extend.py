"""Extending an active set with new structures (`fitting.active_set_extend`), the learning
service's way of keeping γ across refits, against independent references: the descriptors of the
atoms each row names (`model.descriptors` of that frame, or of the old set's stored environment),
γ from numpy (`np.linalg.solve` on the rows), |det A| of the old set, and a full rebuild over the
old and new data (`build_active_set`).

Data: tests/data/Si_tiny.xyz. The old set is built from the even-numbered 2-atom cells; the new
structures are the other frames (2-atom cells and the two 64-atom liquids) and a 2-atom diamond
cell compressed by 10 %, far from the old data. The models: order 2, totaldegree 6 (L = 23) with
two parameter vectors, so two sha256 and the same basis (a refit).
"""
from __future__ import annotations

from pathlib import Path

import ase.io
import numpy as np
import pytest

import aceserver
from aceserver.active_sets import attach_active_set_file
from aceserver.fitting.active_set import ActiveSetError
from aceserver.fitting.active_set_build import build_active_set
from aceserver.fitting.active_set_extend import extend_active_set
from aceserver.io import activeset_file

DATA = Path(__file__).parent / "data"
EPS = np.finfo(float).eps
TOL = 1e-8            # MaxVol's tol is 1e-9; the rest is the rounding of B A⁻¹ (κ·ε, see `bound`)


def small(seed):
    m = aceserver.ace1_model(elements=["Si"], order=2, totaldegree=6, rcut=5.0, E0={"Si": -158.5})
    m.parameters = np.random.default_rng(seed).normal(size=m.length_basis)
    return m


@pytest.fixture(scope="module")
def case():
    fr = ase.io.read(DATA / "Si_tiny.xyz", ":")
    old = [a for i, a in enumerate(fr) if i % 2 == 0 and len(a) == 2]
    new = [a for i, a in enumerate(fr) if not (i % 2 == 0 and len(a) == 2)]
    comp = fr[1].copy()
    comp.set_cell(comp.cell * 0.9, scale_atoms=True)
    before, after = small(2), small(3)
    build = build_active_set(before, old)
    ext = extend_active_set(after, build.environments, new + [comp], previous=before,
                            data_files=["posted-v2"], data_sha256=["0" * 64])
    return fr, old, new + [comp], comp, before, after, build, ext


def rows_of(model, frames):
    return np.vstack([model.descriptors(a.numbers, a.positions, a.cell.array, a.pbc) for a in frames])


def grades(D, A):
    """γ = max |b A⁻¹| with numpy's solve (Aᵀ x = bᵀ)."""
    return np.abs(np.linalg.solve(A.T, D.T).T).max(axis=1)


def bound(A):
    """What rounding allows γ to differ by between two backward-stable computations of B A⁻¹:
    a few L·κ(A_s)·ε, A_s the column-scaled A (γ does not change with column scaling)."""
    As = A / np.abs(A).max(axis=0)
    return 10 * len(A) * np.linalg.cond(As) * EPS


def test_extended_set_interpolates_the_new_atoms_and_keeps_the_old_volume(case):
    fr, old, new, comp, before, after, build, ext = case
    e, o = ext.elements["Si"], build.elements["Si"]
    A = e.active_set.rows
    # |det A| not below the old set's: MaxVol starts from it and every swap raises it
    assert e.active_set.log_abs_det >= o.active_set.log_abs_det - bound(A)
    assert np.isclose(np.linalg.slogdet(A)[1], e.active_set.log_abs_det, rtol=0, atol=bound(A))
    # every new atom interpolates (γ ≤ 1 + tol); the compressed cell was far outside before
    g_new = grades(rows_of(after, new), A)
    assert g_new.max() <= 1 + TOL + bound(A)
    assert grades(rows_of(before, [comp]), o.active_set.rows).max() > 5
    # each row is what it names: a kept old atom (its row under the old model), a new atom (its row
    # in its frame), or a floor row (the old floor value, or a new one, on one column)
    old_rows = o.active_set.rows[np.argsort(o.columns >= 0, kind="stable")]
    for r in range(len(A)):
        if e.kept[r] >= 0:
            assert np.array_equal(A[r], old_rows[e.kept[r]])
        elif e.frames[r] >= 0:
            a = new[e.frames[r]]
            d = after.descriptors(a.numbers, a.positions, a.cell.array, a.pbc, atoms=[e.atoms[r]])[0]
            assert np.allclose(A[r], d, rtol=0, atol=1e-12 * np.abs(d).max())
        else:
            assert np.count_nonzero(A[r]) == 1 and A[r, e.columns[r]] > 0
    assert e.added > 0 and e.added + int((e.kept >= 0).sum()) + e.floor_rows == len(A)
    print(f"\nL {len(A)}: log|det A| old {o.active_set.log_abs_det:.4f}, extended {e.active_set.log_abs_det:.4f}; "
          f"{e.added} rows added, {e.active_set.swaps} swaps; max γ of the new atoms {g_new.max():.3e}")


def test_extension_beside_a_full_rebuild(case):
    """The rebuild reads the old data too; the extension does not. Measured here: their |det A|,
    and the old data's γ under each. The old atoms outside the old set had γ ≤ 1 + tol; each swap
    can at most double their coefficients (|β'_k| ≤ |β_k| + |β_j|·|g_k/g_j|, |g_j| the row's
    largest), so their γ under the extended set is below (1 + tol)·2^swaps."""
    fr, old, new, comp, before, after, build, ext = case
    e = ext.elements["Si"]
    full = build_active_set(after, old + new).elements["Si"]
    g_old_ext = grades(rows_of(after, old), e.active_set.rows)
    g_old_full = grades(rows_of(after, old), full.active_set.rows)
    print(f"\nlog|det A|: extended {e.active_set.log_abs_det:.4f}, full rebuild {full.active_set.log_abs_det:.4f}; "
          f"max γ of the old data: extended {g_old_ext.max():.6f}, rebuild {g_old_full.max():.3e}; "
          f"old atoms above 1 + 1e-8: {(g_old_ext > 1 + TOL).sum()} of {len(g_old_ext)}")
    assert g_old_full.max() <= 1 + TOL + bound(full.active_set.rows)
    assert g_old_ext.max() <= (1 + TOL) * 2.0 ** e.active_set.swaps
    # both are local maxima of |det A| over (nearly) the same rows: the extension is not far below
    assert e.active_set.log_abs_det >= full.active_set.log_abs_det - 0.1 * abs(full.active_set.log_abs_det)


def test_sidecar_of_the_extension_attaches_to_the_new_model_only(case, tmp_path):
    fr, old, new, comp, before, after, build, ext = case
    path = tmp_path / "x.activeset.npz"
    ext.save(path)
    env = activeset_file.read(path)
    assert env.model_sha256 == after.sha256 and env.data_files == [*build.environments.data_files, "posted-v2"]
    assert int(env.atoms_read[0]) == build.elements["Si"].atoms_read + sum(len(a) for a in new)
    attach_active_set_file(after, path)
    D = rows_of(after, [comp] + old)
    A = ext.elements["Si"].active_set.rows
    g = np.concatenate([after.evaluate(a.numbers, a.positions, a.cell.array, a.pbc, gamma=True).gamma
                        for a in [comp] + old])
    assert np.allclose(g, grades(D, A), rtol=bound(A), atol=0)
    with pytest.raises(Exception, match="built for the model"):
        attach_active_set_file(small(2), path)


def test_nothing_new_keeps_the_set_and_another_basis_is_refused(case):
    fr, old, new, comp, before, after, build, ext = case
    same = extend_active_set(after, build.environments, [], previous=before).elements["Si"]
    o = build.elements["Si"]
    assert same.added == 0 and same.active_set.swaps == 0
    assert np.array_equal(same.active_set.rows, o.active_set.rows[np.argsort(o.columns >= 0, kind="stable")])
    with pytest.raises(ActiveSetError, match="belongs to the model"):
        extend_active_set(after, build.environments, new, previous=after)
    # same sizes, another radial transform (r0): the old rows are not the new model's rows
    other = aceserver.ace1_model(elements=["Si"], order=2, totaldegree=6, rcut=5.0, E0={"Si": -158.5}, r0=2.0)
    assert other.descriptor_sizes == after.descriptor_sizes
    with pytest.raises(ActiveSetError, match="another basis"):
        extend_active_set(other, build.environments, new, previous=before)


def test_maxvol_from_a_start_keeps_or_raises_its_volume():
    """`maxvol(start=)`: random rows, a start of L of them; every row ends with γ ≤ 1 + tol (numpy's
    solve), |det A| is not below the start's, and a singular start is refused."""
    from aceserver.fitting.active_set import maxvol
    rng = np.random.default_rng(5)
    B = rng.normal(size=(200, 12))
    start = B[:12].copy()
    s = maxvol([B[:100], B[100:]], start=start, tol=1e-9)
    assert s.log_abs_det >= np.linalg.slogdet(start)[1]
    assert grades(B, s.rows).max() <= 1 + TOL + bound(s.rows)
    assert s.swaps > 0 and (s.source[:, 0] >= -1).all()
    with pytest.raises(ActiveSetError, match="invertible"):
        maxvol([B], start=np.vstack([B[:11], np.zeros(12)]))      # rank 11: a zero pivot, on any CPU
