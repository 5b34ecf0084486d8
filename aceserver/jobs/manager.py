"""Jobs queued, run and watched: `JobManager` runs at most `max_jobs` jobs at once on its own
threads (apart from the threads that answer calculate requests, so that a long MD run never holds
up a short request: the kernels release the GIL), keeps every job and frame in the `JobStore`,
tells subscribers (the HTTP frame streams) when a frame or a final state arrives, and cancels a
job between two steps.

A relax_many job runs all its structures in one place (`batch_relax`): on a job thread here, or
as one task on a cluster's worker when the other jobs go there: its steps are batched evaluations,
not separate tasks.

A relax_many structure's outcome is stored with its last frame, so after a kill the finished
structures keep theirs and the running ones become `interrupted` (`JobStore.mark_interrupted`).

On start the store's unfinished jobs become `interrupted` and finished jobs older than the time
to live are deleted; expired jobs are deleted again on every submit. `shutdown` stops the running
jobs after their current step (state `interrupted`) and marks the queued ones the same way.
"""
from __future__ import annotations

import dataclasses
import logging
import secrets
import threading
import time
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

from ase import Atoms

from aceserver.errors import ACEInputError
from aceserver.evaluation.site_potential import SitePotential

from . import batch_relax, cluster, frames, runner
from .limits import JobInputError, JobLimits, JobQueueFull, check, check_many
from .spec import MDJob, RelaxJob, RelaxManyJob
from .store import JobStore

log = logging.getLogger("aceserver.jobs")
COMMIT_INTERVAL_S = 0.05        # frames are committed (and streamed) at least this often while a job runs


@dataclass
class _Live:
    cancel: threading.Event = field(default_factory=threading.Event)
    future: Future | None = None
    step: int = 0
    listeners: list[Callable[[], None]] = field(default_factory=list)


class _Sink:
    """runner.Sink (and batch_relax's `outcome`) for one job: frames into the store, then a word to
    the subscribers. Frames are committed together at most every COMMIT_INTERVAL_S (one SQLite
    commit costs ~0.2 ms, a 64-atom MD step ~1.5 ms) and at the end; nothing is streamed or counted
    before its commit. A relax_many structure's outcome goes into the commit of the frames made
    after it was reported (its last frame comes right after it)."""

    def __init__(self, manager: "JobManager", job_id: str, live: _Live):
        self.manager, self.job_id, self.live = manager, job_id, live
        self.pending: list[tuple[int, int, bytes]] = []
        self.outcomes: dict[int, dict] = {}
        self.last = time.monotonic()

    def outcome(self, summary: dict) -> None:
        """A relax_many structure's outcome so far (`batch_relax`); the latest per structure is kept."""
        self.outcomes[summary["index"]] = summary

    def frame(self, frame: dict) -> None:
        self._add(frame["index"], frame["step"], frames.encode(frame))

    def blob(self, blob: bytes) -> None:
        """A frame already encoded (from a cluster worker)."""
        frame = frames.decode(blob)
        self.live.step = frame["step"]
        self._add(frame["index"], frame["step"], blob)

    def _add(self, index: int, step: int, blob: bytes) -> None:
        self.pending.append((index, step, blob))
        if time.monotonic() - self.last >= COMMIT_INTERVAL_S:
            self.flush()

    def flush(self) -> None:
        if self.pending or self.outcomes:
            self.manager.store.add_frames(self.job_id, self.pending, list(self.outcomes.values()))
            self.pending, self.outcomes = [], {}
            self.manager._notify(self.live)
        self.last = time.monotonic()

    def step(self, step: int) -> None:
        self.live.step = step


class JobManager:
    """Jobs in `directory`; at most `max_jobs` run at once, here, or with a dask.distributed `client`
    on its cluster (`cluster.py`; then max_jobs bounds the jobs in flight on the cluster).

    Jobs run on this manager's threads with the process's BLAS thread count: a program that runs
    one should set it once from its main thread, as `aceserver serve` does (`--blas-threads`, 1;
    `serving.process` says why): on OpenBLAS's default threads ASE's cell filter and γ's products
    cost several times as much on a busy machine."""

    def __init__(self, directory: str | Path, max_jobs: int = 1, ttl_hours: float = 168.0,
                 limits: JobLimits | None = None, client=None):
        self.store = JobStore(directory)
        self.client, self.owns_client = client, False
        self.max_jobs, self.ttl_s, self.limits = max_jobs, ttl_hours * 3600.0, limits or JobLimits()
        self.interrupted_at_start = self.store.mark_interrupted()
        self.expired_at_start = self.store.expire(self.ttl_s)
        self._pool = ThreadPoolExecutor(max_workers=max_jobs, thread_name_prefix="ace-job")
        self._live: dict[str, _Live] = {}
        self._lock = threading.Lock()
        self._closing = False

    # -- submit, run, cancel ------------------------------------------------------------------
    def check(self, model: SitePotential, atoms: Atoms, spec: RelaxJob | MDJob, where: str = "structure",
              source: str | None = None) -> None:
        """What `submit` checks first (`limits.check`): raises `JobInputError` / `JobTooLarge`."""
        check(model, atoms, spec, self.limits, where)
        self._check_source(source)

    def _check_source(self, source: str | None) -> None:
        if self.client is not None and source is None:
            raise JobInputError("model: this model has no file the cluster's workers could load", "model")

    def submit(self, model: SitePotential, model_name: str, sha256: str, atoms: Atoms, spec: RelaxJob | MDJob,
               where: str = "structure", source: str | None = None) -> str:
        """Queue a job; its id. Raises `JobInputError` / `JobTooLarge` (naming the field) or `JobQueueFull`.
        source: the model's file (what cluster workers load; needed with a client)."""
        self.check(model, atoms, spec, where, source)
        return self._queue(model, model_name, sha256, atoms.copy(), spec, len(atoms), source)

    def submit_many(self, model: SitePotential, model_name: str, sha256: str, structures: list[Atoms],
                    spec: RelaxManyJob, where: str = "structures", source: str | None = None) -> str:
        """Queue one relax_many job over `structures`; its id. Raises as `submit` for the job as a
        whole (`limits.check_many`); a structure that cannot run is reported failed by its index in
        the job's `structures` when it ends. source: as `submit`'s (the whole job is one task)."""
        bad = check_many(model, structures, spec, self.limits, where)
        self._check_source(source)
        work = ([a.copy() for a in structures], bad)
        return self._queue(model, model_name, sha256, work, spec, sum(map(len, structures)), source)

    def _queue(self, model: SitePotential, model_name: str, sha256: str, work, spec, n_atoms: int,
               source: str | None) -> str:
        self.store.expire(self.ttl_s)
        with self._lock:
            if self._closing:
                raise JobQueueFull("the server is shutting down")
            if self.store.count(("queued",)) >= self.limits.max_queued:
                raise JobQueueFull(f"{self.limits.max_queued} jobs are already queued; retry later")
            job_id = secrets.token_hex(8)
            self.store.create(job_id, spec.kind, model_name, sha256, spec.model_dump(mode="json"), n_atoms,
                              spec.steps)
            live = self._live[job_id] = _Live()
            live.future = self._pool.submit(self._run, job_id, model, work, spec, live, source)
        return job_id

    def _execute(self, job_id: str, model: SitePotential, work, spec, live: _Live, source: str | None,
                 sink: _Sink) -> dict:
        """Run the job (here or on the cluster); its outcome as a dict."""
        if self.client is not None:
            return cluster.run(self.client, job_id, model, source, work, spec, live.cancel, sink,
                               self.limits.max_batch_pairs)
        if isinstance(spec, RelaxManyJob):
            structures, bad = work
            return dataclasses.asdict(batch_relax.run(model, structures, spec, sink, live.cancel, bad,
                                                      max_pairs=self.limits.max_batch_pairs))
        return dataclasses.asdict(runner.run(model, work, spec, sink, live.cancel))

    def _run(self, job_id: str, model: SitePotential, work, spec: RelaxJob | MDJob | RelaxManyJob, live: _Live,
             source: str | None = None) -> None:
        try:
            if live.cancel.is_set():       # cancelled (or the server stopping) between queue and start
                self.store.finish(job_id, "interrupted" if self._closing else "cancelled",
                                  reason="the server stopped" if self._closing else "cancelled before it started")
                return
            if not self.store.start(job_id):
                return
            self._notify(live)
            sink = _Sink(self, job_id, live)
            try:
                try:
                    out = self._execute(job_id, model, work, spec, live, source, sink)
                finally:
                    sink.flush()                 # every frame made is stored before the final state
            except Exception as ex:
                if not isinstance(ex, ACEInputError):
                    log.exception("job %s failed", job_id)
                self.store.finish(job_id, "failed", live.step, error=runner.error_document(ex))
                return
            if out["state"] == "failed":                 # on a cluster worker
                if out["error"]["kind"] == "internal":
                    log.error("job %s failed on a worker: %s", job_id, out.get("detail"))
                self.store.finish(job_id, "failed", live.step, error=out["error"])
            elif out["state"] == "cancelled" and self._closing:
                self.store.finish(job_id, "interrupted", out["step"], "the server stopped while the job was running",
                                  converged=out["converged"], structures=out.get("structures"))
            else:
                self.store.finish(job_id, out["state"], out["step"], out["reason"], out["halt"],
                                  converged=out["converged"], structures=out.get("structures"))
        finally:
            with self._lock:
                self._live.pop(job_id, None)
            self._notify(live)

    def cancel(self, job_id: str) -> dict[str, Any] | None:
        """Cancel a queued job at once, a running one after its current step; a finished job is left
        as it is. The job's status (None: no such job)."""
        with self._lock:
            live = self._live.get(job_id)
        if live is not None:
            live.cancel.set()
            if live.future is not None and live.future.cancel():     # still queued: it never starts
                self.store.finish(job_id, "cancelled", reason="cancelled before it started")
                with self._lock:
                    self._live.pop(job_id, None)
                self._notify(live)
        return self.status(job_id)

    def wait(self, job_id: str, timeout: float | None = None) -> dict[str, Any] | None:
        """Block until the job has finished (or timeout seconds); its status."""
        with self._lock:
            live = self._live.get(job_id)
        if live is not None and live.future is not None:
            try:
                live.future.result(timeout)
            except Exception:
                pass
        return self.status(job_id)

    # -- reading ------------------------------------------------------------------------------
    def status(self, job_id: str) -> dict[str, Any] | None:
        job = self.store.get(job_id)
        if job is None:
            return None
        live = self._live.get(job_id)
        if live is not None and job["state"] == "running":
            job["step"] = max(job["step"], live.step)
        return describe(job)

    def list(self, state: str | None = None, limit: int = 100, offset: int = 0) -> list[dict[str, Any]]:
        """Statuses, newest first, without relax_many's per-structure outcomes (GET one job for those)."""
        out = [self.status(j["id"]) or describe(j) for j in self.store.list(state, limit, offset)]
        for job in out:
            job["structures"] = None
        return out

    def subscribe(self, job_id: str, callback: Callable[[], None]) -> Callable[[], None]:
        """Call `callback()` (from a job thread: keep it short) after every frame and at the job's end;
        returns the function that unsubscribes. A finished job never calls."""
        with self._lock:
            live = self._live.get(job_id)
            if live is None:
                return lambda: None
            live.listeners.append(callback)

        def unsubscribe() -> None:
            with self._lock:
                if callback in live.listeners:
                    live.listeners.remove(callback)
        return unsubscribe

    def _notify(self, live: _Live) -> None:
        with self._lock:
            listeners = list(live.listeners)
        for fn in listeners:
            try:
                fn()
            except Exception:        # a subscriber's failure is its own
                log.exception("job subscriber failed")

    def shutdown(self, wait: bool = True) -> None:
        """Stop: running jobs end after their current step, queued ones never start; all `interrupted`."""
        with self._lock:
            self._closing = True
            lives = list(self._live.items())
        for _, live in lives:
            live.cancel.set()
        self._pool.shutdown(wait=wait, cancel_futures=True)
        self.store.mark_interrupted()
        if self.client is not None and self.owns_client:
            self.client.close()
        if wait:
            self.store.close()


def describe(job: dict[str, Any]) -> dict[str, Any]:
    """A job's public status: the stored row plus progress and timings (seconds)."""
    out = {k: job[k] for k in ("id", "kind", "model", "model_sha256", "state", "reason", "halt", "error",
                               "converged", "n_atoms", "steps", "step", "frames", "created", "started", "finished",
                               "structures")}
    out["parameters"] = job["spec"]
    out["progress"] = min(1.0, job["step"] / job["steps"]) if job["steps"] else 0.0
    end = job["finished"] if job["finished"] is not None else time.time()
    out["seconds"] = (end - job["started"]) if job["started"] is not None else None
    out["seconds_per_step"] = (out["seconds"] / job["step"]) if job["step"] and out["seconds"] else None
    if job["state"] == "done":
        out["progress"] = 1.0
    return out
