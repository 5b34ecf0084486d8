"""Jobs on a dask.distributed cluster (`JobManager(client=...)`, `jobs/cluster.py`): the frames a
worker makes (streamed back through the scheduler) are bit for bit those of the same job run in
the server's own threads, and cancel reaches the worker. A local cluster of thread workers in this
process stands for the machines."""
from __future__ import annotations

import time
from pathlib import Path

import pytest
from ase.build import bulk

from aceserver.jobs import JobInputError, JobManager, MDJob
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
    deadline = time.monotonic() + 120
    while remote.status(job)["frames"] < 2 and time.monotonic() < deadline:
        time.sleep(0.05)
    remote.cancel(job)
    status = remote.wait(job, 120)
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


def test_server_with_scheduler_runs_jobs_on_the_cluster(tmp_path):
    """`aceserver serve --scheduler ADDRESS`: the job runs on a worker of that scheduler (here thread
    workers of this test process) and its frames stream back as from a local job."""
    import json

    import httpx
    from distributed import Client, LocalCluster

    from _http_support import Server

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
        ran = c.run_on_scheduler(lambda dask_scheduler: [k for k in dask_scheduler.transition_log
                                                         if str(k[0]).startswith("aceserver-job-")])
        assert ran            # the task went through this cluster's scheduler
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
