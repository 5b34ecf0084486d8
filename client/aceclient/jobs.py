"""`ACEJobs`: relaxations and MD runs on an `aceserver serve --jobs-dir` server (/v1/jobs).

    jobs = ACEJobs("http://127.0.0.1:8000")
    job = jobs.submit(atoms, "md", parameters={"steps": 2000, "temperature_K": 300, "seed": 1}, write_every=10)
    for frame in jobs.frames(job):          # ase.Atoms, streamed as the server makes them
        print(frame.info["step"], frame.get_potential_energy())
    images = jobs.run(atoms, "relax", parameters={"fmax": 0.01})   # submit, wait, all frames
    finals = jobs.relax_many(cells, parameters={"optimizer": "FIRE", "fmax": 0.05})   # one batched job

Frames come back as `ase.Atoms` with momenta (MD), a SinglePointCalculator holding energy (eV),
forces (eV/Å), per-atom energies (eV) and stress (eV/Å³, 3-D periodic cells), and the scalars in
`atoms.info` (step, time_fs, kinetic_energy eV, temperature_K, max_force eV/Å, energy_std eV,
max_gamma, and `structure` for a relax_many job's frames); per-atom γ, when recorded, in
`atoms.arrays["gamma"]`.
"""
from __future__ import annotations

import time
from collections.abc import Iterator, Sequence
from typing import Any
from urllib.parse import quote, urlencode

import msgpack
import numpy as np
from ase import Atoms
from ase.calculators.singlepoint import SinglePointCalculator

from ._api import APIClient, _unpack
from .calculator import structure
from .errors import ACEServerError

FINISHED = ("done", "halted", "failed", "cancelled", "interrupted")


class JobFailedError(ACEServerError):
    """The job ended `failed` (its error document is in `kind`, `field`, `message`) or was cancelled
    or interrupted when `run` waited for its frames. `structures`: for a relax_many job, what each
    structure reached before that (as `ACEJobs.results` gives them: finished ones final, the
    others at their last frame with info["state"] cancelled / interrupted); else None."""

    structures: list | None = None


def frame_atoms(frame: dict) -> Atoms:
    """A frame (decoded msgpack map, arrays as numpy) as `ase.Atoms` (see the module docstring)."""
    atoms = Atoms(numbers=frame["numbers"], positions=frame["positions"], cell=frame["cell"], pbc=frame["pbc"])
    if frame.get("momenta") is not None:
        atoms.set_momenta(frame["momenta"])
    if frame.get("gamma") is not None:
        atoms.new_array("gamma", np.asarray(frame["gamma"], dtype=float))
    for key in ("index", "step", "time_fs", "kinetic_energy", "temperature_K", "max_force", "energy_std",
                "max_gamma", "structure"):
        if frame.get(key) is not None:
            atoms.info[key] = frame[key]
    results = {"energy": frame["energy"], "free_energy": frame["energy"], "forces": frame["forces"],
               "energies": frame["energies"]}
    if frame.get("stress") is not None:
        results["stress"] = frame["stress"]
    atoms.calc = SinglePointCalculator(atoms, **results)
    return atoms


class ACEJobs(APIClient):
    """Client of the jobs API. url: the server; token: its bearer token, if it has one."""

    # -- jobs ---------------------------------------------------------------------------------
    def submit(self, atoms: Atoms | Sequence[Atoms], kind: str, *, model: str | None = None,
               parameters: dict | None = None, write_every: int = 1, check_every: int = 1,
               halt: dict | None = None, record: Sequence[str] = ()) -> str | list[str]:
        """Start a job (`kind` "relax" or "md"; parameters as the server's OpenAPI document states,
        e.g. {"steps": 1000, "timestep_fs": 1, "temperature_K": 300, "seed": 1}; halt e.g.
        {"max_force": 10.0}); its id, or a list of ids for a list of structures."""
        body = _body(atoms, kind, model, parameters, write_every, check_every, halt, record)
        ids = self._json("POST", "/v1/jobs", body)["ids"]
        return ids[0] if isinstance(atoms, Atoms) else ids

    def submit_many(self, structures: Sequence[Atoms], *, model: str | None = None, parameters: dict | None = None,
                    write_every: int = 1, check_every: int = 1, halt: dict | None = None,
                    record: Sequence[str] = ()) -> str:
        """Start ONE `relax_many` job relaxing all `structures` (each its own optimiser, every step one
        batched evaluation on the server; parameters as for "relax", e.g. {"optimizer": "FIRE",
        "fmax": 0.05, "cell_filter": True}); its id."""
        body = _body(list(structures), "relax_many", model, parameters, write_every, check_every, halt, record)
        return self._json("POST", "/v1/jobs", body)["ids"][0]

    def relax_many(self, structures: Sequence[Atoms], **kw) -> list[Atoms | None]:
        """Relax `structures` in one `relax_many` job (keywords as `submit_many`), wait, and return
        each one's final structure (`results`)."""
        return self.results(self.submit_many(structures, **kw))

    def results(self, job: str) -> list[Atoms | None]:
        """Wait for the relax_many `job` and return each structure's final structure (its last frame
        as `ase.Atoms`: positions Å, cell Å, energy eV, forces eV/Å, stress eV/Å³ with the cell
        filter) with `info["state"]` (converged, not_converged, halted, failed), `info["steps"]`,
        `info["reason"]` and `info["job"]`; None for a structure without a frame (one that failed:
        `status(job)["structures"][i]["error"]` says why). Raises `JobFailedError` if the job as a
        whole failed, was cancelled or interrupted, with the structures' results so far in its
        `structures` (nothing that finished is lost)."""
        finals: dict[int, Atoms] = {}
        for image in self.frames(job):          # each structure's last frame is its final structure
            finals[image.info["structure"]] = image
        status = self.status(job)
        out: list[Atoms | None] = []
        for s in status.get("structures") or ():
            image = finals.get(s["index"]) if s["frame"] is not None else None
            if image is not None:
                image.info.update(state=s["state"], steps=s["steps"], reason=s["reason"], job=job)
            out.append(image)
        if status["state"] != "done":
            error = status.get("error") or {}
            failed = JobFailedError(f"job {job} {status['state']}: {error.get('message') or status.get('reason')}",
                                    kind=error.get("kind"), field=error.get("field"))
            failed.structures = out if status.get("structures") else None
            raise failed
        return out

    def trajectories(self, job: str) -> list[list[Atoms]]:
        """A relax_many job's frames grouped by structure (index i: the frames of `structures[i]`),
        waiting for it to finish."""
        grouped: dict[int, list[Atoms]] = {}
        for image in self.frames(job):
            grouped.setdefault(image.info["structure"], []).append(image)
        n = len(self.status(job)["structures"] or ())
        return [grouped.get(i, []) for i in range(n)]

    def status(self, job: str) -> dict:
        """State (queued, running, done, halted, failed, cancelled, interrupted), progress, timings."""
        return self._json("GET", f"/v1/jobs/{quote(job, safe='')}")

    def list(self, state: str | None = None, limit: int = 100) -> list[dict]:
        query = urlencode({"limit": limit, **({"state": state} if state else {})})
        return self._json("GET", f"/v1/jobs?{query}")["jobs"]

    def cancel(self, job: str) -> dict:
        """Cancel (a running job stops after its current step); the job's status."""
        return self._json("DELETE", f"/v1/jobs/{quote(job, safe='')}")

    def wait(self, job: str, timeout: float | None = None, poll: float = 0.2) -> dict:
        """Block until the job has finished; its status (TimeoutError after `timeout` seconds)."""
        deadline = None if timeout is None else time.monotonic() + timeout
        while True:
            status = self.status(job)
            if status["state"] in FINISHED:
                return status
            if deadline is not None and time.monotonic() > deadline:
                raise TimeoutError(f"job {job} is still {status['state']} after {timeout} s")
            time.sleep(poll)

    def frames(self, job: str, start: int = 0) -> Iterator[Atoms]:
        """The job's frames as `ase.Atoms`, each as soon as the server has it (msgpack stream); the
        iterator ends once the job has finished and every frame has come."""
        r = self._request("GET", f"/v1/jobs/{quote(job, safe='')}/frames?format=msgpack&start={int(start)}",
                          preload_content=False)
        unpacker = msgpack.Unpacker(raw=False)
        try:
            for chunk in r.stream(64 * 1024):
                unpacker.feed(chunk)
                for frame in unpacker:
                    yield frame_atoms(_unpack(frame))
        finally:
            r.release_conn()

    def trajectory(self, job: str) -> list[Atoms]:
        """Every frame of a job, waiting for it to finish."""
        return list(self.frames(job))

    def download(self, job: str, format: str = "traj") -> bytes:
        """The whole trajectory of a finished job as a file: "traj" (ASE trajectory) or "extxyz"."""
        return self._request("GET", f"/v1/jobs/{quote(job, safe='')}/frames?format={quote(format)}").data

    def run(self, atoms: Atoms, kind: str, **kw) -> list[Atoms]:
        """Submit one job, stream its frames until it ends, and return them; raises `JobFailedError`
        if it failed, was cancelled or interrupted (a halted job returns its frames: see
        `atoms.info` of the last and `status(job)["reason"]`)."""
        job = self.submit(atoms, kind, **kw)
        images = list(self.frames(job))
        status = self.status(job)
        if status["state"] in ("failed", "cancelled", "interrupted"):
            error = status.get("error") or {}
            raise JobFailedError(f"job {job} {status['state']}: {error.get('message') or status.get('reason')}",
                                 kind=error.get("kind"), field=error.get("field"))
        for image in images:
            image.info["job"] = job
        return images


def _body(atoms, kind, model, parameters, write_every, check_every, halt, record) -> dict[str, Any]:
    """A job request: the structure(s) in the binary array form, the spec's fields given."""
    body: dict[str, Any] = {"kind": kind, "write_every": write_every, "check_every": check_every}
    if isinstance(atoms, Atoms):
        body["structure"] = structure(atoms, binary=True)
    else:
        body["structures"] = [structure(a, binary=True) for a in atoms]
    for key, value in (("model", model), ("parameters", parameters), ("halt", halt)):
        if value is not None:
            body[key] = value
    if record:
        body["record"] = list(record)
    return body
