"""Solvers on synthetic linear systems with known answers.

Tolerances: _system's matrix has κ = 6.0, so two backward-stable solutions differ by
~√m ε κ (2 + κ |r|/(|A||x|)) < 1e-13 (tests/lsq_bounds.py); the 1e-8 to 1e-10 asserted below leave
three orders of margin and still catch any wrong formula. The committee statistics are seeded
sampling tolerances (4 standard errors; 15 % of a 4000-sample covariance), not rounding ones.
"""
import numpy as np
import pytest
import scipy.stats

from aceserver.fitting import solvers


def _system(n=80, m=12, noise=0.1, seed=0):
    rng = np.random.default_rng(seed)
    A = rng.standard_normal((n, m)) * np.linspace(1, 5, m)
    c = rng.standard_normal(m)
    y = A @ c + noise * rng.standard_normal(n)
    return A, y, c


def test_qr_matches_lstsq():
    A, y, _ = _system()
    sol = solvers.solve({"name": "qr"}, A, y)
    ref = np.linalg.lstsq(A, y, rcond=None)[0]
    np.testing.assert_allclose(sol.coef, ref, rtol=1e-10, atol=1e-12)
    assert sol.info["condition_number"] == pytest.approx(np.linalg.cond(A), rel=1e-8)


def test_qr_ridge_is_augmented_system():
    A, y, _ = _system()
    lam = 0.7
    sol = solvers.solve({"name": "qr", "lambda": lam}, A, y)
    m = A.shape[1]
    ref = np.linalg.solve(A.T @ A + lam ** 2 * np.eye(m), A.T @ y)   # [A; λI] ⇒ λ² ridge
    np.testing.assert_allclose(sol.coef, ref, rtol=1e-9)


def test_qr_underdetermined_refuses():
    A, y, _ = _system(n=5, m=10)
    with pytest.raises(ValueError, match="at least as many"):
        solvers.solve("qr", A, y)


@pytest.mark.parametrize("n,m", [(60, 10), (8, 15)])
def test_log_evidence_matches_brute_force(n, m):
    A, y, _ = _system(n=n, m=m)
    f = solvers.svd_factors(A, y)
    for var0, vare in [(1.0, 1.0), (3.5, 0.02), (0.1, 2.0)]:
        cov = var0 * A @ A.T + vare * np.eye(n)
        ref = scipy.stats.multivariate_normal(mean=np.zeros(n), cov=cov).logpdf(y)
        assert solvers.log_evidence(f, var0, vare) == pytest.approx(ref, rel=1e-10)


def test_log_evidence_gradient():
    A, y, _ = _system()
    f = solvers.svd_factors(A, y)
    # central differences of log L (|log L| = 24): rounding ε|log L|/h = 5e-9 (h = 1e-6 for var0) and
    # 5e-7 (h = 1e-8 for vare), i.e. 4e-9 and 1e-9 of the gradients (1.4 and 530); truncation
    # h²/6·|∂³L| is smaller still: rel=1e-5 leaves room for neither CPU nor BLAS to matter
    v0, ve, h = 2.0, 0.05, 1e-6
    _, (g0, ge) = solvers.log_evidence(f, v0, ve, grad=True)
    fd0 = (solvers.log_evidence(f, v0 + h, ve) - solvers.log_evidence(f, v0 - h, ve)) / (2 * h)
    fde = (solvers.log_evidence(f, v0, ve + h * 0.01) - solvers.log_evidence(f, v0, ve - h * 0.01)) / (2 * h * 0.01)
    assert g0 == pytest.approx(fd0, rel=1e-5)
    assert ge == pytest.approx(fde, rel=1e-5)


def test_blr_is_evidence_maximum_and_posterior_mean():
    A, y, _ = _system(noise=0.3)
    sol = solvers.solve({"name": "blr"}, A, y)
    v0, ve = sol.info["sigma0_sq"], sol.info["sigmae_sq"]
    # a brute-force grid in log space does not beat the optimum
    f = solvers.svd_factors(A, y)
    best = max(solvers.log_evidence(f, a, b) for a in np.geomspace(v0 / 3, v0 * 3, 41)
               for b in np.geomspace(ve / 3, ve * 3, 41))
    assert sol.info["log_evidence"] >= best - 1e-9
    assert ve == pytest.approx(0.09, rel=0.5)          # noise 0.3
    m = A.shape[1]
    ref = np.linalg.solve(A.T @ A + ve / v0 * np.eye(m), A.T @ y)   # ridge with λ = σ_e²/σ₀²
    np.testing.assert_allclose(sol.coef, ref, rtol=1e-8)


def test_blr_committee_statistics_and_determinism():
    A, y, _ = _system(n=200, m=6, noise=0.5)
    K = 4000
    sol = solvers.solve({"name": "blr", "committee_size": K}, A, y, seed=3)
    assert sol.committee.shape == (K, 6)
    v0, ve = sol.info["sigma0_sq"], sol.info["sigmae_sq"]
    post_cov = np.linalg.inv(A.T @ A / ve + np.eye(6) / v0)
    np.testing.assert_allclose(sol.committee.mean(axis=0), sol.coef, atol=4 * np.sqrt(np.diag(post_cov) / K).max())
    np.testing.assert_allclose(np.cov(sol.committee.T), post_cov, rtol=0.15, atol=0.15 * np.abs(post_cov).max())
    again = solvers.solve({"name": "blr", "committee_size": K}, A, y, seed=3)
    np.testing.assert_array_equal(again.committee, sol.committee)
    other = solvers.solve({"name": "blr", "committee_size": K}, A, y, seed=4)
    assert not np.array_equal(other.committee, sol.committee)


def test_tsvd_rtol_and_validation_choice():
    rng = np.random.default_rng(1)
    n, m = 100, 8
    U, _ = np.linalg.qr(rng.standard_normal((n, m)))
    V, _ = np.linalg.qr(rng.standard_normal((m, m)))
    s = np.geomspace(1, 1e-12, m)
    A = U * s @ V.T
    c = V[:, :3] @ rng.standard_normal(3)
    y = A @ c
    full = solvers.solve({"name": "tsvd", "rtol": 1e-9}, A, y)
    assert full.info["truncation"] == int(np.sum(s > 1e-9))
    # noisy training targets; the validation set (clean) should pick a small truncation
    yn = y + 1e-6 * rng.standard_normal(n)
    sol = solvers.solve({"name": "tsvd"}, A, yn, A_val=A, y_val=y)
    assert sol.info["chosen_on"] == "validation"
    assert sol.info["truncation"] <= 5
    # brute force: the chosen k minimises the validation residual over all truncations
    Uf, sf, Vtf = np.linalg.svd(A, full_matrices=False)
    res = [np.linalg.norm(A @ (Vtf[:k].T @ ((Uf[:, :k].T @ yn) / sf[:k])) - y) for k in range(1, m + 1)]
    assert sol.info["truncation"] == int(np.argmin(res)) + 1
    noisy_full = solvers.solve({"name": "tsvd", "rtol": 1e-9}, A, yn)
    assert np.linalg.norm(A @ sol.coef - y) < np.linalg.norm(A @ noisy_full.coef - y)


def test_rrqr_rank_deficient():
    A, y, _ = _system(n=50, m=6)
    A = np.hstack([A, A[:, :1] * 2.0])      # exactly dependent column
    sol = solvers.solve({"name": "rrqr"}, A, y)
    assert sol.info["rank"] == 6
    np.testing.assert_allclose(A @ sol.coef, A @ np.linalg.lstsq(A, y, rcond=None)[0], atol=1e-9)


def test_unknown_solver_and_params():
    A, y, _ = _system()
    with pytest.raises(ValueError, match="unknown solver"):
        solvers.solve("magic", A, y)
    with pytest.raises(ValueError, match="unknown parameter"):
        solvers.solve({"name": "qr", "lamda": 1}, A, y)
