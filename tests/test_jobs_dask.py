"""Jobs on a dask.distributed cluster (`JobManager(client=...)`, `jobs/cluster.py`): the frames a
worker makes (streamed back through the scheduler) are bit for bit those of the same job run in
the server's own threads, and cancel reaches the worker; the same for a relax_many job (one task:
its frames and per-structure outcomes, structures failed before and during the run by index). A
local cluster of thread workers in this process stands for the machines (one process, so the same
compiled kernels: bit for bit is the right test)."""
from __future__ import annotations

import time
from pathlib import Path

import pytest
from ase.build import bulk

from aceserver.jobs import JobInputError, JobManager, MDJob, RelaxManyJob
from aceserver.jobs import frames as F
from aceserver.loading import load_model

pytest.importorskip("distributed")
pytestmark = pytest.mark.timeout(600)
SI_TINY = str(Path(__file__).resolve().parents[1] / "models" / "Si-tiny" / "Si-tiny.json")


@pytest.fixture(scope="module")
def client():
    from distributed import Client, LocalCluster

    with LocalCluster(n_workers=1, threads_per_worker=2, processes=False, dashboard_address=None) as lc, \
            Client(lc) as c:
        yield c


def cancel_after(manager, job, frames):
    """Cancel `job` once `frames` of its frames are stored; its status when it has stopped."""
    deadline = time.monotonic() + 120
    while manager.status(job)["frames"] < frames and time.monotonic() < deadline:
        time.sleep(0.05)
    manager.cancel(job)
    return manager.wait(job, 120)


def test_cluster_frames_equal_local_frames_and_cancel(client, tmp_path):
    model = load_model(SI_TINY)
    atoms = bulk("Si", "diamond", a=5.43, cubic=True).repeat(2)
    spec = MDJob.model_validate({"kind": "md", "write_every": 10, "check_every": 5, "parameters": {
        "steps": 60, "seed": 9, "temperature_K": 900.0}, "halt": {"max_energy_std": 1e3}})
    local, remote = JobManager(tmp_path / "local"), JobManager(tmp_path / "remote", max_jobs=2, client=client)
    a = local.submit(model, "Si-tiny", model.sha256, atoms, spec)
    b = remote.submit(model, "Si-tiny", model.sha256, atoms, spec, source=SI_TINY)
    sa, sb = local.wait(a, 300), remote.wait(b, 300)
    assert sa["state"] == sb["state"] == "done" and sa["frames"] == sb["frames"] == 7
    assert list(local.store.frames(a)) == list(remote.store.frames(b))     # the msgpack bytes, bit for bit
    # cancel: the worker stops between steps once it sees the distributed event
    job = remote.submit(model, "Si-tiny", model.sha256, atoms, MDJob.model_validate(
        {"kind": "md", "write_every": 50, "parameters": {"steps": 200_000}}), source=SI_TINY)
    status = cancel_after(remote, job, 2)
    assert status["state"] == "cancelled" and status["step"] < 200_000
    assert status["frames"] == len(list(remote.store.frames(job)))
    # a model without a file cannot go to the workers; a worker error becomes the job's error document
    with pytest.raises(JobInputError) as info:
        remote.submit(model, "Si-tiny", model.sha256, atoms, spec)
    assert info.value.field == "model"
    broken = atoms.copy()
    broken.positions[1] = broken.positions[0]
    failed = remote.wait(remote.submit(model, "Si-tiny", model.sha256, broken, spec, source=SI_TINY), 120)
    assert failed["state"] == "failed" and failed["error"]["field"] == "structure.positions"
    local.shutdown()
    remote.shutdown()


def relax_many_structures():
    """Rattled 2-, 8- and 4-atom Si cells, one with an element Si-tiny lacks (refused before the
    run) and one with two atoms on one site (refused by the evaluator at step 0)."""
    import numpy as np

    prim, cubic = bulk("Si", "diamond", a=5.43), bulk("Si", "diamond", a=5.43, cubic=True)
    out = []
    for k, a in enumerate((prim, cubic, prim * (2, 1, 1), cubic, prim)):
        a = a.copy()
        a.positions += np.random.default_rng(k).normal(scale=0.06, size=a.positions.shape)
        out.append(a)
    out[3].positions[1] = out[3].positions[0]
    out[4].numbers[0] = 8
    return out


def test_relax_many_runs_on_the_cluster(client, tmp_path):
    model = load_model(SI_TINY)
    structures = relax_many_structures()
    spec = RelaxManyJob.model_validate({"kind": "relax_many", "write_every": 4, "parameters": {
        "optimizer": "BFGS", "fmax": 0.05, "max_steps": 60, "cell_filter": True}})
    local, remote = JobManager(tmp_path / "local"), JobManager(tmp_path / "remote", client=client)
    a = local.submit_many(model, "Si-tiny", model.sha256, structures, spec)
    b = remote.submit_many(model, "Si-tiny", model.sha256, structures, spec, source=SI_TINY)
    sa, sb = local.wait(a, 300), remote.wait(b, 300)
    assert sa["state"] == sb["state"] == "done" and sa["frames"] == sb["frames"] > len(structures)
    assert sb["structures"] == sa["structures"]
    assert [s["state"] for s in sb["structures"]][3:] == ["failed", "failed"]
    assert sb["structures"][3]["error"]["field"] == "structures[3].positions"
    assert sb["structures"][4]["error"]["field"] == "structures[4].numbers[0]"
    assert {s["state"] for s in sb["structures"][:3]} <= {"converged", "not_converged"}
    assert list(local.store.frames(a)) == list(remote.store.frames(b))     # the msgpack bytes, bit for bit
    ran = client.run_on_scheduler(lambda dask_scheduler: [k for k in dask_scheduler.transition_log
                                                          if str(k[0]) == f"aceserver-job-{b}"])
    assert ran            # it went to the cluster as one task
    # cancel: the worker stops between steps (it looks every 0.5 s, hundreds of steps of these cells,
    # so fmax 1e-300: a force no optimiser reaches short of exactly zero); every structure still
    # running ends cancelled with a frame at the job's last step
    long = RelaxManyJob.model_validate({"kind": "relax_many", "write_every": 1000, "parameters": {
        "optimizer": "FIRE", "fmax": 1e-300, "max_steps": 100_000}})
    job = remote.submit_many(model, "Si-tiny", model.sha256, structures[:3], long, source=SI_TINY)
    status = cancel_after(remote, job, 3)
    assert status["state"] == "cancelled" and status["step"] < 100_000
    frames = [F.decode(x) for x in remote.store.frames(job)]
    assert status["frames"] == len(frames)
    states = [s["state"] for s in status["structures"]]
    assert set(states) <= {"converged", "cancelled"} and "cancelled" in states, states
    for s in status["structures"]:
        assert frames[s["frame"]]["step"] == s["steps"] and frames[s["frame"]]["structure"] == s["index"]
        assert s["steps"] == status["step"] if s["state"] == "cancelled" else s["steps"] < status["step"]
    # a model without a file cannot go to the workers
    with pytest.raises(JobInputError) as info:
        remote.submit_many(model, "Si-tiny", model.sha256, structures, spec)
    assert info.value.field == "model"
    local.shutdown()
    remote.shutdown()


def test_server_with_scheduler_runs_jobs_on_the_cluster(tmp_path):
    """`aceserver serve --scheduler ADDRESS`: the job runs on a worker of that scheduler (here thread
    workers of this test process) and its frames stream back as from a local job."""
    import json

    import httpx
    from distributed import Client, LocalCluster

    from _http_support import Server, structure_json, wait_job

    atoms = bulk("Si", "diamond", a=5.43, cubic=True).repeat(2)
    body = {"kind": "md", "write_every": 10, "parameters": {"steps": 50, "seed": 9},
            "structure": {"numbers": atoms.numbers.tolist(), "positions": atoms.positions.tolist(),
                          "cell": atoms.cell.array.tolist(), "pbc": True}}
    # thread workers in this process, behind a TCP scheduler the server process can reach
    with LocalCluster(n_workers=1, threads_per_worker=1, processes=False, protocol="tcp", host="127.0.0.1",
                      scheduler_port=0, dashboard_address=":0") as lc, Client(lc) as c:
        with Server([SI_TINY, "--jobs-dir", str(tmp_path / "jobs"), "--scheduler", lc.scheduler_address]) as s:
            job = httpx.post(f"{s.url}/v1/jobs", json=body, timeout=30).json()["ids"][0]
            frames = [json.loads(x) for x in httpx.get(f"{s.url}/v1/jobs/{job}/frames", timeout=120).text.splitlines()]
            status = httpx.get(f"{s.url}/v1/jobs/{job}").json()
            assert status["state"] == "done" and [f["step"] for f in frames] == [0, 10, 20, 30, 40, 50]
            # relax_many too: one task on the cluster, its outcomes by index
            many = {"kind": "relax_many", "structures": [structure_json(a) for a in relax_many_structures()],
                    "parameters": {"optimizer": "FIRE", "fmax": 0.05, "max_steps": 60}, "write_every": 1000}
            r = httpx.post(f"{s.url}/v1/jobs", json=many, timeout=30)
            assert r.status_code == 202, r.text
            batch = wait_job(s.url, r.json()["ids"][0], 120)
            assert batch["state"] == "done" and len(batch["structures"]) == 5
            assert [o["state"] for o in batch["structures"]][3:] == ["failed", "failed"]
        ran = c.run_on_scheduler(lambda dask_scheduler: {str(k[0]) for k in dask_scheduler.transition_log
                                                         if str(k[0]).startswith("aceserver-job-")})
        assert ran == {f"aceserver-job-{job}", f"aceserver-job-{batch['id']}"}    # both went through this scheduler
    # the same job here: the same frames
    model = load_model(SI_TINY)
    local = JobManager(tmp_path / "local")
    spec = MDJob.model_validate({k: body[k] for k in ("kind", "write_every", "parameters")})
    here = local.wait(local.submit(model, "Si-tiny", model.sha256, atoms, spec), 120)
    assert here["frames"] == 6
    from aceserver.jobs import frames as F
    for f, blob in zip(frames, local.store.frames(here["id"])):
        assert f["positions"] == F.decode(blob)["positions"].tolist()
    local.shutdown()
