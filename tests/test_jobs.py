"""The jobs layer (`aceserver.jobs`) in process: MD frames equal an ASE run written here with the same
seed, NVE conserves energy, relaxations match ASE's BFGS, halt conditions stop at the first check
where an independently computed value exceeds the threshold, cancel, the store's restart rule
(running -> interrupted, frames kept) and expiry.

References: ASE's own integrators and optimisers driven here on an `ACECalculator`; γ recomputed
with numpy from the model's descriptor rows and the active set's A⁻¹; the committee spread with
numpy's population standard deviation of the members' energies. The runner takes the same ASE
steps with the same calculator, so positions agree to rounding of identical operations: 1e-8 Å
(the issue's bound) leaves room for nothing but bitwise equality, which is what we expect.
"""
from __future__ import annotations

import time
from pathlib import Path

import numpy as np
import pytest
from ase import units
from ase.build import bulk
from ase.md.velocitydistribution import Stationary, thermalize_momenta
from ase.md.verlet import VelocityVerlet
from ase.optimize import BFGS

import aceserver
from aceserver.calculator import ACECalculator
from aceserver.fitting.active_set import maxvol
from aceserver.jobs import JobInputError, JobLimits, JobManager, JobTooLarge, MDJob, RelaxJob
from aceserver.jobs import frames as F
from aceserver.jobs.store import JobStore
from aceserver.loading import load_model

ROOT = Path(__file__).resolve().parents[1]
# BLAS on one thread as `aceserver serve` runs jobs (conftest's server_blas_threads)
pytestmark = [pytest.mark.timeout(600), pytest.mark.usefixtures("server_blas_threads")]


@pytest.fixture(scope="module")
def si_tiny():
    return load_model(str(ROOT / "models" / "Si-tiny" / "Si-tiny.json"))


def cell64(a=5.43):
    return bulk("Si", "diamond", a=a, cubic=True).repeat(2)


def md(steps, **kw):
    params = {"steps": steps, "temperature_K": kw.pop("T", 300.0), "seed": kw.pop("seed", 7),
              "timestep_fs": kw.pop("dt", 1.0)}
    return MDJob.model_validate({"kind": "md", "parameters": params, **kw})


def reference_md(model, atoms, steps, seed, T=300.0, dt=1.0, **calc):
    """ASE VelocityVerlet as MDParameters documents it; positions (and the calculator results) per step."""
    a = atoms.copy()
    a.calc = ACECalculator(model, **calc)
    thermalize_momenta(a, T, rng=np.random.default_rng(seed))
    Stationary(a)
    dyn = VelocityVerlet(a, timestep=dt * units.fs)
    out = []
    for _ in dyn.irun(steps):
        out.append((a.positions.copy(), dict(a.calc.results)))
    return out


def run(manager, model, atoms, spec):
    job = manager.submit(model, "m", model.sha256, atoms, spec)
    status = manager.wait(job, timeout=300)
    return status, [F.decode(b) for b in manager.store.frames(job)]


def test_md_frames_equal_ase_with_same_seed(si_tiny, tmp_path):
    manager = JobManager(tmp_path)
    status, frames = run(manager, si_tiny, cell64(), md(100, write_every=10))
    ref = reference_md(si_tiny, cell64(), 100, seed=7)
    assert status["state"] == "done" and status["step"] == 100
    assert [f["step"] for f in frames] == list(range(0, 101, 10))
    for f in frames:
        np.testing.assert_allclose(f["positions"], ref[f["step"]][0], rtol=0, atol=1e-8)
        assert f["energy"] == pytest.approx(ref[f["step"]][1]["energy"], rel=0, abs=1e-9)
    manager.shutdown()


def test_nve_energy_drift(si_tiny, tmp_path):
    """64-atom Si at 300 K, 1 fs: the drift (least-squares slope of E_pot + E_kin) is below 1e-4
    eV/atom/ps over 500 steps (the 2000-step number is measured in benchmarks/bench_jobs.py)."""
    manager = JobManager(tmp_path)
    status, frames = run(manager, si_tiny, cell64(), md(500, write_every=5))
    t = np.array([f["time_fs"] for f in frames]) / 1000.0
    e = np.array([f["energy"] + f["kinetic_energy"] for f in frames]) / 64
    slope = np.polyfit(t, e, 1)[0]
    assert abs(slope) < 1e-4, slope
    # the frame's kinetic energy and temperature as ASE defines them from the momenta
    f = frames[-1]
    masses = cell64().get_masses()
    ek = 0.5 * ((f["momenta"] ** 2).sum(axis=1) / masses).sum()
    assert f["kinetic_energy"] == pytest.approx(ek, rel=1e-12)
    assert f["temperature_K"] == pytest.approx(2 * ek / (3 * 64 * units.kB), rel=1e-12)
    manager.shutdown()


def test_relax_matches_ase_bfgs(si_tiny, tmp_path):
    atoms = cell64()
    atoms.positions += np.random.default_rng(3).normal(scale=0.05, size=atoms.positions.shape)
    manager = JobManager(tmp_path)
    spec = RelaxJob.model_validate({"kind": "relax", "parameters": {"optimizer": "BFGS", "fmax": 1e-3}})
    status, frames = run(manager, si_tiny, atoms, spec)
    ref = atoms.copy()
    ref.calc = ACECalculator(si_tiny)
    BFGS(ref, logfile=None).run(fmax=1e-3, steps=1000)
    assert status["state"] == "done" and status["converged"] is True
    last = frames[-1]
    assert last["max_force"] <= 1e-3
    assert np.sqrt((ref.get_forces() ** 2).sum(axis=1)).max() <= 1e-3
    np.testing.assert_allclose(last["positions"], ref.positions, rtol=0, atol=1e-6)
    manager.shutdown()


def test_halt_on_max_energy_std_at_first_check(si_tiny, tmp_path):
    """Heated cell: the committee spread, from numpy over the members' energies of a reference run,
    first exceeds the threshold at some step; the job halts at the first multiple of check_every
    at or after it, and reports it."""
    assert si_tiny.committee is not None
    steps, check_every = 60, 4
    ref = reference_md(si_tiny, cell64(), steps, seed=2, T=2000.0, committee=True)
    spread = np.array([np.std(r["energy_committee"]) for _, r in ref])
    threshold = float(np.quantile(spread, 0.5))
    first = next(k for k in range(0, steps + 1, check_every) if spread[k] > threshold)
    manager = JobManager(tmp_path)
    status, frames = run(manager, si_tiny, cell64(), md(steps, T=2000.0, seed=2, write_every=10,
                                                          check_every=check_every,
                                                          halt={"max_energy_std": threshold}))
    assert status["state"] == "halted"
    assert status["halt"]["condition"] == "max_energy_std" and status["halt"]["step"] == first == status["step"]
    # numpy's std and the evaluator's spread of the same K energies (~1e4 eV) differ by rounding only
    scale = np.abs(ref[first][1]["energy_committee"]).max()
    assert status["halt"]["value"] == pytest.approx(spread[first], abs=64 * np.finfo(float).eps * scale)
    assert "max_energy_std" in status["reason"] and f"step {first}" in status["reason"]
    assert frames[-1]["step"] == first and frames[-1]["energy_std"] > threshold
    manager.shutdown()


def _args(at):
    return at.numbers, at.positions, at.cell.array, at.pbc


@pytest.fixture(scope="module")
def small_with_active_set():
    return small_model_with_active_set()


def small_model_with_active_set():
    """A small Si model (L = 31) and an active set from rattled, strained diamond cells (as
    tests/test_descriptors.py builds it); fitted-looking parameters are not needed for γ."""
    model = aceserver.ace1_model(elements=["Si"], order=3, totaldegree=6, rcut=5.0, E0={"Si": -158.5})
    model.parameters = (np.random.default_rng(5).normal(size=model.length_basis)
                        / (1 + np.arange(model.length_basis)) ** 2 * 0.05)
    rng = np.random.default_rng(11)
    cells = []
    for k in range(12):
        a = bulk("Si", "diamond", a=5.43 * (1 + 0.04 * rng.uniform(-1, 1)), cubic=True).repeat((1, 1, 2))
        a.positions += (0.05 + 0.05 * (k % 4)) * rng.standard_normal(a.positions.shape)
        cells.append(a)
    s = maxvol([model.descriptors(*_args(a)) for a in cells], tol=1e-9)
    model.attach_active_set({"Si": s.inverse}, model_sha256=model.sha256)
    return model, s.inverse


def test_halt_on_max_gamma_at_first_check(small_with_active_set, tmp_path):
    """A compressed, hot cell: γ of every frame recomputed with numpy (max_k |D A⁻¹| over atoms) from
    the job's own positions; the job halts at the first check step where it exceeds the threshold."""
    model, A_inv = small_with_active_set
    atoms = bulk("Si", "diamond", a=5.43 * 0.93, cubic=True)
    manager = JobManager(tmp_path)
    steps, check_every = 40, 3
    # first pass, no halt: every step written, γ recorded, to choose a threshold crossed mid-run
    status, frames = run(manager, model, atoms, md(steps, T=3000.0, record=["gamma"]))
    gamma = []
    for f in frames:
        D = model.descriptors(f["numbers"], f["positions"], f["cell"], f["pbc"])
        g = np.abs(D @ A_inv).max(axis=1)
        # the job's rows come from the site pass, these from `descriptors`; each product D A⁻¹ rounds
        # by at most L·ε·max_k Σ_j |D_j||A⁻¹_jk| (A is ill-conditioned: cancellation), so twice that
        # bounds the difference (4× for the summation order, as tests/test_descriptors.py)
        bound = 2 * 4 * D.shape[1] * np.finfo(float).eps * (np.abs(D) @ np.abs(A_inv)).max(axis=1)
        assert (np.abs(f["gamma"] - g) <= bound).all(), (np.abs(f["gamma"] - g) / bound).max()
        gamma.append(g.max())
    gamma = np.array(gamma)
    threshold = float((gamma[0] + gamma.max()) / 2)
    first = next(k for k in range(0, steps + 1, check_every) if gamma[k] > threshold)
    assert first > 0
    status, halted = run(manager, model, atoms, md(steps, T=3000.0, write_every=100, check_every=check_every,
                                                  halt={"max_gamma": threshold}))
    assert status["state"] == "halted" and status["step"] == first
    # the halted run evaluates the same positions as the recording run: the same γ, bit for bit
    assert status["halt"] == {"condition": "max_gamma", "value": frames[first]["max_gamma"],
                              "threshold": threshold, "step": first}
    assert [f["step"] for f in halted] == [0, first]
    manager.shutdown()


def test_refusals_name_the_field(si_tiny, small_with_active_set, tmp_path):
    manager = JobManager(tmp_path, limits=JobLimits(max_atom_steps=64 * 1000, max_frame_atoms=64 * 100))
    plain = aceserver.ace1_model(elements=["Si"], order=2, totaldegree=4, rcut=5.0)
    cases = [
        (plain, cell64(), md(10, halt={"max_energy_std": 0.1}), JobInputError, "halt.max_energy_std"),
        # a model without an active set (the shipped Si-tiny carries one)
        (plain, cell64(), md(10, halt={"max_gamma": 2.0}), JobInputError, "halt.max_gamma"),
        (plain, cell64(), md(10, record=["gamma"]), JobInputError, "record"),
        (si_tiny, bulk("Cu", cubic=True), md(10), JobInputError, "structure.numbers[0]"),
        (si_tiny, cell64(), md(1001), JobTooLarge, "parameters.steps"),
        (si_tiny, cell64(), md(500, write_every=1), JobTooLarge, "write_every"),
    ]
    cluster = cell64()
    cluster.pbc = False
    cases.append((si_tiny, cluster, MDJob.model_validate({"kind": "md", "parameters": {"steps": 10, "ensemble": "npt"}}),
                  JobInputError, "parameters.ensemble"))
    cases.append((si_tiny, cluster, RelaxJob.model_validate({"kind": "relax", "parameters": {"cell_filter": True}}),
                  JobInputError, "parameters.cell_filter"))
    for model, atoms, spec, error, field in cases:
        with pytest.raises(error) as info:
            manager.submit(model, "m", "x", atoms, spec)
        assert info.value.field == field
    assert manager.list() == []           # nothing was queued
    manager.shutdown()


def test_cancel_stops_between_steps(si_tiny, tmp_path):
    manager = JobManager(tmp_path)
    job = manager.submit(si_tiny, "m", si_tiny.sha256, cell64(), md(100_000, write_every=10))
    deadline = time.monotonic() + 120
    while manager.status(job)["frames"] < 3 and time.monotonic() < deadline:
        time.sleep(0.05)
    status = manager.cancel(job)
    status = manager.wait(job, timeout=60)
    assert status["state"] == "cancelled" and 20 <= status["step"] < 100_000
    frames = [F.decode(b) for b in manager.store.frames(job)]
    assert frames[-1]["step"] == status["step"] and len(frames) == status["frames"]   # the last step is written
    # a queued job behind a running one is cancelled at once and never runs
    first = manager.submit(si_tiny, "m", si_tiny.sha256, cell64(), md(100_000, write_every=1000))
    queued = manager.submit(si_tiny, "m", si_tiny.sha256, cell64(), md(10))
    assert manager.cancel(queued)["state"] == "cancelled"
    manager.cancel(first)
    assert manager.wait(first, timeout=60)["state"] == "cancelled"
    assert manager.status(queued)["frames"] == 0 and manager.status(queued)["started"] is None
    manager.shutdown()


def test_restart_marks_running_interrupted_keeps_frames_and_expires(tmp_path):
    store = JobStore(tmp_path)
    store.create("a", "md", "m", "x", {"kind": "md"}, 2, 10)
    store.start("a")
    blobs = [F.encode({"index": i, "step": i, "positions": np.full((2, 3), float(i))}) for i in range(3)]
    for i, b in enumerate(blobs):
        store.add_frame("a", i, i, b)
    store.create("b", "md", "m", "x", {"kind": "md"}, 2, 10)      # queued
    store.create("c", "md", "m", "x", {"kind": "md"}, 2, 10)
    store.finish("c", "done", 10)
    # no close: as after SIGKILL, the next server opens the same directory
    manager = JobManager(tmp_path, ttl_hours=1.0)
    assert manager.interrupted_at_start == 2
    a = manager.status("a")
    assert a["state"] == "interrupted" and a["frames"] == 3 and "running" in a["reason"]
    assert manager.status("b")["state"] == "interrupted" and manager.status("c")["state"] == "done"
    assert list(manager.store.frames("a")) == blobs
    np.testing.assert_array_equal(F.decode(blobs[2])["positions"], np.full((2, 3), 2.0))
    # expiry: finished more than ttl ago -> deleted with the frames; younger ones stay
    assert manager.store.expire(3600.0) == 0
    assert manager.store.expire(-1.0) == 3
    assert manager.status("a") is None and list(manager.store.frames("a")) == []
    manager.shutdown()


def test_shutdown_interrupts_running_jobs(si_tiny, tmp_path):
    manager = JobManager(tmp_path)
    job = manager.submit(si_tiny, "m", si_tiny.sha256, cell64(), md(100_000, write_every=50))
    while manager.status(job)["state"] == "queued":
        time.sleep(0.01)
    manager.shutdown(wait=True)
    again = JobManager(tmp_path)
    status = again.status(job)
    assert status["state"] == "interrupted" and status["step"] < 100_000
    assert again.interrupted_at_start == 0          # the first manager marked it on its way out
    again.shutdown()


def test_failed_job_carries_an_error_document(si_tiny, tmp_path):
    """Two atoms on top of each other: the first evaluation refuses them; the job fails with an
    `invalid_input` document naming the positions."""
    atoms = cell64()
    atoms.positions[1] = atoms.positions[0]
    manager = JobManager(tmp_path)
    status, frames = run(manager, si_tiny, atoms, md(10))
    assert status["state"] == "failed" and frames == []
    assert status["error"]["kind"] == "invalid_input" and status["error"]["field"] == "structure.positions"
    manager.shutdown()


def test_nvt_npt_and_cell_relaxation_follow_ase(si_tiny, tmp_path):
    """Langevin (noise from default_rng([seed, 1])), IsotropicMTKNPT and a FIRE relaxation under
    FrechetCellFilter at 1 GPa, built here from ASE as the spec documents them: same positions and
    cells (the same operations on the same numbers, so 1e-8 Å holds with room)."""
    from ase.filters import FrechetCellFilter
    from ase.md.langevin import Langevin
    from ase.md.nose_hoover_chain import IsotropicMTKNPT
    from ase.optimize import FIRE

    manager = JobManager(tmp_path)
    start = cell64(a=5.46)
    start.positions += np.random.default_rng(8).normal(scale=0.02, size=start.positions.shape)

    def thermal(a, seed=3, T=500.0):
        a.calc = ACECalculator(si_tiny)
        thermalize_momenta(a, T, rng=np.random.default_rng(seed))
        Stationary(a)
        return a

    nvt = thermal(start.copy())
    Langevin(nvt, timestep=2 * units.fs, temperature_K=500.0, friction=0.02 / units.fs, fixcm=False,
             rng=np.random.default_rng([3, 1])).run(30)
    npt = thermal(start.copy())
    IsotropicMTKNPT(npt, timestep=2 * units.fs, temperature_K=500.0, pressure_au=2.0 * units.GPa,
                    tdamp=100 * 2 * units.fs, pdamp=1000 * 2 * units.fs).run(30)
    relaxed = start.copy()
    relaxed.calc = ACECalculator(si_tiny)
    FIRE(FrechetCellFilter(relaxed, scalar_pressure=1.0 * units.GPa), logfile=None).run(fmax=0.01, steps=300)
    common = {"steps": 30, "seed": 3, "temperature_K": 500.0, "timestep_fs": 2.0}
    cases = [
        (MDJob.model_validate({"kind": "md", "write_every": 30, "parameters": {
            **common, "ensemble": "nvt", "friction_per_fs": 0.02}}), nvt),
        (MDJob.model_validate({"kind": "md", "write_every": 30, "parameters": {
            **common, "ensemble": "npt", "pressure_GPa": 2.0}}), npt),
        (RelaxJob.model_validate({"kind": "relax", "write_every": 1000, "parameters": {
            "optimizer": "FIRE", "fmax": 0.01, "max_steps": 300, "cell_filter": True, "pressure_GPa": 1.0}}), relaxed),
    ]
    for spec, ref in cases:
        status, frames = run(manager, si_tiny, start, spec)
        assert status["state"] == "done", status
        np.testing.assert_allclose(frames[-1]["positions"], ref.positions, rtol=0, atol=1e-8)
        np.testing.assert_allclose(frames[-1]["cell"], ref.cell.array, rtol=0, atol=1e-8)
    assert not np.allclose(npt.cell.array, start.cell.array)        # the barostat did move the cell
    assert status["converged"] is True
    manager.shutdown()
