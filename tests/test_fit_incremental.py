"""Incremental refit (aceserver.fitting.incremental) against a fit from scratch on the union.

An update folds the new configurations' rows into the kept per-group triangular factors and solves
again; a fit from scratch assembles all rows and factors them at once. Both solve the same
least-squares problem, so they differ only by rounding in a different order: the first-order
perturbation bounds of tests/lsq_bounds.py (2 η κ (...), η = √m ε, κ the condition number of the
weighted, prior-scaled matrix in its regularised form). A bug (a lost row group, a wrong weight or
E0, a row counted twice) moves the answer by orders of magnitude more. The data are split by
extended-XYZ frames of tests/data/Si_tiny.xyz (upstream ACEpotentials.jl's Si test set).
"""
import io
from pathlib import Path

import numpy as np
import pytest

import aceserver
from aceserver.fitting import assembly, data, error_tables, incremental, priors
from aceserver.fitting import fit_model as driver
from aceserver.fitting.config import parse_config

from lsq_bounds import EPS, hyper_rel, lsq_bounds

DATA = Path(__file__).parent / "data"
MODEL = dict(elements=["Si"], order=3, totaldegree=12, rcut=5.5)
KEYS = dict(energy_key="dft_energy", force_key="dft_force", virial_key="dft_virial")
E0_SI = -158.54496821
WEIGHTS = {"default": {"E": 30.0, "F": 1.0, "V": 1.0}, "liq": {"E": 10.0, "F": 0.66, "V": 0.25}}
N_NEW = 8        # frames added by the update (taken from the end of Si_tiny.xyz)


def frames(path) -> list[str]:
    """The frames of an extended-XYZ file as text, unchanged (no re-formatting of numbers)."""
    lines = Path(path).read_text().splitlines(keepends=True)
    out, i = [], 0
    while i < len(lines):
        n = int(lines[i])
        out.append("".join(lines[i:i + n + 2]))
        i += n + 2
    return out


def write_frames(path, fr) -> Path:
    Path(path).write_text("".join(fr))
    return Path(path)


def fit_config(tmp_path, solver, E0=None, old=None, **extra):
    fr = frames(DATA / "Si_tiny.xyz")
    old = fr[:-N_NEW] if old is None else old
    write_frames(tmp_path / "old.xyz", old)
    write_frames(tmp_path / "new.xyz", fr[-N_NEW:])
    raw = {"model": MODEL, "data": dict(train="old.xyz", **KEYS), "weights": WEIGHTS, "solver": solver,
           "seed": 3, "output": {"model": "si.json", "plots": None, "active_set": False}, **extra}
    if E0 is not None:
        raw["E0"] = E0
    return parse_config(raw, tmp_path)


def read(path):
    return data.read_configs(path, data.Keys("dft_energy", "dft_force", "dft_virial"), elements=["Si"])


def fit_and_update(tmp_path, solver, E0=None, old=None, **extra):
    cfg = fit_config(tmp_path, solver, E0, old, **extra)
    model, report, state = incremental.fit_with_state(cfg, plots=False, progress=False, threads=2,
                                                      out=io.StringIO())
    new = read(tmp_path / "new.xyz")
    upd, rep, state2 = incremental.update(model, state, new, name="new.xyz", threads=2)
    return cfg, model, state, upd, rep, state2


def scratch(union, solver, E0, seed=3, validation=None):
    """The reference: acefit on the assembled union (the in-memory path), and the weighted,
    prior-scaled matrix and targets it solved."""
    model = aceserver.ace1_model(**MODEL, E0=dict(E0))
    system = assembly.assemble(model, union, WEIGHTS, progress=False)
    res = driver.acefit(model, union, weights=WEIGHTS, solver=solver, seed=seed, system=system,
                        validation=validation, compute_errors=False)
    gamma = priors.make_prior(model.basis_labels, None)
    w = assembly.row_weights(system, union, WEIGHTS)
    return model, res, system.A * w[:, None] / gamma[None, :], w * system.y, gamma, system, w


def rel(a, b):
    return float(np.linalg.norm(np.asarray(a) - np.asarray(b)) / np.linalg.norm(np.asarray(b)))


def predicted_rows(model, configs):
    """The evaluator's energies and forces of ``model`` in the order of the assembled E and F rows."""
    out = []
    for c, (e, f, _) in zip(configs, error_tables.predict(model, configs)):
        if c.energy is not None:
            out.append([e])
        if c.forces is not None:
            out.append(np.asarray(f).ravel())
    return np.concatenate(out)


def check_predictions(upd, ref, union, system, w, fitted_abs):
    """Energies (eV) and forces (eV/Å) of the two models by the evaluator, row by row. Row i of the
    weighted fitted values moves by at most ‖Aw δc‖ ≤ ``fitted_abs`` (the fitted-value bound), so
    its prediction by at most fitted_abs / w_i; each model's evaluator sums m terms, adding at
    most m ε Σ_k |A_ik θ_k| (+ ε|E| for the E0 sum) to each."""
    ef = system.kind != assembly.KIND_V
    A, wi = system.A[ef], w[ef]
    p1, p2 = predicted_rows(upd, union), predicted_rows(ref, union)
    m = A.shape[1]
    rounding = m * EPS * (np.abs(A) @ (np.abs(upd.parameters) + np.abs(ref.parameters))) + \
        2 * EPS * np.maximum(np.abs(p1), np.abs(p2))
    tol = fitted_abs / wi + rounding
    assert np.all(np.abs(p1 - p2) <= tol), float(np.max(np.abs(p1 - p2) / tol))
    return float(np.max(np.abs(p1 - p2) / np.abs(p2).max()))


def test_update_equals_scratch_blr_committee(tmp_path):
    """BLR with a committee of 5 (seed 3). The posterior mean is ridge with λ² = σ_e²/σ₀²: bounds with
    κ_λ of [A; λI] (~2e6 here). The evidence is stationary at its maximum, so rounding moves the
    hyperparameters to second order only (test_fit_streaming: 1e-10); a relative change δh of λ²
    moves c by at most δh‖c‖. The committee is c plus a fixed linear map (the posterior covariance's
    square root, as well determined as c) of the same draws."""
    solver = {"name": "blr", "committee_size": 5}
    cfg, model, state, upd, rep, state2 = fit_and_update(tmp_path, solver, E0={"Si": E0_SI})
    union = read(tmp_path / "old.xyz") + read(tmp_path / "new.xyz")
    ref, res, Aw, yw, gamma, system, w = scratch(union, solver, {"Si": E0_SI})
    for k in ("sigma0_sq", "sigmae_sq", "log_evidence", "effective_parameters"):
        assert rep["solver"][k] == pytest.approx(res.solver_info[k], rel=1e-10), k
    c = gamma * ref.parameters
    lam = np.sqrt(res.solver_info["sigmae_sq"] / res.solver_info["sigma0_sq"])
    b = lsq_bounds(Aw, yw, c, lam=lam)
    dh = hyper_rel(res.solver_info, rep["solver"])
    assert rel(gamma * upd.parameters, c) < b.x_rel + dh
    assert rel(upd.committee * gamma, ref.committee * gamma) < b.x_rel + dh
    fitted = b.fitted_rel + dh * lam * np.linalg.norm(c) / 2 / np.linalg.norm(Aw @ c)
    assert rel(Aw @ (gamma * upd.parameters), Aw @ c) < fitted
    check_predictions(upd, ref, union, system, w, fitted * np.linalg.norm(Aw @ c))
    # the bookkeeping: rows and configurations of the union, the data versions, the old state untouched
    assert state2.factors.total_rows == Aw.shape[0] and state.factors.total_rows < Aw.shape[0]
    assert state2.data_version == state.data_version + 1 == 2
    assert state2.data[-1]["name"] == "new.xyz" and state2.data[-1]["configs"] == N_NEW
    assert upd.metadata["fit"]["provenance"]["data_versions"] == state2.data
    assert state2.model_sha256 == upd.sha256 and state.model_sha256 == model.sha256


def test_update_equals_scratch_qr(tmp_path):
    """Ridge QR with λ = 1: κ_λ = √((σ₁² + λ²)/(σ_m² + λ²)) is then small enough that the bound on
    the parameters (2 η κ (2 + (κ+1)‖r‖/(‖A‖‖x‖))) is below 1e-8, the issue's target."""
    solver = {"name": "qr", "lambda": 1.0}
    cfg, model, state, upd, rep, state2 = fit_and_update(tmp_path, solver, E0={"Si": E0_SI})
    union = read(tmp_path / "old.xyz") + read(tmp_path / "new.xyz")
    ref, res, Aw, yw, gamma, system, w = scratch(union, solver, {"Si": E0_SI})
    c = gamma * ref.parameters
    b = lsq_bounds(Aw, yw, c, lam=1.0)
    assert b.x_rel < 1e-8
    assert rel(gamma * upd.parameters, c) < b.x_rel
    assert rel(Aw @ (gamma * upd.parameters), Aw @ c) < b.fitted_rel
    check_predictions(upd, ref, union, system, w, b.fitted_rel * np.linalg.norm(Aw @ c))


def test_e0_from_a_new_isolated_atom(tmp_path):
    """The old data have no isolated atom and no E0 (so E0 = 0); the update brings the isolated Si
    atom, and a fit of the union takes E0 from it. The factors' targets stay under E0 = 0: the
    update reaches the new E0 through the element-count target column (streaming.e0_alpha), which
    is exact arithmetic on the same least-squares problem, so the bounds of a plain refit hold."""
    fr = frames(DATA / "Si_tiny.xyz")
    iso = [f for f in fr if "isolated_atom" in f]
    rest = [f for f in fr if "isolated_atom" not in f]
    cfg = fit_config(tmp_path, {"name": "qr", "lambda": 1.0}, old=rest[:-N_NEW + 1])
    write_frames(tmp_path / "new.xyz", rest[-N_NEW + 1:] + iso)
    model, _, state = incremental.fit_with_state(cfg, plots=False, progress=False, out=io.StringIO())
    assert model.E0 == {"Si": 0.0}
    new = read(tmp_path / "new.xyz")
    upd, rep, state2 = incremental.update(model, state, new, name="new.xyz")
    assert upd.E0 == {"Si": E0_SI} and state2.fit["E0"] == {"Si": 0.0}
    union = read(tmp_path / "old.xyz") + new
    ref, res, Aw, yw, gamma, system, w = scratch(union, {"name": "qr", "lambda": 1.0}, {"Si": E0_SI})
    c = gamma * ref.parameters
    b = lsq_bounds(Aw, yw, c, lam=1.0)
    assert rel(gamma * upd.parameters, c) < b.x_rel
    check_predictions(upd, ref, union, system, w, b.fitted_rel * np.linalg.norm(Aw @ c))


def test_validation_split_of_new_data_and_tsvd(tmp_path):
    """With validation_fraction, the fit's own split is kept and new configurations go to validation
    by a hash of their content and the seed (incremental.split_new): independent of order and batch.
    With tsvd (which chooses its truncation on the validation set) the update equals acefit on
    (old train + new train, old validation + new validation): same truncation, fitted values within
    the truncated problem's bound (κ_k = σ₁/σ_k times the gap factor, lsq_bounds)."""
    solver = {"name": "tsvd", "rtol": 1e-9}
    cfg = fit_config(tmp_path, solver, E0={"Si": E0_SI}, validation_fraction=0.3)
    model, _, state = incremental.fit_with_state(cfg, plots=False, progress=False, out=io.StringIO())
    assert state.validation is not None
    new = read(tmp_path / "new.xyz")
    tr, va = incremental.split_new(new, state.fit)
    tr2, va2 = incremental.split_new(new[::-1], state.fit)
    assert {id(c) for c in va} == {id(c) for c in va2} and len(tr) + len(va) == len(new)
    upd, rep, state2 = incremental.update(model, state, new)
    old_train, old_val = data.split_train_validation(read(tmp_path / "old.xyz"), 0.3, 3)
    assert state2.fit["n_validation_configs"] == len(old_val) + len(va)
    ref, res, Aw, yw, gamma, system, w = scratch(old_train + tr, solver, {"Si": E0_SI}, validation=old_val + va)
    assert rep["solver"]["truncation"] == res.solver_info["truncation"]
    c = gamma * ref.parameters
    from lsq_bounds import solver_bounds
    b = solver_bounds(Aw, yw, c, res.solver_info)
    assert rel(Aw @ (gamma * upd.parameters), Aw @ c) < b.fitted_rel


def test_state_file_round_trip_and_refusals(tmp_path):
    """The file holds the factors bit for bit; a state of another model, a modified payload, a newer
    format version and a malformed archive are refused with an error naming the problem."""
    cfg = fit_config(tmp_path, {"name": "qr", "lambda": 1.0}, E0={"Si": E0_SI})
    model, report, state = incremental.fit_with_state(cfg, plots=False, progress=False, out=io.StringIO())
    path = tmp_path / "si.fitstate.npz"
    assert report["state"] == path.name and path.is_file()
    assert incremental.state_path(tmp_path / "si.json") == path
    loaded = incremental.load_state(path, model_sha256=model.sha256)
    assert loaded.factors.labels == state.factors.labels
    for g in state.factors.labels:
        for a, b in zip(loaded.factors.factor(g), state.factors.factor(g)):
            assert np.array_equal(a, b)
    assert loaded.fit == incremental.jsonable(state.fit) and loaded.data == state.data
    # the saved model is the one the state names
    assert aceserver.load_model(tmp_path / "si.json").sha256 == loaded.model_sha256

    with pytest.raises(incremental.FitStateError, match="belongs to the model"):
        incremental.load_state(path, model_sha256="0" * 64)
    other = aceserver.ace1_model(**MODEL, E0={"Si": E0_SI})
    with pytest.raises(incremental.FitStateError, match="belongs to the model"):
        incremental.update(other, loaded, read(tmp_path / "new.xyz"))

    arrays = dict(np.load(path, allow_pickle=False))
    key = max((k for k in arrays if k.startswith("R_")), key=lambda k: np.abs(arrays[k]).sum())
    R = arrays[key].copy()
    R[0, 0] = np.nextafter(R[0, 0], np.inf)                    # one ulp
    bad = dict(arrays, **{key: R})
    np.savez(tmp_path / "tampered.fitstate.npz", **bad)
    with pytest.raises(incremental.FitStateError, match="modified or damaged"):
        incremental.load_state(tmp_path / "tampered.fitstate.npz")
    newer = dict(arrays, version=np.array(2, dtype=np.int64))
    np.savez(tmp_path / "newer.fitstate.npz", **newer)
    with pytest.raises(incremental.FitStateError, match="newer aceserver"):
        incremental.load_state(tmp_path / "newer.fitstate.npz")
    (tmp_path / "junk.fitstate.npz").write_bytes(b"not a zip")
    with pytest.raises(incremental.FitStateError, match="not a readable"):
        incremental.load_state(tmp_path / "junk.fitstate.npz")
    missing = {k: v for k, v in arrays.items() if k != "S_0"}
    np.savez(tmp_path / "missing.fitstate.npz", **missing)
    with pytest.raises(incremental.FitStateError):
        incremental.load_state(tmp_path / "missing.fitstate.npz")


def test_bad_labels_are_refused_and_nothing_changes(tmp_path):
    cfg = fit_config(tmp_path, {"name": "qr", "lambda": 1.0}, E0={"Si": E0_SI})
    model, _, state = incremental.fit_with_state(cfg, plots=False, progress=False, out=io.StringIO())
    rows = state.factors.total_rows
    new = read(tmp_path / "new.xyz")
    nan = [data.Config(**{**c.__dict__}) for c in new]
    nan[2].forces = nan[2].forces.copy()
    nan[2].forces[0, 1] = np.nan
    with pytest.raises(data.FitDataError, match="frame 2.*forces.*NaN"):
        incremental.update(model, state, nan)
    shape = [data.Config(**{**c.__dict__}) for c in new]
    shape[1].forces = shape[1].forces[:-1]
    with pytest.raises(data.FitDataError, match="frame 1.*forces.*shape"):
        incremental.update(model, state, shape)
    alien = [data.Config(**{**c.__dict__}) for c in new]
    alien[0].numbers = alien[0].numbers.copy()
    alien[0].numbers[0] = 6
    with pytest.raises(data.FitDataError, match="element C is not in the model"):
        incremental.update(model, state, alien)
    with pytest.raises(data.FitDataError):
        incremental.update(model, state, [])
    assert state.factors.total_rows == rows and state.data_version == 1


def test_cli_save_state_then_update(tmp_path, capsys):
    """`aceserver fit --save-state` then `aceserver fit --update STATE NEW.xyz --output`: the new
    model records the data versions by file name and sha256 (no paths), equals the library update,
    and an update of the old model with the new state is refused."""
    import yaml
    from aceserver.cli import main
    from aceserver.fitting.workflow import sha256_file
    cfg = fit_config(tmp_path, {"name": "qr", "lambda": 1.0}, E0={"Si": E0_SI})
    (tmp_path / "fit.yaml").write_text(yaml.safe_dump(cfg.raw))
    assert main(["fit", str(tmp_path / "fit.yaml"), "--save-state", "--quiet", "--no-plots"]) == 0
    assert (tmp_path / "si.fitstate.npz").is_file()
    assert main(["fit", "--update", str(tmp_path / "si.fitstate.npz"), str(tmp_path / "new.xyz"),
                 "--output", str(tmp_path / "si2.json"), "--quiet"]) == 0
    out = capsys.readouterr().out
    assert "data version 2" in out
    m2 = aceserver.load_model(tmp_path / "si2.json")
    versions = m2.metadata["fit"]["provenance"]["data_versions"]
    assert [(v["version"], v["name"], v["sha256"]) for v in versions] == [
        (1, "old.xyz", sha256_file(tmp_path / "old.xyz")), (2, "new.xyz", sha256_file(tmp_path / "new.xyz"))]
    assert str(tmp_path) not in (tmp_path / "si2.json").read_text()
    s2 = incremental.load_state(tmp_path / "si2.fitstate.npz", model_sha256=m2.sha256)
    assert s2.data_version == 2
    m1 = aceserver.load_model(tmp_path / "si.json")
    lib, _, _ = incremental.update(m1, incremental.load_state(tmp_path / "si.fitstate.npz"),
                                   read(tmp_path / "new.xyz"))
    assert np.array_equal(lib.parameters, m2.parameters)      # same arithmetic, same order
    # the old model with the new state: refused, and the command says why
    assert main(["fit", "--update", str(tmp_path / "si2.fitstate.npz"), str(tmp_path / "new.xyz"),
                 "--model", str(tmp_path / "si.json")]) == 2
    assert "belongs to the model" in capsys.readouterr().err


def test_chained_updates_through_the_file(tmp_path):
    """Two updates in a row, the state written and read between them (as the learning loop does),
    equal one update with both batches: the same rows in a different reduction order, so the
    ridge-QR bound of a refit applies; the data versions count the batches in order."""
    solver = {"name": "qr", "lambda": 1.0}
    cfg = fit_config(tmp_path, solver, E0={"Si": E0_SI})
    model, _, state = incremental.fit_with_state(cfg, plots=False, progress=False, out=io.StringIO())
    new = read(tmp_path / "new.xyz")
    m1, _, s1 = incremental.update(model, state, new[:3], name="a.xyz", compute_errors=False)
    incremental.save_state(s1, tmp_path / "s1.fitstate.npz")
    s1 = incremental.load_state(tmp_path / "s1.fitstate.npz", model_sha256=m1.sha256)
    m2, _, s2 = incremental.update(m1, s1, new[3:], name="b.xyz", compute_errors=False)
    both, _, s3 = incremental.update_batches(model, state, [("a.xyz", None, new[:3]), ("b.xyz", None, new[3:])],
                                             compute_errors=False)
    assert [d["name"] for d in s2.data] == [d["name"] for d in s3.data] == ["old.xyz", "a.xyz", "b.xyz"]
    assert [d["sha256"] for d in s2.data] == [d["sha256"] for d in s3.data]
    assert s2.factors.total_rows == s3.factors.total_rows
    union = read(tmp_path / "old.xyz") + new
    ref, res, Aw, yw, gamma, system, w = scratch(union, solver, {"Si": E0_SI})
    b = lsq_bounds(Aw, yw, gamma * ref.parameters, lam=1.0)
    assert rel(gamma * m2.parameters, gamma * both.parameters) < b.x_rel
