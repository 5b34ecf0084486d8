"""Jobs on the workers of a dask.distributed cluster (`aceserver serve --scheduler ADDRESS`), the
engine distributed fitting uses: each job is one task (a relax_many job too: its batched steps run
on one worker), so many MD runs spread over machines while the server keeps the store, the streams
and the API.

Only plain data travels to a worker: the model file's path (on a filesystem the workers share
with the server, as for distributed fitting) and sha256 (the worker refuses another file), the
active set's A⁻¹ arrays when the model has one, the structures' arrays and the job spec as JSON.
Back come the frames as msgpack bytes, through a distributed `Queue` named after the job, as the
worker makes them (relax_many's per-structure outcomes with the frame after them), and the
outcome as a dict. Cancelling sets a distributed `Event` that the
worker looks at between steps, at most every CANCEL_POLL_S seconds. A task is never retried (its
frames are already stored): a worker that dies fails the job. Dask pickles its own messages and
the task function (by reference: workers import aceserver); run it on a network you trust.
Nothing here imports Dask at module level.
"""
from __future__ import annotations

import asyncio
import dataclasses
import threading
import time
from typing import Any, Callable

import numpy as np
from ase import Atoms
from pydantic import TypeAdapter

from aceserver.evaluation.site_potential import SitePotential
from aceserver.loading import load_model

from . import batch_relax, runner
from .spec import JobSpec, MDJob, RelaxJob, RelaxManyJob

CANCEL_POLL_S = 0.5             # a worker asks the scheduler whether its job was cancelled this often
_MODELS: dict[tuple[str, str], SitePotential] = {}     # per worker process: (path, sha256) -> model
_SPEC = TypeAdapter(JobSpec)


def connect(address: str):
    """A client of the scheduler at `address` (ValueError naming the problem without Dask)."""
    try:
        from distributed import Client
    except ImportError:
        raise ValueError("--scheduler needs Dask: pip install \"aceserver[dask]\"") from None
    return Client(address, set_as_default=False)


def worker_model(path: str, sha256: str) -> SitePotential:
    """The model file at `path` (loaded once per worker process), refused unless it is the server's."""
    model = _MODELS.get((path, sha256))
    if model is None:
        model = load_model(path)
        if model.sha256 != sha256:
            raise ValueError(f"the model file on this worker has sha256 {model.sha256[:12]}…, the server's "
                             f"{sha256[:12]}…: the workers must see the server's model files")
        _MODELS[(path, sha256)] = model
    return model


class _RemoteCancel:
    """`is_set()` of a distributed Event, asked at most every CANCEL_POLL_S seconds."""

    def __init__(self, event):
        self.event, self.flag, self.next = event, False, 0.0

    def is_set(self) -> bool:
        now = time.monotonic()
        if not self.flag and now >= self.next:
            self.flag, self.next = self.event.is_set(), now + CANCEL_POLL_S
        return self.flag


class _QueueSink:
    """Frames into the job's Queue as msgpack bytes; relax_many's outcomes travel with the next frame
    (a message `[outcomes, frame bytes]`), so the server stores them in that frame's commit."""

    def __init__(self, queue):
        self.queue, self.outcomes = queue, []

    def frame(self, frame: dict) -> None:
        blob = runner.frames.encode(frame)
        self.queue.put([self.outcomes, blob] if self.outcomes else blob)
        self.outcomes = []

    def outcome(self, summary: dict) -> None:
        self.outcomes.append(summary)

    def step(self, step: int) -> None:
        pass


def _structure(atoms: Atoms) -> tuple:
    return atoms.numbers, atoms.positions, atoms.cell.array, atoms.pbc


def remote_job(job_id: str, model_path: str, sha256: str, active: dict | None, structures: list[tuple], spec: dict,
               failed: dict[int, dict] | None = None, max_pairs: int | None = None) -> dict[str, Any]:
    """The task a worker runs: the job (structures: (numbers, positions Å, cell Å, pbc) each, one
    for relax and md; relax_many's `failed` and `max_pairs` as `batch_relax.run`'s), its frames into
    the job's Queue; the outcome as a dict (`state` failed with `error`, an error document, when it
    failed)."""
    from distributed import Event, Queue

    try:
        model = worker_model(model_path, sha256)
        if active is not None and model.active_set is None:
            model.attach_active_set(active, sha256)
        atoms = [Atoms(numbers=n, positions=x, cell=c, pbc=p) for n, x, c, p in structures]
        job, sink = _SPEC.validate_python(spec), _QueueSink(Queue(job_id))
        cancel = _RemoteCancel(Event(f"{job_id}-cancel"))
        if isinstance(job, RelaxManyJob):
            out = batch_relax.run(model, atoms, job, sink, cancel, {int(k): v for k, v in (failed or {}).items()},
                                  max_pairs=max_pairs)
        else:
            out = runner.run(model, atoms[0], job, sink, cancel)
    except Exception as ex:
        return {"state": "failed", "error": runner.error_document(ex), "detail": f"{type(ex).__name__}: {ex}"}
    return dataclasses.asdict(out)


def run(client, job_id: str, model: SitePotential, model_path: str, work, spec: RelaxJob | MDJob | RelaxManyJob,
        cancel: threading.Event, sink, max_pairs: int | None = None) -> dict[str, Any]:
    """Run a job on the cluster of `client` (work: the Atoms, or relax_many's (structures, failed)),
    handing each frame's bytes to `sink.blob` (in order) as it comes, relax_many's outcomes to
    `sink.outcome` before the frame they came with; passes `cancel` on; the outcome dict of
    `remote_job`."""
    from distributed import Event, Queue

    structures, failed = work if isinstance(spec, RelaxManyJob) else ([work], None)
    queue, remote_cancel = Queue(job_id, client=client), Event(f"{job_id}-cancel", client=client)
    active = None if model.active_set is None else {k: np.asarray(v) for k, v in model.active_set.inverses.items()}
    future = client.submit(remote_job, job_id, str(model_path), model.sha256, active,
                           [_structure(a) for a in structures], spec.model_dump(mode="json"), failed, max_pairs,
                           key=f"aceserver-job-{job_id}", pure=False, retries=0)

    def take(item) -> None:
        if not isinstance(item, bytes):         # [outcomes, frame bytes]
            outcomes, item = item
            for summary in outcomes:
                sink.outcome(summary)
        sink.blob(item)

    try:
        while True:
            if cancel.is_set() and not remote_cancel.is_set():
                remote_cancel.set()
            try:
                take(queue.get(timeout=CANCEL_POLL_S))
            except (TimeoutError, asyncio.TimeoutError):      # one and the same from Python 3.11
                if future.done():
                    break
        for item in queue.get(batch=True):     # put before the task returned
            take(item)
        return future.result()
    finally:
        future.release()
        remote_cancel.clear()
        queue.close()
