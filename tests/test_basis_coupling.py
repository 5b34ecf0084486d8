"""Coupling coefficients (ace-spec §1.10) and the invariance and independence of the B basis."""
import numpy as np
import pytest

import aceserver
from aceserver.basis.coupling import clebsch_gordan, coupled_block


def test_clebsch_gordan_known_values():
    assert clebsch_gordan(1, 1, 1, -1, 0, 0) == pytest.approx(1 / np.sqrt(3))
    assert clebsch_gordan(1, 0, 1, 0, 2, 0) == pytest.approx(np.sqrt(2 / 3))
    assert clebsch_gordan(2, 1, 1, 0, 2, 1) == pytest.approx(1 / np.sqrt(6))
    assert clebsch_gordan(1, 1, 1, 1, 1, 2) == 0.0


@pytest.mark.parametrize("l", [0, 1, 2, 3, 5])
def test_order2_rows_have_unit_norm_and_coefficients(l):
    for groups in [(0, 1), (0, 0)]:
        C, reps = coupled_block((l, l), groups)
        assert C.shape[0] == 1
        assert np.linalg.norm(C[0]) == pytest.approx(1.0, abs=1e-12)
        # only the diagonal m1 = m2 survives in the real basis, with ±(2l+1)^(-1/2)
        assert all(ms[0] == ms[1] for ms in reps)
        np.testing.assert_allclose(np.abs(C[0]), 1 / np.sqrt(2 * l + 1), atol=1e-12)


@pytest.mark.parametrize("ls, groups, norms", [
    ((1, 1, 2), (0, 1, 2), [1.0]),
    ((2, 2, 2), (0, 0, 1), [1.714286]),
    ((2, 2, 2), (0, 0, 0), [3.657143]),
    ((1, 1, 1, 1), (0, 0, 0, 0), [3.0]),
    ((1, 1, 2, 2), (0, 1, 2, 3), [1.0, 1.0, 1.0]),
    ((0, 0, 2), (0, 1, 2), []),
    ((1, 3), (0, 1), []),
])
def test_block_norms_and_ranks(ls, groups, norms):
    C, _ = coupled_block(ls, groups)
    assert C.shape[0] == len(norms)
    # reference norms printed to 7 significant digits (3.657143: ±5e-7), ours to ~ε
    np.testing.assert_allclose(np.linalg.norm(C, axis=1) if len(norms) else [], norms, atol=1e-6)


def site_basis(model, species, vectors):
    """B and pair values of one centre (species[0]) with neighbours at `vectors` (internal API)."""
    z = np.array([model.elements.index(s) for s in species], dtype=np.int64)
    J = len(vectors)
    first = np.array([0] + [J] * (J + 1), dtype=np.int64)
    nbr = np.arange(1, J + 1, dtype=np.int64)
    e, _, _ = model._basis_pass(z, first, nbr, np.ascontiguousarray(vectors, dtype=float),
                                with_grad=False)
    return e


def random_environment(rng, rcut, n):
    d = rng.normal(size=(n, 3))
    d /= np.linalg.norm(d, axis=1)[:, None]
    return d * rng.uniform(1.6, rcut - 0.1, size=(n, 1))


def random_orthogonal(rng, reflect):
    Q, R = np.linalg.qr(rng.normal(size=(3, 3)))
    Q = Q * np.sign(np.diag(R))
    if (np.linalg.det(Q) > 0) == reflect:
        Q[:, 0] *= -1
    return Q


@pytest.mark.parametrize("order, td", [(3, 8), (4, 6)])
def test_b_functions_are_invariant(order, td):
    model = aceserver.ace1_model(elements=["Ti", "Al"], order=order, totaldegree=td, rcut=5.5)
    rng = np.random.default_rng(order)
    worst = 0.0
    for trial in range(50):
        n = int(rng.integers(8, 17))
        R = random_environment(rng, model.rcut, n)
        species = ["Ti" if trial % 2 else "Al"] + list(rng.choice(["Ti", "Al"], size=n))
        ref = site_basis(model, species, R)
        assert np.count_nonzero(ref) > 0.5 * model.length_basis / 2
        Q = random_orthogonal(rng, reflect=bool(trial % 3 == 0))
        perm = rng.permutation(n)
        moved = site_basis(model, [species[0]] + [species[1 + k] for k in perm], R[perm] @ Q.T)
        scale = np.maximum(1.0, np.abs(ref))
        worst = max(worst, np.max(np.abs(moved - ref) / scale))
    assert worst < 1e-10


def test_basis_has_full_numerical_rank():
    model = aceserver.ace1_model(elements=["Si"], order=3, totaldegree=10, rcut=5.5)
    rng = np.random.default_rng(3)
    rows = [site_basis(model, ["Si"] * (n + 1), random_environment(rng, model.rcut, n))
            for n in rng.integers(4, 17, size=400)]
    M = np.array(rows)
    M /= np.linalg.norm(M, axis=0)            # column scaling: rank is about directions
    assert M.shape[1] == 120
    assert np.linalg.matrix_rank(M) == 120    # numpy's tolerance: σ_max · 400 · eps
    # the many-body B alone and the pair functions alone are well conditioned; together they are
    # nearly dependent (pair and order-1 functions are both two-body radials, ace-spec §1.5)
    for X in (M[:, :110], M[:, 110:]):
        s = np.linalg.svd(X, compute_uv=False)
        assert s[-1] / s[0] > 1e-4
