"""The jobs API over HTTP, against a real `aceserver serve --jobs-dir` process: a job's frames equal
an in-process ASE run with the same seed; every frame format (NDJSON, SSE, msgpack, extxyz, ASE
.traj) carries the same numbers; frames stream while the job runs; calculate requests are answered
while jobs run; cancel; bad parameters are 422 naming the field, a missing model 404, too much work
413; a server killed with SIGKILL keeps every frame it reported and marks the job interrupted.
"""
from __future__ import annotations

import io
import json
import time

import httpx
import msgpack
import numpy as np
import pytest
from ase import units
from ase.build import bulk
from ase.io import read
from ase.md.velocitydistribution import Stationary, thermalize_momenta
from ase.md.verlet import VelocityVerlet

from _http_support import REPO, TMP, Server, model_file
from _http_support import structure_json as structure
from _http_support import wait_job as wait

from aceserver.calculator import ACECalculator
from aceserver.loading import load_model

pytestmark = pytest.mark.timeout(600)
SI_TINY = REPO / "models" / "Si-tiny" / "Si-tiny.json"


def cell64():
    return bulk("Si", "diamond", a=5.43, cubic=True).repeat(2)


def server_args(jobs_dir):
    return [str(SI_TINY), f"si={model_file('si')}", "--jobs-dir", str(jobs_dir), "--max-jobs", "2",
            "--workers", "2", "--max-atoms", "500", "--jobs-max-atom-steps", "20000000"]


@pytest.fixture(scope="module")
def server():
    jobs_dir = TMP / "jobs-main"
    with Server(server_args(jobs_dir)) as s:
        yield s


def submit(url, **body):
    body.setdefault("structure", structure(cell64()))
    r = httpx.post(f"{url}/v1/jobs", json=body, timeout=60)
    assert r.status_code == 202, r.text
    return r.json()["ids"][0]


def ndjson(url, job):
    r = httpx.get(f"{url}/v1/jobs/{job}/frames", timeout=120)
    assert r.status_code == 200 and r.headers["content-type"].startswith("application/x-ndjson")
    return [json.loads(line) for line in r.text.splitlines()]


def test_frames_equal_in_process_ase_and_every_format_agrees(server):
    job = submit(server.url, kind="md", parameters={"steps": 100, "seed": 11, "temperature_K": 300},
                 write_every=20)
    status = wait(server.url, job)
    assert status["state"] == "done" and status["frames"] == 6 and status["progress"] == 1.0
    frames = ndjson(server.url, job)
    # the reference: ASE's VelocityVerlet on an ACECalculator, momenta as MDParameters documents them
    a = cell64()
    a.calc = ACECalculator(load_model(str(SI_TINY)))
    thermalize_momenta(a, 300.0, rng=np.random.default_rng(11))
    Stationary(a)
    ref = {}
    for _ in VelocityVerlet(a, timestep=1.0 * units.fs).irun(100):
        ref[len(ref)] = (a.positions.copy(), a.get_momenta(), a.get_potential_energy())
    assert [f["step"] for f in frames] == [0, 20, 40, 60, 80, 100]
    for f in frames:
        pos, mom, e = ref[f["step"]]
        np.testing.assert_allclose(f["positions"], pos, rtol=0, atol=1e-8)     # the bound
        np.testing.assert_allclose(f["momenta"], mom, rtol=0, atol=1e-10)
        assert f["energy"] == pytest.approx(e, abs=1e-9) and f["time_fs"] == pytest.approx(f["step"] * 1.0)
    # msgpack stream: the same numbers, bit for bit (JSON floats round-trip exactly)
    r = httpx.get(f"{server.url}/v1/jobs/{job}/frames?format=msgpack", timeout=60)
    unpacker = msgpack.Unpacker(raw=False)
    unpacker.feed(r.content)
    packed = list(unpacker)
    assert len(packed) == 6
    for f, p in zip(frames, packed):
        pos = np.frombuffer(p["positions"]["data"], "<f8").reshape(p["positions"]["shape"])
        np.testing.assert_array_equal(pos, np.asarray(f["positions"]))
        assert p["energy"] == f["energy"] and p["step"] == f["step"]
    # SSE: one `frame` event per frame, then `end` with the job's status
    r = httpx.get(f"{server.url}/v1/jobs/{job}/frames?format=sse&start=4", timeout=60)
    assert r.headers["content-type"].startswith("text/event-stream")
    events = [e for e in r.text.split("\n\n") if e.strip()]
    assert [e.splitlines()[0] for e in events] == ["event: frame", "event: frame", "event: end"]
    assert json.loads(events[0].splitlines()[2][len("data: "):])["step"] == 80
    assert json.loads(events[-1].splitlines()[1][len("data: "):])["state"] == "done"
    # an EventSource reconnecting sends the last id it saw: the stream goes on after it
    again = httpx.get(f"{server.url}/v1/jobs/{job}/frames?format=sse", headers={"Last-Event-ID": "3"}, timeout=60)
    assert [e for e in again.text.split("\n\n") if e.strip()][:2] == events[:2]
    # whole files, read back with ASE
    r = httpx.get(f"{server.url}/v1/jobs/{job}/frames?format=extxyz", timeout=60)
    images = read(io.StringIO(r.text), index=":", format="extxyz")
    r = httpx.get(f"{server.url}/v1/jobs/{job}/frames?format=traj", timeout=60)
    path = TMP / f"{job}.traj"
    path.write_bytes(r.content)
    trajectory = read(path, index=":")
    for images_ in (images, trajectory):
        assert len(images_) == 6
        for img, f in zip(images_, frames):
            np.testing.assert_allclose(img.positions, f["positions"], rtol=0, atol=1e-8)
            np.testing.assert_allclose(img.get_momenta(), f["momenta"], rtol=0, atol=1e-8)
            np.testing.assert_allclose(img.get_forces(), f["forces"], rtol=0, atol=1e-8)
            assert img.get_potential_energy() == pytest.approx(f["energy"], abs=1e-8)


def test_frames_stream_while_the_job_runs_and_calculate_is_answered(server):
    """Two long jobs fill --max-jobs 2; a third waits queued. Frames of a running job arrive on the
    stream while its status says running, and calculate requests are answered meanwhile (the jobs
    have their own threads; nothing here measures time)."""
    url = server.url
    jobs = [submit(url, kind="md", parameters={"steps": 200_000, "seed": k}, write_every=20) for k in range(3)]
    seen = []
    with httpx.stream("GET", f"{url}/v1/jobs/{jobs[0]}/frames", timeout=120) as r:
        for line in r.iter_lines():
            seen.append(json.loads(line))
            if len(seen) == 3:
                break
    status = httpx.get(f"{url}/v1/jobs/{jobs[0]}").json()
    assert status["state"] == "running" and status["frames"] >= 3
    assert [f["index"] for f in seen] == [0, 1, 2]
    assert httpx.get(f"{url}/v1/jobs/{jobs[2]}").json()["state"] == "queued"
    calc_body = {"structure": structure(cell64())}
    for _ in range(5):
        r = httpx.post(f"{url}/v1/models/Si-tiny/calculate", json=calc_body, timeout=60)
        assert r.status_code == 200
    after = [httpx.get(f"{url}/v1/jobs/{j}").json() for j in jobs[:2]]
    assert all(s["state"] == "running" and s["step"] < 200_000 for s in after)
    # cancel: a running job stops after its current step, the queued one never starts
    for j in reversed(jobs):            # the queued one first, before a cancelled job frees its thread
        r = httpx.delete(f"{url}/v1/jobs/{j}")
        assert r.status_code == 200
    final = [wait(url, j) for j in jobs]
    assert [s["state"] for s in final] == ["cancelled"] * 3
    assert final[2]["started"] is None and final[2]["frames"] == 0
    frames = ndjson(url, jobs[0])
    assert frames[-1]["step"] == final[0]["step"] and len(frames) == final[0]["frames"]
    listed = httpx.get(f"{url}/v1/jobs?state=cancelled").json()["jobs"]
    assert set(jobs) <= {j["id"] for j in listed}


@pytest.mark.parametrize("body, status, field", [
    ({"kind": "md", "parameters": {"steps": 0}}, 422, "parameters.steps"),
    ({"kind": "md", "parameters": {"steps": 10, "timestep_fs": -1}}, 422, "parameters.timestep_fs"),
    ({"kind": "md", "parameters": {"steps": 10, "ensemble": "nph"}}, 422, "parameters.ensemble"),
    ({"kind": "md"}, 422, "parameters"),
    ({"kind": "relax", "parameters": {"optimizer": "CG"}}, 422, "parameters.optimizer"),
    ({"kind": "relax", "halt": {"max_force": -1}}, 422, "halt.max_force"),
    ({"kind": "relax", "write_every": 0}, 422, "write_every"),
    ({"kind": "relax", "speed": "fast"}, 422, "speed"),
    ({"kind": "dance"}, 422, "kind"),
    ({"parameters": {"steps": 10}}, 422, "kind"),
    # "si" has no active set (the shipped Si-tiny, the default model, carries one)
    ({"kind": "md", "parameters": {"steps": 10}, "model": "si", "halt": {"max_gamma": 3}}, 422,
     "halt.max_gamma"),
    ({"kind": "md", "parameters": {"steps": 10}, "model": "si", "halt": {"max_energy_std": 0.1}}, 422,
     "halt.max_energy_std"),
    ({"kind": "md", "parameters": {"steps": 1_000_000}}, 413, "parameters.steps"),
    ({"kind": "md", "parameters": {"steps": 10}, "model": "nope"}, 404, "model"),
])
def test_bad_requests_name_the_field(server, body, status, field):
    body = {"structure": structure(cell64()), **body}
    r = httpx.post(f"{server.url}/v1/jobs", json=body, timeout=30)
    assert r.status_code == status, r.text
    doc = r.json()
    assert doc["field"] == field and doc["kind"] in ("invalid_input", "too_large", "unknown_model")
    assert field in doc["message"]


def test_unknown_job_and_unfinished_files(server):
    for method in ("GET", "DELETE"):
        r = httpx.request(method, f"{server.url}/v1/jobs/0123456789abcdef", timeout=30)
        assert r.status_code == 404 and r.json()["kind"] == "unknown_job"
    job = submit(server.url, kind="md", parameters={"steps": 200_000}, write_every=1000)
    r = httpx.get(f"{server.url}/v1/jobs/{job}/frames?format=traj", timeout=30)
    assert r.status_code == 409 and r.json()["field"] == "format"
    httpx.delete(f"{server.url}/v1/jobs/{job}")
    assert wait(server.url, job)["state"] == "cancelled"


def test_batch_of_structures_is_one_job_each(server):
    a, b = cell64(), cell64()
    b.positions += 0.02
    r = httpx.post(f"{server.url}/v1/jobs", json={"structures": [structure(a), structure(b)], "kind": "relax",
                                                 "parameters": {"fmax": 0.05, "optimizer": "FIRE"}}, timeout=30)
    assert r.status_code == 202
    ids = r.json()["ids"]
    assert len(set(ids)) == 2
    for j in ids:
        s = wait(server.url, j)
        assert s["state"] == "done" and s["converged"] is True
        assert ndjson(server.url, j)[-1]["max_force"] <= 0.05


def test_sigkill_keeps_reported_frames_and_marks_interrupted(tmp_path):
    jobs_dir = tmp_path / "jobs"
    with Server(server_args(jobs_dir)) as s:
        job = submit(s.url, kind="md", parameters={"steps": 200_000, "seed": 5}, write_every=10)
        seen = []
        with httpx.stream("GET", f"{s.url}/v1/jobs/{job}/frames", timeout=120) as r:
            for line in r.iter_lines():
                seen.append(json.loads(line))
                if len(seen) == 5:
                    break
        s.proc.kill()                       # SIGKILL: no shutdown code runs
        s.proc.wait(30)
    with Server(server_args(jobs_dir)) as s:
        status = httpx.get(f"{s.url}/v1/jobs/{job}").json()
        assert status["state"] == "interrupted" and "running" in status["reason"]
        assert status["frames"] >= 5
        frames = ndjson(s.url, job)
        assert len(frames) == status["frames"]
        for before, after in zip(seen, frames):
            assert before == after


def test_openapi_fuzz_of_the_jobs_routes(tmp_path):
    """schemathesis on the /v1/jobs operations of a server whose jobs may be only tiny (so that the
    generated jobs finish at once): no 5xx, the server stays up."""
    import schemathesis
    from hypothesis import HealthCheck, given, settings

    args = [str(SI_TINY), "--jobs-dir", str(tmp_path / "jobs"), "--max-jobs", "1", "--max-atoms", "64",
            "--jobs-max-atom-steps", "2000", "--jobs-max-frame-atoms", "2000"]
    with Server(args) as s:
        schema = schemathesis.openapi.from_url(f"{s.url}/openapi.json")
        statuses: dict[int, int] = {}
        for result in schema.get_all_operations():
            operation = result.ok()
            if not operation.path.startswith("/v1/jobs"):
                continue

            @settings(max_examples=40, deadline=None, database=None, derandomize=True,
                      suppress_health_check=list(HealthCheck))
            @given(case=operation.as_strategy())
            def check(case):
                response = case.call(base_url=s.url, timeout=30)
                statuses[response.status_code] = statuses.get(response.status_code, 0) + 1
                assert response.status_code < 500, (case.method, case.path, case.body, response.text[:500])

            check()
        assert s.proc.poll() is None
        assert sum(statuses.values()) > 100, statuses


def test_client_streams_atoms_and_halts_on_max_force(server):
    """aceclient.ACEJobs: a halt on max_force at the first check step where an in-process ASE run
    (same seed) has a force above the threshold; the frames come back as ase.Atoms."""
    from aceclient import ACEJobs, InvalidInputError, JobFailedError

    steps, check_every, seed = 60, 3, 4
    a = cell64()
    a.positions += np.random.default_rng(1).normal(scale=0.01, size=a.positions.shape)
    ref = a.copy()
    ref.calc = ACECalculator(load_model(str(SI_TINY)))
    thermalize_momenta(ref, 600.0, rng=np.random.default_rng(seed))
    Stationary(ref)
    fmax = []
    for _ in VelocityVerlet(ref, timestep=1.0 * units.fs).irun(steps):
        fmax.append(np.linalg.norm(ref.get_forces(), axis=1).max())
    threshold = float((fmax[0] + max(fmax)) / 2)
    first = next(k for k in range(0, steps + 1, check_every) if fmax[k] > threshold)
    with ACEJobs(server.url) as jobs:
        images = jobs.run(a, "md", parameters={"steps": steps, "temperature_K": 600.0, "seed": seed},
                          write_every=10, check_every=check_every, halt={"max_force": threshold})
        status = jobs.status(images[-1].info["job"])
        assert status["state"] == "halted" and status["halt"]["step"] == first
        assert [im.info["step"] for im in images] == sorted({*range(0, first + 1, 10), first})
        last = images[-1]
        assert last.info["max_force"] == pytest.approx(fmax[first], rel=1e-9)
        assert np.linalg.norm(last.get_forces(), axis=1).max() == pytest.approx(fmax[first], rel=1e-9)
        assert last.get_momenta().shape == (64, 3) and last.info["time_fs"] == pytest.approx(first * 1.0)
        # relax: the last frame is converged; the trajectory as a file reads back in ASE
        images = jobs.run(a, "relax", parameters={"fmax": 0.02, "optimizer": "LBFGS"})
        assert np.linalg.norm(images[-1].get_forces(), axis=1).max() <= 0.02
        with pytest.raises(InvalidInputError) as info:
            jobs.submit(a, "md", parameters={"steps": -5})
        assert info.value.field == "parameters.steps"
        job = jobs.submit(a, "md", parameters={"steps": 200_000}, write_every=100)
        jobs.cancel(job)
        assert jobs.wait(job, timeout=120)["state"] == "cancelled"
        # a job that fails (two atoms on top of each other): run raises with the error document
        broken = a.copy()
        broken.positions[1] = broken.positions[0]
        with pytest.raises(JobFailedError) as failed:
            jobs.run(broken, "md", parameters={"steps": 10})
        assert failed.value.kind == "invalid_input" and failed.value.field == "structure.positions"


def test_command_line_submit_watch_fetch_list_cancel(server, tmp_path):
    import subprocess
    import sys

    from ase.io import write

    def cli(*args):
        return subprocess.run([sys.executable, "-m", "aceserver.cli", "jobs", *args, "--url", server.url],
                              capture_output=True, text=True, timeout=300)

    a = cell64()
    a.positions += np.random.default_rng(2).normal(scale=0.03, size=a.positions.shape)
    path = tmp_path / "start.xyz"
    write(path, [a, a], format="extxyz")
    spec = tmp_path / "relax.yaml"
    spec.write_text("kind: relax\nparameters:\n  optimizer: FIRE\n")
    out = cli("submit", str(path), "--spec", str(spec), "--param", "fmax=0.05", "--write-every", "5")
    assert out.returncode == 0, out.stderr
    ids = out.stdout.split()
    assert len(ids) == 2
    watched = cli("watch", ids[0])
    assert watched.returncode == 0, watched.stderr
    assert f"job {ids[0]}: done" in watched.stdout
    rows = [line.split() for line in watched.stdout.splitlines()[1:-1]]
    frames = ndjson(server.url, ids[0])
    assert [int(r[0]) for r in rows] == [f["step"] for f in frames]
    assert float(rows[-1][-1]) <= 0.05
    wait(server.url, ids[1])
    traj = tmp_path / "out.traj"
    assert cli("fetch", ids[1], "-o", str(traj)).returncode == 0
    images = read(traj, index=":")
    np.testing.assert_allclose(images[-1].positions, ndjson(server.url, ids[1])[-1]["positions"], atol=1e-12)
    listed = cli("list", "--state", "done")
    assert ids[0] in listed.stdout and ids[1] in listed.stdout
    md_id = cli("submit", str(path), "--kind", "md", "--param", "steps=200000", "--write-every", "1000").stdout.split()
    for j in md_id:
        assert cli("cancel", j).returncode == 0
    assert {wait(server.url, j)["state"] for j in md_id} == {"cancelled"}
    bad = cli("submit", str(path), "--kind", "md", "--param", "steps=0")
    assert bad.returncode == 1 and "parameters.steps" in bad.stderr


def test_sigterm_stops_running_jobs_as_interrupted(tmp_path):
    """A drained shutdown (SIGTERM) stops a running job after its current step and a queued one
    before it starts, both `interrupted`, every frame kept; the server exits cleanly."""
    import signal

    jobs_dir = tmp_path / "jobs"
    args = server_args(jobs_dir)
    args[args.index("--max-jobs") + 1] = "1"
    with Server(args) as s:
        running = submit(s.url, kind="md", parameters={"steps": 200_000}, write_every=50)
        queued = submit(s.url, kind="md", parameters={"steps": 10})
        deadline = time.monotonic() + 120
        while httpx.get(f"{s.url}/v1/jobs/{running}").json()["frames"] < 2 and time.monotonic() < deadline:
            time.sleep(0.05)
        s.proc.send_signal(signal.SIGTERM)
        assert s.proc.wait(60) == 0
    with Server(args) as s:
        first, second = (httpx.get(f"{s.url}/v1/jobs/{j}").json() for j in (running, queued))
        assert first["state"] == second["state"] == "interrupted"
        assert "server stopped" in first["reason"] and first["step"] < 200_000
        assert len(ndjson(s.url, running)) == first["frames"] >= 2
        assert ndjson(s.url, running)[-1]["step"] == first["step"]


def test_jobs_need_the_token_when_the_server_has_one(tmp_path):
    token = tmp_path / "token"
    token.write_text("s3cret\n")
    with Server([str(SI_TINY), "--jobs-dir", str(tmp_path / "jobs"), "--token-file", str(token)]) as s:
        body = {"structure": structure(cell64()), "kind": "md", "parameters": {"steps": 5}}
        for method, path in (("POST", "/v1/jobs"), ("GET", "/v1/jobs"), ("GET", "/v1/jobs/0123456789abcdef"),
                             ("GET", "/v1/jobs/0123456789abcdef/frames"), ("DELETE", "/v1/jobs/0123456789abcdef")):
            r = httpx.request(method, s.url + path, json=body if method == "POST" else None, timeout=30)
            assert r.status_code == 401 and r.json()["kind"] == "unauthorized", (method, path)
        auth = {"Authorization": "Bearer s3cret"}
        r = httpx.post(f"{s.url}/v1/jobs", json=body, headers=auth, timeout=30)
        assert r.status_code == 202
        job = r.json()["ids"][0]
        deadline = time.monotonic() + 120
        while httpx.get(f"{s.url}/v1/jobs/{job}", headers=auth).json()["state"] != "done":
            assert time.monotonic() < deadline
            time.sleep(0.05)
        assert len(httpx.get(f"{s.url}/v1/jobs/{job}/frames", headers=auth).text.splitlines()) == 6
        # aceclient.ACEJobs sends the token with every request, submits (POST) included
        from aceclient import ACEJobs
        with ACEJobs(s.url, token="s3cret") as jobs:
            images = jobs.run(cell64(), "md", parameters={"steps": 5})
            assert [im.info["step"] for im in images] == [0, 1, 2, 3, 4, 5]


def test_halt_on_max_gamma_over_http(tmp_path):
    """A served model with an active set (in-process uvicorn, as tests/test_web_page.py serves one):
    a hot, compressed cell halts on max_gamma at the first check step where the γ the same job
    records exceeds the threshold, and the status reports that step."""
    import threading

    import uvicorn

    from _http_support import free_port, ready
    from aceserver.serving.http import ModelRegistry, ServedModel, Settings, create_app
    from test_jobs import small_model_with_active_set

    model, _ = small_model_with_active_set()
    app = create_app(ModelRegistry([ServedModel("si-gamma", model, None)]), Settings(jobs_dir=str(tmp_path / "j")))
    port = free_port()
    server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=port, log_level="warning"))
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 300
        while not ready(url):
            assert time.monotonic() < deadline
            time.sleep(0.1)
        atoms = bulk("Si", "diamond", a=5.43 * 0.93, cubic=True)
        params = {"steps": 40, "temperature_K": 3000.0, "seed": 7}
        recorded = submit(url, structure=structure(atoms), kind="md", parameters=params, record=["gamma"])
        assert wait(url, recorded)["state"] == "done"
        gamma = np.array([f["max_gamma"] for f in ndjson(url, recorded)])
        assert gamma.shape == (41,)
        threshold = float((gamma[0] + gamma.max()) / 2)
        first = next(k for k in range(0, 41, 4) if gamma[k] > threshold)
        halted = submit(url, structure=structure(atoms), kind="md", parameters=params, check_every=4,
                        write_every=1000, halt={"max_gamma": threshold})
        status = wait(url, halted)
        assert status["state"] == "halted" and status["step"] == first > 0
        assert status["halt"] == {"condition": "max_gamma", "value": gamma[first], "threshold": threshold,
                                  "step": first}
        assert f"step {first}" in status["reason"]
    finally:
        server.should_exit = True
        thread.join(30)
