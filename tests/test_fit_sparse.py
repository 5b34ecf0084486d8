"""Sparse solvers (aceserver.fitting.sparse: ASP, ARD) against independent references.

References: scikit-learn's ``lars_path(method="lasso")`` and ``ARDRegression`` on the FULL system
(A, y), while ours work on its triangular factor (R, Qᵀy, ρ); a brute-force search over supports and
signs of the lasso optimum on a tiny problem; numpy least squares for the tsvd refit; and the prior
scaling (sklearn on A·diag(1/γ), mapped back by 1/γ, must agree with the fit; on A unscaled it must
not, so that dropping the scaling fails the test).

Tolerances. A lasso knot solves G_SS β_S = X_Sᵀy − λ s over its active set S; two backward-stable
computations of it (our QR of R_S, sklearn's Cholesky of the Gram matrix) differ by about
κ(A_S)²·m·ε·‖β‖ (normal equations), and an error in λ at one knot carries to the next, so we allow
that times the number of knots, times 10 for the constants (κ measured per problem). ARD: the
same iteration on the same numbers, rounding through ≤ 30 iterations of (diag λ + αG)⁻¹ with
κ(G) = κ(A)² ≤ 1e2 here: 30·κ(G)·m·ε·‖μ‖ ≈ 1e-11·‖μ‖; 1e-8·‖μ‖ leaves three orders for the
pruning-free iterations to differ in summation order and still catches any wrong update formula.
"""
from itertools import product
from pathlib import Path

import numpy as np
import pytest

sklearn_lm = pytest.importorskip("sklearn.linear_model")

import aceserver                                           # noqa: E402
from aceserver.fitting import assembly, data, priors, solvers, sparse, streaming   # noqa: E402
from aceserver.fitting import fit_model as driver          # noqa: E402
from lsq_bounds import hyper_rel, solver_bounds             # noqa: E402

EPS = np.finfo(float).eps


@pytest.fixture(autouse=True, scope="module")
def _one_blas_thread():
    """Many small factorisations: on a loaded machine, BLAS threads that spin-wait make them ~10x
    slower; one thread gives the same numbers to rounding and keeps the test short."""
    from threadpoolctl import threadpool_limits
    with threadpool_limits(limits=1, user_api="blas"):
        yield
DATA = Path(__file__).parent / "data"


def _problem(seed, n, m, rank=8, noise=0.5):
    """Correlated columns (a rank-`rank` part plus noise): paths with functions leaving and re-entering."""
    rng = np.random.default_rng(seed)
    A = rng.standard_normal((n, rank)) @ rng.standard_normal((rank, m)) + noise * rng.standard_normal((n, m))
    y = A[:, :6] @ rng.standard_normal(6) + 0.5 * rng.standard_normal(n)
    return A, y


def _reduce(A, y):
    R, qty, S = solvers.qr_reduce(A, y)
    return R, qty[:, 0], float(S[0, 0])


def _path_tol(A, path, scale):
    kappa = max(np.linalg.cond(A[:, path.support(i)]) for i in range(len(path)) if path.sizes[i])
    return 10 * len(path) * kappa ** 2 * A.shape[1] * EPS * max(scale, 1.0)


@pytest.mark.parametrize("seed,n", [(s, n) for s in range(6) for n in (20, 40)])
def test_homotopy_matches_sklearn_lars_path(seed, n):
    """Every knot (λ and coefficients) equals sklearn's lasso LARS path on the full system; n = 20 < m
    (underdetermined, R is 20 × 30) and n = 40 > m; the paths have drops and re-entries."""
    A, y = _problem(seed, n, 30)
    R, qty, _ = _reduce(A, y)
    path = sparse.lasso_homotopy(R, qty)
    alphas, _, coefs = sklearn_lm.lars_path(A, y, method="lasso")
    assert any(e[0] == "drop" for e in path.events)
    assert len(path) == len(alphas)
    tol = _path_tol(A, path, np.abs(coefs).max())
    np.testing.assert_allclose(path.lambdas, alphas * n, rtol=0, atol=tol * np.abs(alphas[0] * n))
    for i in range(len(path)):
        np.testing.assert_allclose(path.dense(i, 30), coefs[:, i], rtol=0, atol=tol)


def _lasso_brute_force(A, y, lam):
    """argmin ½‖Ac − y‖² + λ‖c‖₁ by trying every support and sign pattern (3^m candidates): on a
    support S with signs s the stationary point is c_S = G_SS⁻¹(A_Sᵀy − λs); keep those whose signs
    agree, and take the one with the smallest objective."""
    m = A.shape[1]
    G, b = A.T @ A, A.T @ y
    best, arg = np.inf, None
    for pattern in product((-1, 0, 1), repeat=m):
        s = np.array(pattern, dtype=float)
        S = np.flatnonzero(s)
        c = np.zeros(m)
        if S.size:
            c[S] = np.linalg.solve(G[np.ix_(S, S)], b[S] - lam * s[S])
            if np.any(np.sign(c[S]) != s[S]):
                continue
        f = 0.5 * np.sum((A @ c - y) ** 2) + lam * np.abs(c).sum()
        if f < best:
            best, arg = f, c
    return arg


@pytest.mark.parametrize("seed", range(3))
def test_homotopy_is_the_lasso_optimum_brute_force(seed):
    """Between knots the path is linear in λ; at random λ it equals the brute-force lasso optimum."""
    A, y = _problem(seed, 15, 6, rank=3)
    R, qty, _ = _reduce(A, y)
    path = sparse.lasso_homotopy(R, qty)
    rng = np.random.default_rng(seed)
    tol = _path_tol(A, path, 10.0)
    for lam in rng.uniform(0.02, 0.98, 6) * path.lambdas[0]:
        i = int(np.searchsorted(-path.lambdas, -lam))          # knots i-1 (λ above) and i (below)
        t = (path.lambdas[i - 1] - lam) / (path.lambdas[i - 1] - path.lambdas[i])
        c = (1 - t) * path.dense(i - 1, 6) + t * path.dense(i, 6)
        np.testing.assert_allclose(c, _lasso_brute_force(A, y, lam), rtol=0, atol=tol)


def test_asp_select_rules():
    """ACEfit's asp_select on given errors: final; byerror q (first within q·min); bysize n (the
    best knot before the first with more than n functions)."""
    sq = np.array([9.0, 4.0, 1.0, 1.21, 0.81, 1.0]) ** 2
    sizes = np.array([1, 2, 3, 4, 5, 6])
    assert sparse.asp_select(sq, sizes, "final") == 5
    assert sparse.asp_select(sq, sizes, {"byerror": 1.0}) == 4
    assert sparse.asp_select(sq, sizes, {"byerror": 1.25}) == 2        # 1.0 ≤ 1.25·0.81
    assert sparse.asp_select(sq, sizes, {"bysize": 4}) == 2
    with pytest.raises(ValueError, match="at most 0|bysize"):
        sparse.asp_select(sq, sizes, {"bysize": 0})
    with pytest.raises(ValueError, match="select"):
        sparse.asp_select(sq, sizes, "best")


def test_asp_validation_choice_and_tsvd_refit():
    """The knot chosen on a validation set (given as its triangular factor) is the one whose
    validation error, computed from the validation rows themselves, is smallest; with ``tsvd`` the
    chosen coefficients are the least-squares refit on their active columns (numpy lstsq)."""
    A, y = _problem(7, 60, 20)
    Av, yv = _problem(8, 30, 20)
    sol = solvers.solve({"name": "asp", "select": {"byerror": 1.0}}, A, y, Av, yv)
    R, qty, _ = _reduce(A, y)
    path = sparse.lasso_homotopy(R, qty)
    err = [np.linalg.norm(Av @ path.dense(i, 20) - yv) for i in range(len(path))]
    part = sparse.lasso_homotopy(R, qty, store={3})                 # keeping one knot: the same numbers
    assert set(part.stored) == {3} and np.array_equal(part.dense(3, 20), path.dense(3, 20))
    assert sol.info["chosen_on"] == "validation"
    assert sol.info["knot"] == int(np.argmin(err))
    np.testing.assert_allclose(sol.coef, path.dense(int(np.argmin(err)), 20), rtol=0, atol=1e-9)

    sol = solvers.solve({"name": "asp", "select": {"bysize": 5}, "tsvd": True}, A, y, Av, yv)
    S = np.flatnonzero(sol.coef)
    assert 0 < len(S) <= 5
    ref = np.linalg.lstsq(A[:, S], y, rcond=None)[0]        # κ(A_S) < 10: all singular values kept
    np.testing.assert_allclose(sol.coef[S], ref, rtol=1e-10, atol=1e-12)


def test_asp_max_active():
    A, y = _problem(3, 60, 25)
    sol = solvers.solve({"name": "asp", "select": "final", "max_active": 7}, A, y)
    assert sol.info["n_active"] == 7 and sol.info["max_active"] == 7


def test_asp_blr_refit_and_committee_on_the_support():
    """ASP with ``refit: blr`` and a committee, on a dense system and on its reduced form (R, Qᵀy, ρ,
    N): on the lasso's final support, the mean and the committee are those of BLR on A[:, S] with the
    same seed (solvers.solve blr: its own QR, SVD and evidence); zero elsewhere. Members are
    μ + M ξ with M = V diag(√covar) Vᵀ a smooth spectral function of A_SᵀA_S (so no SVD sign or
    rotation ambiguity), perturbed to first order as the ridge solution μ is: tolerance from
    lsq_bounds.solver_bounds plus the evidence optima's relative difference (hyper_rel), times each
    member's norm."""
    A, y = _problem(3, 120, 25)
    spec = {"name": "asp", "select": "final", "max_active": 8, "refit": "blr", "committee_size": 5}
    R, qty, rho = _reduce(A, y)
    for sol in (solvers.solve(spec, A, y, seed=3), solvers.solve(spec, R, qty, reduced=(rho, len(y)), seed=3)):
        S = np.flatnonzero(sol.coef)
        lasso = solvers.solve({"name": "asp", "select": "final", "max_active": 8}, A, y)
        np.testing.assert_array_equal(S, np.flatnonzero(lasso.coef))
        ref = solvers.solve({"name": "blr", "committee_size": 5}, A[:, S], y, seed=3)
        b = solver_bounds(A[:, S], y, ref.coef, ref.info)
        rel = b.x_rel + hyper_rel(ref.info, sol.info["refit_info"])
        assert np.linalg.norm(sol.coef[S] - ref.coef) <= rel * np.linalg.norm(ref.coef)
        assert sol.committee.shape == (5, A.shape[1]) and not sol.committee[:, np.setdiff1d(np.arange(25), S)].any()
        for k in range(5):
            assert np.linalg.norm(sol.committee[k, S] - ref.committee[k]) <= rel * np.linalg.norm(ref.committee[k])
        assert np.linalg.norm(sol.coef - lasso.coef) > 100 * rel * np.linalg.norm(ref.coef)   # the shrinkage is gone
    with pytest.raises(ValueError, match="needs refit: blr"):
        solvers.solve({"name": "asp", "committee_size": 5}, A, y)


def test_sparse_spec_errors():
    A, y = _problem(0, 40, 10)
    with pytest.raises(ValueError, match="unknown parameter"):
        solvers.solve({"name": "asp", "lamda": 1}, A, y)
    with pytest.raises(ValueError, match="refit must be 'blr'"):
        solvers.solve({"name": "asp", "refit": "tsvd"}, A, y)
    with pytest.raises(ValueError, match="select"):
        solvers.solve({"name": "asp", "select": {"byerror": 0.5}}, A, y)
    with pytest.raises(ValueError, match="unknown parameter"):
        solvers.solve({"name": "ard", "threshold": 1}, A, y)


@pytest.mark.parametrize("seed", range(4))
def test_ard_matches_sklearn(seed):
    """Our ARD on (R, Qᵀy, ρ, N) equals ARDRegression(fit_intercept=False) on (A, y): same
    starting point (y centred, so N/‖y‖² = 1/var y), updates, pruning and stopping rule."""
    rng = np.random.default_rng(seed)
    n, m = 200, 30
    A = rng.standard_normal((n, m))
    w = np.zeros(m)
    w[:5] = 3 * rng.standard_normal(5)
    y = A @ w + 0.1 * rng.standard_normal(n)
    y -= y.mean()
    R, qty, rho = _reduce(A, y)
    sol = solvers.solve({"name": "ard"}, R, qty, reduced=(rho, n))
    ref = sklearn_lm.ARDRegression(fit_intercept=False).fit(A, y)
    assert np.array_equal(sol.coef != 0, ref.coef_ != 0)
    assert sol.info["n_active"] < m                           # something was pruned
    np.testing.assert_allclose(sol.coef, ref.coef_, rtol=0, atol=1e-8 * np.abs(ref.coef_).max())
    assert sol.info["noise_precision"] == pytest.approx(ref.alpha_, rel=1e-8)
    dense = solvers.solve({"name": "ard"}, A, y)              # the dense entry reduces first: same answer
    np.testing.assert_allclose(dense.coef, sol.coef, rtol=0, atol=1e-8 * np.abs(ref.coef_).max())


def test_ard_prior_scaling_on_streaming_factors():
    """ARD on the prior-scaled reduced system of two row groups (GroupFactors.combine with row scales
    and col_scale γ) equals sklearn's ARD on the stacked, weighted matrix divided by γ; on the
    matrix without 1/γ sklearn prunes differently, so a dropped scaling would fail."""
    rng = np.random.default_rng(5)
    m = 12
    gamma = np.geomspace(1.0, 300.0, m)
    theta = np.where(np.arange(m) % 3 == 0, 0.0, 0.01 * rng.standard_normal(m) * gamma / gamma.mean())
    A1, A2 = rng.standard_normal((80, m)), rng.standard_normal((150, m))
    y1, y2 = A1 @ theta + 1e-3 * rng.standard_normal(80), A2 @ theta + 1e-3 * rng.standard_normal(150)
    gf = streaming.GroupFactors(m, 1, chunk_rows=64)
    gf.add(("a", "E"), A1, y1)
    gf.add(("a", "F"), A2, y2)
    scales = {("a", "E"): 3.0, ("a", "F"): 1.0}
    red = gf.combine(list(scales), scales, col_scale=gamma)
    sol = red.solve({"name": "ard"})
    X = np.vstack([3.0 * A1, A2]) / gamma[None, :]
    Y = np.concatenate([3.0 * y1, y2])
    ref = sklearn_lm.ARDRegression(fit_intercept=False).fit(X, Y)
    # targets not centred: sklearn starts from α = 1/var(y), ours from N/‖y‖²; both iterate to the same
    # fixed point with the same pruning, to the stopping tolerance 1e-3 in Σ|Δμ| of the last step
    assert np.array_equal(sol.coef != 0, ref.coef_ != 0)
    np.testing.assert_allclose(sol.coef, ref.coef_, rtol=0, atol=1e-3)
    unscaled = sklearn_lm.ARDRegression(fit_intercept=False).fit(X * gamma[None, :], Y)
    assert not np.array_equal(unscaled.coef_ != 0, sol.coef != 0)


# ---- through acefit on a real ACE system (Si_tiny) ----------------------------------------------------

SI = dict(keys=data.Keys("dft_energy", "dft_force", "dft_virial"), weights={"default": {"E": 30.0, "F": 1.0, "V": 1.0}},
          model=dict(elements=["Si"], order=3, totaldegree=8, rcut=5.5), E0={"Si": -158.54496821})


@pytest.fixture(scope="module")
def si():
    configs = data.read_configs(DATA / "Si_tiny.xyz", SI["keys"], elements=["Si"])
    model = aceserver.ace1_model(**SI["model"], E0=dict(SI["E0"]))
    system = assembly.assemble(model, configs, SI["weights"], progress=False)
    return configs, system


def test_asp_fit_applies_the_prior_scaling(si):
    """acefit with ASP (in memory and streaming) equals sklearn's lasso path on diag(w)·A·diag(1/γ),
    mapped back by 1/γ, at the chosen knot; the path on diag(w)·A (no prior) activates other functions."""
    configs, system = si
    spec = {"name": "asp", "select": "final", "max_active": 12}
    fits = []
    for kw in (dict(system=system), dict(streaming=True, threads=1, progress=False)):
        model = aceserver.ace1_model(**SI["model"], E0=dict(SI["E0"]))
        res = driver.acefit(model, configs, weights=SI["weights"], solver=spec, compute_errors=False, **kw)
        fits.append((model.parameters.copy(), res.solver_info))
    gamma = priors.make_prior(model.basis_labels, None)
    w = assembly.row_weights(system, configs, SI["weights"])
    X, y = system.A * w[:, None] / gamma[None, :], w * system.y
    alphas, _, coefs = sklearn_lm.lars_path(X, y, method="lasso", max_iter=60)
    for theta, info in fits:
        assert info["n_active"] == 12
        i = int(np.argmin(np.abs(alphas * len(y) - info["lambda"])))
        ref = coefs[:, i] / gamma
        S = np.flatnonzero(ref)
        assert np.array_equal(np.flatnonzero(theta), S)
        # κ(X_S) of the 12 active prior-scaled columns, normal-equation bound as in the module doc
        tol = 10 * info["n_knots"] * np.linalg.cond(X[:, S]) ** 2 * X.shape[1] * EPS * np.abs(coefs[:, i]).max()
        np.testing.assert_allclose(theta * gamma, coefs[:, i], rtol=0, atol=tol)
    _, active_raw, _ = sklearn_lm.lars_path(X * gamma[None, :], y, method="lasso", max_iter=12)
    assert set(active_raw) != set(np.flatnonzero(fits[0][0]))


def test_asp_validation_choice_streaming_equals_in_memory(si):
    """With a validation set, the streaming path (validation reduced to its triangular factor) and the
    in-memory path (validation rows) choose the same knot and the same coefficients (κ bound as above)."""
    configs, system = si
    ti = list(range(0, len(configs), 2)) + list(range(1, len(configs), 4))
    train, val = [configs[i] for i in ti], configs[3::4]
    spec = {"name": "asp", "select": {"byerror": 1.0}, "max_active": 15}
    out = []
    for kw in (dict(streaming=False), dict(streaming=True, threads=1)):
        model = aceserver.ace1_model(**SI["model"], E0=dict(SI["E0"]))
        res = driver.acefit(model, train, weights=SI["weights"], solver=spec, validation=val, compute_errors=False,
                            progress=False, **kw)
        out.append((model.parameters.copy(), res.solver_info))
    (t1, i1), (t2, i2) = out
    assert i1["chosen_on"] == i2["chosen_on"] == "validation" and i1["knot"] == i2["knot"]
    assert i1["residual"] == pytest.approx(i2["residual"], rel=1e-8)
    np.testing.assert_array_equal(np.flatnonzero(t1), np.flatnonzero(t2))
    # the module doc's bound, κ of the chosen prior-scaled, weighted training columns
    gamma = priors.make_prior(model.basis_labels, None)
    rows = np.isin(system.config, ti)
    w = assembly.row_weights(system, configs, SI["weights"])[rows]
    S = np.flatnonzero(t1)
    X = system.A[rows][:, S] * w[:, None] / gamma[None, S]
    tol = 10 * i1["n_knots"] * np.linalg.cond(X) ** 2 * len(gamma) * EPS * np.abs(t1 * gamma).max()
    np.testing.assert_allclose(t1 * gamma, t2 * gamma, rtol=0, atol=tol)


def test_sparse_model_prunes_products_and_predicts_its_rows(si):
    """A sparse parameter vector keeps only the product nodes it needs (and their ancestors), and
    the pruned evaluator still predicts the fitting rows A·θ (energies, eV; basis_rows kernel)."""
    configs, system = si
    model = aceserver.ace1_model(**SI["model"], E0=dict(SI["E0"]))
    res = driver.acefit(model, configs, weights=SI["weights"], solver={"name": "asp", "select": "final",
                                                                        "max_active": 10},
                        system=system, compute_errors=False)
    dense_nodes = len(aceserver.ace1_model(**SI["model"], E0=dict(SI["E0"]))._merge(
        np.ones((1, model.length_basis)))["parent"])
    sparse_nodes = len(model._merge(model.parameters[None, :])["parent"])
    assert res.solver_info["n_active"] == 10 and sparse_nodes < dense_nodes
    e = system.kind == assembly.KIND_E
    e_rows = dict(zip(system.config[e].tolist(), system.A[e] @ model.parameters))
    for k in list(e_rows)[:5]:
        c = configs[k]
        E = model.evaluate(c.numbers, c.positions, c.cell, c.pbc).energy - c.natoms * SI["E0"]["Si"]
        # energy rows are E − ΣE0, unweighted; two summation orders of ≤ 100 site terms: 1e-10 relative
        assert E == pytest.approx(e_rows[k], rel=1e-10, abs=1e-9)


# ---- aceserver fit with a sparse solver (toy pair model, as tests/test_fit_cli.py) -------------------

from test_fit_cli import _args, toy_env   # noqa: E402,F401  (the fixture and the argument parser)


@pytest.mark.parametrize("solver", [{"name": "asp", "select": {"byerror": 1.0}, "max_active": 3},
                                    {"name": "asp", "select": {"byerror": 1.0}, "max_active": 3, "refit": "blr"},
                                    {"name": "ard", "threshold_lambda": 1e6}])
def test_aceserver_fit_with_sparse_solver(toy_env, capsys, solver):
    """fit.yaml's ``solver: {name: asp | ard, ...}`` runs end to end; ASP chooses on the validation
    split; the model keeps only the solver's nonzero parameters, and its report says how many."""
    import json

    import yaml

    from aceserver.commands import fit as fit_cmd
    from fit_toy_model import ToyModel
    cfg = yaml.safe_load((toy_env / "fit.yaml").read_text())
    cfg["solver"] = solver
    (toy_env / "fit.yaml").write_text(yaml.safe_dump(cfg))
    rep = toy_env / "report.json"
    rc = fit_cmd.run(_args(fit_cmd, [str(toy_env / "fit.yaml"), "--json-report", str(rep), "--quiet", "--no-plots"]))
    out = capsys.readouterr().out
    assert rc == 0, out
    info = json.loads(rep.read_text())["solver"]
    assert info["solver"] == solver["name"] and f"solver {solver['name']}:" in out and "n_active" in out
    model = ToyModel.load(toy_env / "out/toy.json")
    assert np.count_nonzero(model.parameters) == info["n_active"] <= 4
    if solver["name"] == "asp":
        assert info["chosen_on"] == "validation" and info["n_active"] <= 3
    if solver.get("refit"):
        assert info["refit"] == "blr" and info["refit_info"]["solver"] == "blr"
