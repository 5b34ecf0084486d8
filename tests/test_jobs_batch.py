"""relax_many (`aceserver.jobs.batch_relax`) in process: relaxing N structures in one batched job
gives, for every structure, the trajectory and outcome of relaxing it alone with the single-structure
runner (`runner.run`, the existing relax job), for FIRE and BFGS, with and without the cell filter,
for mixed sizes, species and periodicities; halting one structure (max_force, max_gamma) leaves the
others as they were; a structure that cannot run is reported by index; cancel between steps; the
limits; the served calculator refuses positions it was not evaluated at.

Reference: `runner.run(..., skin=0)` on each structure alone, the existing job's ASE optimiser on an
`ACECalculator` with a fresh neighbour search per step. With the default Verlet skin the reused
search orders the neighbour pairs differently, which changes forces by ~1e-16 relative; with skin 0
the single evaluation and `evaluate_many` are the same sums in the same order (the batch path's
contract), so the comparison is bit for bit (`np.array_equal`, `==`): any difference is a bug, not
rounding. γ is the exception: `evaluate_many` makes it with other BLAS blockings (its documented
contract: rows bit for bit, γ within the rounding of the products), so recorded γ is compared to
10·cond(A⁻¹)·ε relative (the forward error bound of a product with A⁻¹, with margin: 2e-5 for
Si-tiny's cond 8.8e9; 2e-12 seen on this box), and the halting threshold is the geometric mean of
values at least 1.5× apart, far from either path's rounding.
"""
from __future__ import annotations

import threading
import time
from pathlib import Path

import numpy as np
import pytest
from ase import Atoms
from ase.build import bulk

from aceserver.jobs import JobInputError, JobLimits, JobManager, JobTooLarge, RelaxManyJob
from aceserver.jobs import batch_relax, runner
from aceserver.jobs import frames as F
from aceserver.jobs.limits import check_many
from aceserver.jobs.spec import RelaxJob
from aceserver.kernels.neighbours import neighbour_list
from aceserver.loading import load_model

ROOT = Path(__file__).resolve().parents[1]
# BLAS on one thread as `aceserver serve` runs jobs (conftest's server_blas_threads)
pytestmark = [pytest.mark.timeout(900), pytest.mark.usefixtures("server_blas_threads")]
ARRAYS = ("positions", "cell", "forces", "energies", "stress", "numbers", "pbc")
SCALARS = ("step", "energy", "max_force", "energy_std")


@pytest.fixture(scope="module")
def si():
    return load_model(str(ROOT / "models" / "Si-tiny" / "Si-tiny.json"))


@pytest.fixture(scope="module")
def tial():
    return load_model(str(ROOT / "models" / "TiAl-tutorial" / "TiAl-tutorial.json"))


class ListSink:
    def __init__(self, cancel_at=None, cancel=None):
        self.frames, self.steps = [], []
        self.cancel_at, self.cancel = cancel_at, cancel

    def frame(self, frame):
        self.frames.append(frame)

    def step(self, step):
        self.steps.append(step)
        if self.cancel_at is not None and step == self.cancel_at:
            self.cancel.set()


def rattled(atoms, scale, seed, strain=0.0):
    atoms = atoms.copy()
    rng = np.random.default_rng(seed)
    atoms.positions += rng.normal(scale=scale, size=atoms.positions.shape)
    if strain:
        atoms.set_cell(atoms.cell.array * (1 + strain), scale_atoms=True)
    return atoms


def si_structures(periodic_only=False):
    """Mixed sizes and periodicities: 2-, 8- and 16-atom diamond cells (one strained), a slab, a cluster."""
    prim = bulk("Si", "diamond", a=5.43)
    cubic = bulk("Si", "diamond", a=5.43, cubic=True)
    out = [rattled(prim, 0.05, 1, 0.02), rattled(cubic, 0.08, 2), rattled(prim * (2, 2, 2), 0.06, 3, -0.01),
           rattled(cubic, 0.04, 4, 0.03)]
    if not periodic_only:
        slab = rattled(cubic, 0.05, 5)
        slab.pbc = (True, True, False)
        slab.cell[2, 2] += 8.0
        cluster = rattled(cubic, 0.05, 6)
        cluster.pbc = False
        out[2:2] = [slab, cluster]
    return out


def tial_structures():
    """Two species, mixed sizes: L1_0-like TiAl cells, Al-rich fcc, a 3-D-periodic and a free cluster."""
    tial = bulk("Al", "fcc", a=4.0, cubic=True)
    tial.numbers[[0, 3]] = 22
    al3ti = bulk("Al", "fcc", a=4.05, cubic=True) * (2, 1, 1)
    al3ti.numbers[0] = 22
    cluster = rattled(tial, 0.05, 9)
    cluster.pbc = False
    return [rattled(tial, 0.05, 7, 0.01), rattled(al3ti, 0.05, 8), cluster, rattled(bulk("Al", "fcc", a=4.1), 0.0, 1)]


def spec_of(kind, optimizer, cell_filter=False, max_steps=60, **kw):
    params = {"optimizer": optimizer, "fmax": 0.05, "max_steps": max_steps, "cell_filter": cell_filter}
    cls = RelaxManyJob if kind == "relax_many" else RelaxJob
    return cls.model_validate({"kind": kind, "parameters": params, **kw})


def single(model, atoms, optimizer, cell_filter=False, max_steps=60, **kw):
    sink = ListSink()
    out = runner.run(model, atoms, spec_of("relax", optimizer, cell_filter, max_steps, **kw), sink, skin=0)
    return out, sink.frames


def assert_same_frames(got, ref, gamma_rtol=None):
    assert [f["step"] for f in got] == [f["step"] for f in ref]
    for g, r in zip(got, ref):
        for key in ARRAYS:
            if r[key] is None:
                assert g[key] is None
            else:
                assert np.array_equal(g[key], r[key]), (key, g["step"])
        for key in SCALARS:
            assert g[key] == r[key], (key, g["step"])
        if r["gamma"] is not None:
            np.testing.assert_allclose(g["gamma"], r["gamma"], rtol=gamma_rtol, atol=0)


def by_structure(frames, n):
    out = [[] for _ in range(n)]
    for f in frames:
        out[f["structure"]].append(f)
    return out


def gamma_rtol(model):
    """10·cond(A⁻¹)·ε over the model's active-set inverses (see the module docstring)."""
    inverses = model.active_set.inverses.values()
    return 10 * max(np.linalg.cond(a) for a in inverses) * np.finfo(float).eps


def check_against_single(model, structures, optimizer, cell_filter, max_steps=60, failed=None, **kw):
    spec = spec_of("relax_many", optimizer, cell_filter, max_steps, **kw)
    sink = ListSink()
    out = batch_relax.run(model, structures, spec, sink, failed=failed, threads=1)
    assert [f["index"] for f in sink.frames] == list(range(len(sink.frames)))     # one stream, in order
    per = by_structure(sink.frames, len(structures))
    for k, atoms in enumerate(structures):
        s = out.structures[k]
        assert s["index"] == k
        if failed and k in failed:
            assert s["state"] == "failed" and per[k] == []
            continue
        ref_out, ref_frames = single(model, atoms, optimizer, cell_filter, max_steps, **kw)
        assert_same_frames(per[k], ref_frames, gamma_rtol=gamma_rtol(model))
        assert s["steps"] == ref_out.step
        if ref_out.state == "halted":
            assert s["state"] == "halted"
            got, want = dict(s["halt"]), dict(ref_out.halt)
            if want["condition"] == "max_gamma":       # γ: equal to its rounding (module docstring)
                assert got.pop("value") == pytest.approx(want.pop("value"), rel=gamma_rtol(model), abs=0)
            else:
                assert s["reason"] == ref_out.reason
            assert got == want
        else:
            assert s["state"] == ("converged" if ref_out.converged else "not_converged")
        assert s["frame"] == per[k][-1]["index"] and s["energy"] == per[k][-1]["energy"]
    return out, per


@pytest.mark.parametrize("optimizer", ["FIRE", "BFGS", "LBFGS"])
def test_batch_equals_single_jobs_si(si, optimizer):
    out, per = check_against_single(si, si_structures(), optimizer, False)
    assert out.state == "done"
    states = {s["state"] for s in out.structures}
    assert "converged" in states                    # the comparison covers converged runs
    assert sum(len(p) > 5 for p in per) >= len(per) // 2    # ... over many steps


@pytest.mark.parametrize("optimizer", ["FIRE", "BFGS"])
def test_batch_equals_single_jobs_with_cell_filter(si, optimizer):
    structures = si_structures(periodic_only=True)
    out, per = check_against_single(si, structures, optimizer, True)
    # the cell moved (a strained cell relaxes) and every frame carries the stress
    assert not np.array_equal(per[3][-1]["cell"], structures[3].cell.array)
    assert all(f["stress"] is not None for p in per for f in p)


@pytest.mark.parametrize("optimizer, cell_filter", [("FIRE", False), ("BFGS", True)])
def test_batch_equals_single_jobs_two_species(tial, optimizer, cell_filter):
    structures = tial_structures()
    spec = spec_of("relax_many", optimizer, cell_filter)
    failed = check_many(tial, structures, spec, JobLimits())
    assert (2 in failed) == cell_filter             # the free cluster cannot have its cell relaxed
    if cell_filter:
        assert failed[2]["field"] == "structures[2].cell"
    check_against_single(tial, structures, optimizer, cell_filter, failed=failed)


def test_halting_one_structure_leaves_the_others_identical(si):
    structures = si_structures()
    # one strongly rattled cell: its largest force at step 0 is far above the others' at any step
    structures.append(rattled(bulk("Si", "diamond", a=5.43, cubic=True), 0.35, 11))
    forces = [single(si, a, "FIRE")[1] for a in structures[:-1]]
    others = max(f["max_force"] for fr in forces for f in fr)
    first = si.evaluate(structures[-1].numbers, structures[-1].positions, structures[-1].cell.array,
                        structures[-1].pbc).forces
    hot = float(np.sqrt((first ** 2).sum(axis=1).max()))
    assert hot > 1.5 * others
    threshold = float(np.sqrt(hot * others))
    out, per = check_against_single(si, structures, "FIRE", False, halt={"max_force": threshold})
    assert out.structures[-1]["state"] == "halted" and out.structures[-1]["steps"] == 0
    assert out.structures[-1]["halt"]["value"] == hot
    assert all(s["state"] != "halted" for s in out.structures[:-1])


def test_halt_on_max_gamma_per_structure(si):
    structures = si_structures(periodic_only=True)[:2]
    squeezed = rattled(bulk("Si", "diamond", a=5.43, cubic=True), 0.02, 12, -0.12)
    structures.append(squeezed)
    # γ of the others along their own (single) relaxations, γ recorded at every step, numpy-independent
    # of the batch: their largest against the squeezed cell's γ at step 0
    others = max(f["max_gamma"] for a in structures[:2] for f in single(si, a, "BFGS", record=["gamma"])[1])
    hot = si.evaluate(squeezed.numbers, squeezed.positions, squeezed.cell.array, squeezed.pbc, gamma=True).max_gamma
    assert hot > 1.5 * others
    threshold = float(np.sqrt(hot * others))
    out, per = check_against_single(si, structures, "BFGS", False, halt={"max_gamma": threshold}, check_every=2)
    assert out.structures[2]["state"] == "halted" and out.structures[2]["halt"]["condition"] == "max_gamma"
    assert out.structures[2]["steps"] == 0
    assert [s["state"] for s in out.structures[:2]] != ["halted", "halted"]
    # γ only on the checked steps (check_every 2), none recorded in between
    assert all((f["gamma"] is not None) == (f["step"] % 2 == 0) for p in per[:2] for f in p)


def test_bad_structures_are_reported_by_index(si):
    good = si_structures(periodic_only=True)[:2]
    oxygen = good[0].copy()
    oxygen.numbers[1] = 8
    on_top = good[1].copy()
    on_top.positions[1] = on_top.positions[0]
    structures = [good[0], oxygen, on_top, good[1], Atoms()]
    spec = spec_of("relax_many", "FIRE", False)
    failed = check_many(si, structures, spec, JobLimits())
    assert sorted(failed) == [1, 4]
    assert failed[1]["field"] == "structures[1].numbers[1]" and "element O" in failed[1]["message"]
    assert failed[4]["field"] == "structures[4].numbers"
    sink = ListSink()
    out = batch_relax.run(si, structures, spec, sink, failed=failed, threads=1)
    s = out.structures
    assert [x["state"] for x in s][1:3] == ["failed", "failed"] and s[4]["state"] == "failed"
    assert s[2]["error"]["field"] == "structures[2].positions" and "on top of each other" in s[2]["error"]["message"]
    assert s[2]["steps"] == 0 and s[2]["frame"] is None
    assert s[1]["error"] == failed[1]
    per = by_structure(sink.frames, len(structures))
    for k in (0, 3):
        assert_same_frames(per[k], single(si, structures[k], "FIRE")[1])
    with pytest.raises(JobInputError, match=r"structures\[0\]\.numbers\[1\]"):
        check_many(si, [oxygen], spec, JobLimits())


def test_cancel_between_steps(si):
    structures = si_structures()
    cancel = threading.Event()
    sink = ListSink(cancel_at=3, cancel=cancel)
    spec = spec_of("relax_many", "FIRE", False, write_every=100)
    out = batch_relax.run(si, structures, spec, sink, cancel=cancel, threads=1)
    assert out.state == "cancelled" and out.step == 4 and sink.steps == [0, 1, 2, 3, 4]
    per = by_structure(sink.frames, len(structures))
    for k, atoms in enumerate(structures):
        assert out.structures[k]["state"] == "cancelled" and out.structures[k]["steps"] == 4
        assert [f["step"] for f in per[k]] == [0, 4]        # the first and the step it stopped at
        ref = single(si, atoms, "FIRE", write_every=1)[1]
        assert_same_frames(per[k], [ref[0], ref[4]])


def stopped_running(status, frames):
    """Every structure still running when the job stopped ends cancelled at its last step, with a
    final frame there; one that reached even fmax 1e-9 before the stop landed (the 2-atom cell can,
    on a slow machine) keeps `converged` from an earlier step."""
    states = [s["state"] for s in status["structures"]]
    assert set(states) <= {"converged", "cancelled"} and "cancelled" in states, states
    for s in status["structures"]:
        assert frames[s["frame"]]["step"] == s["steps"]
        assert s["steps"] == status["step"] if s["state"] == "cancelled" else s["steps"] < status["step"]


def test_manager_runs_stores_and_cancels(si, tmp_path):
    manager = JobManager(tmp_path)
    structures = si_structures(periodic_only=True)
    spec = spec_of("relax_many", "BFGS", True, write_every=5)
    job = manager.submit_many(si, "m", si.sha256, structures, spec)
    status = manager.wait(job, timeout=600)
    assert status["state"] == "done" and status["kind"] == "relax_many"
    assert status["n_atoms"] == sum(map(len, structures)) and len(status["structures"]) == len(structures)
    frames = [F.decode(b) for b in manager.store.frames(job)]
    assert status["frames"] == len(frames)
    for k, s in enumerate(status["structures"]):
        final = frames[s["frame"]]
        assert final["structure"] == k and final["step"] == s["steps"]
        ref_out, ref = single(si, structures[k], "BFGS", True)
        assert np.array_equal(final["positions"], ref[-1]["positions"])
        assert np.array_equal(final["cell"], ref[-1]["cell"])
        assert np.array_equal(final["stress"], ref[-1]["stress"])
        assert s["state"] == ("converged" if ref_out.converged else "not_converged")
    assert manager.list()[0]["structures"] is None          # lists leave the per-structure outcomes out
    # a long one, cancelled while it runs: it stops between steps, every structure with a final frame
    long = spec_of("relax_many", "FIRE", False, max_steps=100_000, write_every=1000)
    long.parameters.fmax = 1e-9
    job = manager.submit_many(si, "m", si.sha256, si_structures(), long)
    while manager.status(job)["step"] < 3:
        assert manager.status(job)["state"] in ("queued", "running")
        time.sleep(0.01)
    status = manager.cancel(job)
    status = manager.wait(job, timeout=120)
    assert status["state"] == "cancelled"
    frames = [F.decode(b) for b in manager.store.frames(job)]
    stopped_running(status, frames)
    # a server that stops while one runs: every structure ends cancelled, the job interrupted
    job2 = manager.submit_many(si, "m", si.sha256, si_structures(), long)
    while manager.status(job2)["step"] < 2:
        time.sleep(0.01)
    manager.shutdown()
    # the outcomes survive a restart (durable, the store's JSON column)
    again = JobManager(tmp_path)
    assert again.status(job)["structures"] == status["structures"]
    stopped = again.status(job2)
    assert stopped["state"] == "interrupted"
    stopped_running(stopped, [F.decode(b) for b in again.store.frames(job2)])
    again.shutdown()


def test_limits_name_the_field(si):
    structures = si_structures()
    spec = spec_of("relax_many", "FIRE", False, max_steps=1000)
    atoms = sum(map(len, structures))
    with pytest.raises(JobTooLarge, match="at most 3") as ex:
        check_many(si, structures, spec, JobLimits(max_batch_structures=3))
    assert ex.value.field == "structures"
    with pytest.raises(JobTooLarge) as ex:
        check_many(si, structures, spec, JobLimits(max_batch_atoms=atoms - 1))
    assert ex.value.field == "structures"
    with pytest.raises(JobTooLarge) as ex:
        check_many(si, structures, spec, JobLimits(max_atom_steps=atoms * 1000 - 1))
    assert ex.value.field == "parameters.max_steps"
    with pytest.raises(JobTooLarge) as ex:
        check_many(si, structures, spec, JobLimits(max_frame_atoms=atoms * 1000))
    assert ex.value.field == "write_every"
    # BFGS's Hessians: (3N + 9)² float64 per structure with the cell filter, summed
    hessians = 8 * sum((3 * len(a) + 9) ** 2 for a in structures)
    bfgs = spec_of("relax_many", "BFGS", True)
    check_many(si, structures, bfgs, JobLimits(max_hessian_bytes=hessians))
    with pytest.raises(JobTooLarge, match=r"structures\[4\]") as ex:       # the 16-atom cell is the largest
        check_many(si, structures, bfgs, JobLimits(max_hessian_bytes=hessians - 1))
    assert ex.value.field == "parameters.optimizer"
    check_many(si, structures, spec_of("relax_many", "LBFGS", True), JobLimits(max_hessian_bytes=hessians - 1))
    cu = load_model(str(ROOT / "tests" / "data" / "Cu-PBE-core-rep.yace"))     # no committee, no active set
    copper = [bulk("Cu", "fcc", a=3.6)]
    for halt, field in (({"max_energy_std": 1.0}, "halt.max_energy_std"), ({"max_gamma": 5.0}, "halt.max_gamma")):
        with pytest.raises(JobInputError) as ex:
            check_many(cu, copper, spec_of("relax_many", "FIRE", halt=halt), JobLimits())
        assert ex.value.field == field
    # the pair budget of one step: a structure past it fails by index, the one before it runs
    dense = bulk("Si", "diamond", a=5.43, cubic=True) * (2, 2, 2)
    small, big = (len(neighbour_list(a.positions, a.cell.array, a.pbc, si.rcut)[2]) for a in (structures[0], dense))
    assert 10 * small < big
    sink = ListSink()
    out = batch_relax.run(si, [structures[0], dense], spec_of("relax_many", "FIRE", max_steps=2), sink,
                          threads=1, max_pairs=big - 1)
    assert out.structures[0]["state"] != "failed"
    assert out.structures[1]["state"] == "failed" and out.structures[1]["error"]["kind"] == "too_large"
    assert out.structures[1]["error"]["field"] == "structures[1]" and out.structures[1]["steps"] == 0


def test_served_calculator_refuses_other_positions(si):
    atoms = si_structures()[0]
    calc = batch_relax.Served()
    a = atoms.copy()
    a.calc = calc
    with pytest.raises(batch_relax.NotEvaluatedHere):
        a.get_forces()                                      # nothing served yet
    ev = si.evaluate_many([a])[0]
    calc.serve(a, {"energy": ev.energy, "forces": ev.forces, "energies": ev.energies, "free_energy": ev.energy})
    assert np.array_equal(a.get_forces(), ev.forces)
    a.positions[0, 0] += 1e-12
    with pytest.raises(batch_relax.NotEvaluatedHere):
        a.get_forces()


def test_a_store_made_before_relax_many_gains_the_column(tmp_path):
    """A jobs.sqlite of the earlier schema (no `structures` column) opens, keeps its jobs, and takes
    relax_many outcomes."""
    import sqlite3

    from aceserver.jobs.store import JobStore

    old = sqlite3.connect(tmp_path / "jobs.sqlite")
    old.executescript("""
CREATE TABLE jobs (
    id TEXT PRIMARY KEY, kind TEXT NOT NULL, model TEXT NOT NULL, model_sha256 TEXT NOT NULL,
    state TEXT NOT NULL, reason TEXT, halt TEXT, error TEXT, converged INTEGER,
    spec TEXT NOT NULL, n_atoms INTEGER NOT NULL, steps INTEGER NOT NULL,
    step INTEGER NOT NULL DEFAULT 0, frames INTEGER NOT NULL DEFAULT 0,
    created REAL NOT NULL, started REAL, finished REAL);
INSERT INTO jobs (id, kind, model, model_sha256, state, spec, n_atoms, steps, created, finished)
    VALUES ('00000000000000aa', 'relax', 'm', 'x', 'done', '{}', 8, 10, 1.0, 2.0);
""")
    old.commit()
    old.close()
    store = JobStore(tmp_path)
    assert store.get("00000000000000aa")["structures"] is None
    store.create("00000000000000bb", "relax_many", "m", "x", {}, 10, 5)
    assert store.start("00000000000000bb")
    outcome = [{"index": 0, "state": "converged", "steps": 3}]
    assert store.finish("00000000000000bb", "done", 3, structures=outcome)
    assert store.get("00000000000000bb")["structures"] == outcome
    store.close()


def test_store_keeps_outcomes_with_frames_and_folds_them(tmp_path):
    """Outcomes stored with frames (one transaction) are folded into `structures` at the job's end:
    by `finish` without structures (the running ones take the job's state and error: a job that
    failed as a whole) and by `mark_interrupted` on a new store (a server that died: interrupted,
    with the reason single jobs get); a later report of a structure replaces its earlier one."""
    from aceserver.jobs.store import STOPPED, JobStore

    def summary(k, state, steps, frame):
        return {"index": k, "state": state, "steps": steps, "reason": None, "halt": None, "error": None,
                "frame": frame, "energy": -1.5 * k if frame is not None else None, "max_force": None}

    store = JobStore(tmp_path)
    for job in ("a" * 16, "b" * 16):
        store.create(job, "relax_many", "m", "x", {}, 10, 5)
        assert store.start(job)
        store.add_frames(job, [], [summary(0, None, 0, None), summary(1, None, 0, None), summary(2, None, 0, None)])
        store.add_frames(job, [(0, 0, b"f0"), (1, 0, b"f1")], [summary(0, "converged", 0, 0), summary(1, None, 0, 1)])
        store.add_frames(job, [(2, 4, b"f2")], [summary(1, None, 4, 2)])
    error = {"kind": "internal", "message": "internal error (RuntimeError); see the server log", "field": None}
    assert store.finish("a" * 16, "failed", 4, error=error)
    got = store.get("a" * 16)
    assert got["frames"] == 3 and [s["state"] for s in got["structures"]] == ["converged", "failed", "failed"]
    assert got["structures"][1] == {**summary(1, "failed", 4, 2), "error": error}
    assert got["structures"][2] == {**summary(2, "failed", 0, None), "error": error}
    store.close()
    again = JobStore(tmp_path)               # "b" was left running, as by a killed server
    assert again.mark_interrupted() == 1
    got = again.get("b" * 16)
    assert got["state"] == "interrupted" and got["reason"] == STOPPED
    assert got["structures"] == [summary(0, "converged", 0, 0), {**summary(1, "interrupted", 4, 2), "reason": STOPPED},
                                 {**summary(2, "interrupted", 0, None), "reason": STOPPED}]
    assert again.get("a" * 16)["structures"][0]["state"] == "converged"      # a finished job is left as it was
    assert again._db.execute("SELECT COUNT(*) FROM outcomes").fetchone()[0] == 0
    again.close()
