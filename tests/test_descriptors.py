"""Per-atom descriptors (`SitePotential.descriptors`, kernel `basis_rows.site_descriptors`) and the
per-atom uncertainty of `evaluate` (γ, the committee's site energies), against independent
references: the fast site pass's per-atom energies, the fitting rows of `basis_rows`, numpy
re-computations of γ and of the members' energies, rotated and permuted copies.

Tolerances: a descriptor row dotted with the weights is a sum of L products whose order differs
from the fast pass (which contracts the coupling into the product DAG first), so the two agree to
c·ε·Σ_k |D_k W_k| with c a small multiple of the summation depth; we allow 64·ε·L·Σ|D W|.
"""
from __future__ import annotations

import threading


import numpy as np
import pytest
from ase.build import bulk
from scipy.spatial.transform import Rotation

import aceserver
from aceserver.errors import EvaluationCancelled, NoActiveSetError
from aceserver.fitting.active_set import maxvol

EPS = np.finfo(float).eps


def rattled(symbols_cell, rng, repeat=(2, 2, 2), scale=0.15):
    at = symbols_cell.repeat(repeat)
    at.positions += scale * rng.standard_normal(at.positions.shape)
    return at


def site_bound(D, W):
    """Per-row rounding bound of D[i]·W (see the module docstring)."""
    return 64 * EPS * D.shape[1] * np.abs(D * W).sum(axis=1)


@pytest.fixture(scope="module")
def si_cell():
    return rattled(bulk("Si", "diamond", a=5.43, cubic=True), np.random.default_rng(1))


@pytest.fixture(scope="module")
def tial_cell():
    at = bulk("Al", "fcc", a=4.05, cubic=True)
    at = rattled(at, np.random.default_rng(2))
    at.numbers[::3] = 22
    return at


def args(at):
    return at.numbers, at.positions, at.cell.array, at.pbc


@pytest.mark.parametrize("which", ["si", "tial"])
def test_descriptors_sum_to_site_energies(which, si_model, tial_model, si_cell, tial_cell):
    model, at = (si_model, si_cell) if which == "si" else (tial_model, tial_cell)
    D = model.descriptors(*args(at))
    assert D.shape == (len(at), model.descriptor_sizes[model.elements[0]])
    W = model.descriptor_weights()[model._lookup[at.numbers]]
    e0 = np.array([model.E0[s] for s in at.get_chemical_symbols()])
    res = model.evaluate(*args(at), threads=1)
    err = np.abs((D * W).sum(axis=1) + e0 - res.energies)
    assert (err <= site_bound(D, W) + 4 * EPS * np.abs(e0)).all(), err.max()
    # the fitting rows are the per-species sums of the same site rows
    e_rows, _, _ = model.basis_rows(*args(at), forces=False)
    b = model.basis
    z = model._lookup[at.numbers]
    for s in range(b.nz):
        block = np.concatenate([e_rows[s * b.n_b:(s + 1) * b.n_b],
                                e_rows[b.nz * b.n_b + s * b.n_pair:b.nz * b.n_b + (s + 1) * b.n_pair]])
        np.testing.assert_allclose(D[z == s].sum(axis=0), block,
                                   atol=64 * EPS * len(at) * np.abs(D).max())


def test_descriptors_invariant_under_rotation_and_permutation(tial_model, tial_cell):
    D = tial_model.descriptors(*args(tial_cell))
    rot = Rotation.from_euler("zyx", [0.3, -1.1, 2.0]).as_matrix()
    perm = np.random.default_rng(5).permutation(len(tial_cell))
    at = tial_cell.copy()
    at.set_cell(at.cell.array @ rot.T, scale_atoms=False)
    at.positions = at.positions @ rot.T
    at = at[perm]
    D2 = tial_model.descriptors(*args(at))
    # rotation moves only rounding: of the harmonics (a few ε per recurrence step), of the sums
    # over ~50 neighbours and of products of order 3, so ~3·(J + lmax)·ε ≈ 3e-14 of each row's
    # largest value; 1e-12 leaves room for any CPU and still fails on a real (O(1)) difference
    scale = np.abs(D[perm]).max(axis=1, keepdims=True)
    assert (np.abs(D2 - D[perm]) <= 1e-12 * scale).all()


def test_subset_and_threads_give_the_same_rows(si_model):
    at = rattled(bulk("Si", "diamond", a=5.43, cubic=True), np.random.default_rng(3), (4, 4, 3))
    assert len(at) >= 256                          # the threaded kernel's range
    full = si_model.descriptors(*args(at))
    serial = si_model.descriptors(*args(at), threads=1)
    np.testing.assert_array_equal(full, serial)    # one row per site: the same operations
    pick = np.array([5, 0, 300, 5])
    np.testing.assert_array_equal(si_model.descriptors(*args(at), atoms=pick), full[pick])
    with pytest.raises(ValueError, match="atoms must be indices"):
        si_model.descriptors(*args(at), atoms=[len(at)])


@pytest.fixture(scope="module")
def si_with_active_set():
    """A small Si model (L = 31; site rows of near-diamond data are ill-conditioned, cond(A)
    ~1e9 here, and grow worse with the basis) with an active set from the site rows of rattled,
    strained diamond cells."""
    model = aceserver.ace1_model(elements=["Si"], order=3, totaldegree=6, rcut=5.0,
                                 E0={"Si": -158.5})
    rng = np.random.default_rng(11)
    model.parameters = (np.random.default_rng(12).normal(size=model.length_basis)
                        / (1 + np.arange(model.length_basis)))
    cells = []
    for k in range(12):
        a = bulk("Si", "diamond", a=5.43 * (1 + 0.04 * rng.uniform(-1, 1)), cubic=True)
        cells.append(rattled(a, rng, (1, 1, 2), scale=0.05 + 0.05 * (k % 4)))
    rows = [model.descriptors(*args(a)) for a in cells]
    s = maxvol(rows, tol=1e-9)
    model.attach_active_set({"Si": s.inverse}, model_sha256=model.sha256)
    return model, cells, s


def product_rounding(D, A_inv):
    """Bound on the rounding of D A⁻¹, per row: L·ε·max_k Σ_j |D_j| |A⁻¹_jk| (with cancellation
    this is what ill-conditioning costs; γ itself is O(1))."""
    return 4 * D.shape[1] * EPS * (np.abs(D) @ np.abs(A_inv)).max(axis=1)


def test_gamma_is_max_abs_of_b_times_inverse(si_with_active_set):
    model, cells, s = si_with_active_set
    for at in cells:
        g = model.evaluate(*args(at), gamma=True).gamma
        D = model.descriptors(*args(at))
        # training atoms interpolate: MaxVol checked every row against this A⁻¹ to 1e-9; our
        # product may round differently from MaxVol's by at most twice the product bound
        assert (g <= 1 + 1e-8 + 2 * product_rounding(D, s.inverse)).all(), g.max()
    at = rattled(bulk("Si", "diamond", a=5.43 * 0.8, cubic=True), np.random.default_rng(4),
                 (1, 1, 1), 0.02)
    res = model.evaluate(*args(at), gamma=True)
    D = model.descriptors(*args(at))
    ref = np.abs(np.linalg.solve(s.rows.T, D.T)).max(axis=0)     # c A = b by solve, not A⁻¹
    # both are b A⁻¹ up to the conditioning of A: κ(A)·ε·|γ| bounds the difference
    kappa = np.linalg.cond(s.rows)
    np.testing.assert_allclose(res.gamma, ref, rtol=64 * kappa * EPS)
    assert res.max_gamma == res.gamma.max() and res.max_gamma > 5    # compressed by 20 %


def test_gamma_needs_an_active_set(si_model, si_cell):
    si_model.active_set = None
    with pytest.raises(NoActiveSetError, match="aceserver activeset"):
        si_model.evaluate(*args(si_cell), gamma=True)
    n = si_model.descriptor_sizes["Si"]
    with pytest.raises(ValueError, match=r"shape \(3, 3\)"):
        si_model.attach_active_set({"Si": np.eye(3)})
    with pytest.raises(ValueError, match="does not have"):
        si_model.attach_active_set({"Ge": np.eye(n)})
    with pytest.raises(ValueError, match="built for model sha256"):
        si_model.attach_active_set({"Si": np.eye(n)}, model_sha256="0" * 64)
    assert si_model.active_set is None


def test_committee_site_energies(si_model, si_cell):
    rng = np.random.default_rng(9)
    model = type(si_model)(si_model.basis, si_model.parameters, si_model.E0,
                           committee=si_model.parameters + 0.01 * rng.standard_normal(
                               (5, si_model.length_basis)))
    res = model.evaluate(*args(si_cell), committee=True, energies_committee=True)
    D = model.descriptors(*args(si_cell))
    ref = np.array([D @ model.descriptor_weights(t)[0] for t in model.committee]) + model.E0["Si"]
    for k, theta in enumerate(model.committee):
        bound = site_bound(D, model.descriptor_weights(theta)[0]) + 4 * EPS * abs(model.E0["Si"])
        assert (np.abs(res.energies_committee[k] - ref[k]) <= bound).all()
    np.testing.assert_allclose(res.energies_std, ref.std(axis=0), atol=1e-12)
    # the members' site energies sum to their total energies from the fast pass
    np.testing.assert_allclose(res.energies_committee.sum(axis=1), res.energy_committee,
                               rtol=1e-12)
    assert si_model.evaluate(*args(si_cell), energies_committee=True).energies_std is None


def test_cancelled_before_the_uncertainty_rows(si_with_active_set):
    model, cells, _ = si_with_active_set
    stop = threading.Event()
    stop.set()
    with pytest.raises(EvaluationCancelled):
        model.evaluate(*args(cells[0]), gamma=True, cancel=stop)


def test_site_pass_writes_the_same_rows(si_with_active_set):
    """The rows the site pass writes as it goes (γ's path) are the descriptor kernel's, bit for
    bit (the same A, AA and sums), and asking for γ leaves energies and forces as they were."""
    from aceserver.kernels import site_pass
    model = si_with_active_set[0]
    at = rattled(bulk("Si", "diamond", a=5.43, cubic=True), np.random.default_rng(8), (4, 4, 3))
    z, first, nbr, R = model._neighbours(*args(at))
    got = np.zeros((len(at), model.descriptor_sizes["Si"]))

    def keep(start, stop, rows):
        got[start:stop] = rows

    assert model._descriptor_tables(model._fast) is not None   # dense θ: the rows are fused
    for n_chunks in (1, 4):
        got[:] = np.nan
        site_pass.fast_blocks(first, nbr, R, z, model._fast, True, 100, n_chunks=n_chunks,
                              DT=model._descriptor_tables(model._fast), on_rows=keep)
        np.testing.assert_array_equal(got, model.descriptors(*args(at), threads=1))
    for threads in (1, None):
        plain = model.evaluate(*args(at), threads=threads)
        with_gamma = model.evaluate(*args(at), threads=threads, gamma=True)
        np.testing.assert_array_equal(plain.energies, with_gamma.energies)
        np.testing.assert_array_equal(plain.forces, with_gamma.forces)
        np.testing.assert_array_equal(plain.virial, with_gamma.virial)


def test_site_pass_rows_of_two_species(tial_model, tial_cell):
    """As above for two species (the pair columns are added in neighbour-list order by both)."""
    from aceserver.kernels import site_pass
    z, first, nbr, R = tial_model._neighbours(*args(tial_cell))
    got = np.full((len(tial_cell), tial_model.descriptor_sizes["Ti"]), np.nan)

    def keep(start, stop, rows):
        got[start:stop] = rows

    DT = tial_model._descriptor_tables(tial_model._fast)
    assert DT is not None
    site_pass.fast_blocks(first, nbr, R, z, tial_model._fast, True, 7, DT=DT, on_rows=keep)
    np.testing.assert_array_equal(got, tial_model.descriptors(*args(tial_cell)))
