"""/v1/jobs: relaxations, MD runs and batched relaxations (`relax_many`) as server-side jobs (`aceserver.jobs`), their status, their
frames streamed as they are made, and cancellation. Same token, body limit and error documents as
calculate. Jobs run on the job manager's own threads (`--max-jobs`), not on the calculate threads.

Frames (`GET /v1/jobs/{id}/frames`, `format`): `ndjson` (one JSON frame a line), `sse` (server-sent
events `frame`, then one `end` carrying the job's status), `msgpack` (msgpack maps one after the
other; arrays as {dtype, shape, data}); all three stream while the job runs and end once it has
finished and every frame is sent. `extxyz` and `traj` (ASE trajectory) are whole files, once the
job has finished.
"""
from __future__ import annotations

import asyncio
import json
import os
import tempfile
from typing import Any, AsyncIterator, Callable, Literal

import numpy as np
from ase import Atoms
from fastapi import APIRouter, Depends, Path, Query, Request
from fastapi.responses import JSONResponse, Response, StreamingResponse

from aceserver.jobs import JobInputError, JobManager, JobQueueFull, JobTooLarge
from aceserver.jobs import frames as jobframes
from aceserver.jobs.store import FINISHED

from .. import codec
from .. import dependencies as deps
from ..compute import check_document
from ..error_replies import APIError, DecodeError, error_responses
from ..job_schema import FRAME_DOC, JobList, JobStatus, JobSubmitted, job_spec, not_found, validate_request
from ..registry import ModelRegistry
from ..settings import Settings

router = APIRouter(prefix="/v1/jobs", tags=["jobs"])
HEARTBEAT_S = 15.0              # an SSE comment this often while a job makes no frames (keeps proxies open)
JOB_BODY = {"oneOf": [{"$ref": "#/components/schemas/RelaxJobRequest"},
                      {"$ref": "#/components/schemas/MDJobRequest"},
                      {"$ref": "#/components/schemas/RelaxManyJobRequest"}],
            "discriminator": {"propertyName": "kind"}}
JobId = Path(..., pattern="^[0-9a-f]{16}$", description="A job's id (16 hex digits), as POST /v1/jobs gave it.")
MEDIA = {"ndjson": "application/x-ndjson", "sse": "text/event-stream", "msgpack": codec.MSGPACK,
         "extxyz": "chemical/x-extxyz", "traj": "application/octet-stream"}


async def manager(request: Request) -> JobManager:
    jobs = getattr(request.app.state, "jobs", None)
    if jobs is None:
        raise APIError(404, "jobs_disabled", "this server runs no jobs: start it with --jobs-dir DIR")
    return jobs


def _atoms(s) -> Atoms:
    return Atoms(numbers=s.atomic_numbers(), positions=np.asarray(s.positions, dtype=float).reshape(-1, 3),
                 cell=np.asarray(s.cell, dtype=float) if s.cell is not None else np.zeros((3, 3)), pbc=s.pbc)


def submit_body(jobs: JobManager, registry: ModelRegistry, body: bytes, codec_in: str,
                settings: Settings) -> list[str]:
    """Decode, check, validate and queue (in a worker thread); the new jobs' ids."""
    if codec_in == codec.EXTXYZ:
        raise APIError(415, "unsupported_media_type", f"a job request is JSON or {codec.MSGPACK}", "Content-Type")
    try:
        doc = codec.decode(body, codec_in, settings.max_atoms, settings.max_structures)
    except DecodeError as ex:
        raise APIError(400, "malformed_body", str(ex), ex.field) from None
    if isinstance(doc, dict):           # structure and atom counts before pydantic builds anything per atom
        check_document({k: doc[k] for k in ("structure", "structures") if k in doc}, settings.max_atoms,
                       settings.max_structures)
    request = validate_request(doc)
    name = request.model or registry.default
    m = registry.get(name)
    if m is None:
        raise APIError(404, "unknown_model", f"model: no model named {name!r}; served: {', '.join(registry.models)}",
                       "model")
    spec = job_spec(request)
    named = [(where, _atoms(s)) for where, s in request.named_structures()]
    try:
        if spec.kind == "relax_many":    # one job; a structure that cannot run is reported in it by index
            return [jobs.submit_many(m.model, m.name, m.sha256, [atoms for _, atoms in named], spec,
                                     source=m.path)]
        for where, atoms in named:       # every structure is checked before any is queued
            jobs.check(m.model, atoms, spec, where, m.path)
        return [jobs.submit(m.model, m.name, m.sha256, atoms, spec, where, m.path) for where, atoms in named]
    except JobTooLarge as ex:
        raise APIError(413, "too_large", str(ex), ex.field) from None
    except JobInputError as ex:
        raise APIError(422, "invalid_input", str(ex), ex.field) from None
    except JobQueueFull as ex:
        raise APIError(503, "too_many_jobs", str(ex), headers={"Retry-After": "10"}) from None


@router.post(
    "", status_code=202, response_model=JobSubmitted,
    summary="Start relaxations or MD runs on the server (one job per structure; `relax_many`: one job relaxing "
    "all `structures` in batched steps); answers at once with the ids",
    responses={**error_responses(400, 404, 413, 415, 503)},
    openapi_extra={"requestBody": {"required": True, "content": {
        "application/json": {"schema": JOB_BODY}, codec.MSGPACK: {"schema": JOB_BODY}}}},
)
async def submit(request: Request,
                 jobs: JobManager = Depends(manager),
                 ready: None = Depends(deps.require_ready),
                 codecs: tuple[str, str] = Depends(deps.body_codecs),
                 body: bytes = Depends(deps.limited_body),
                 registry: ModelRegistry = Depends(deps.registry),
                 settings: Settings = Depends(deps.settings)) -> JSONResponse:
    ids = await asyncio.get_running_loop().run_in_executor(
        request.app.state.executor, submit_body, jobs, registry, body, codecs[0], settings)
    statuses = [jobs.status(i) for i in ids]
    return JSONResponse({"ids": ids, "jobs": statuses}, status_code=202, headers={"Location": f"/v1/jobs/{ids[0]}"})


@router.get("", response_model=JobList, summary="Jobs, newest first (an empty list with `enabled: false` on a "
            "server without --jobs-dir)")
async def list_jobs(request: Request,
                    state: Literal["queued", "running", "done", "halted", "failed", "cancelled",
                                   "interrupted"] | None = Query(None, description="Only jobs in this state."),
                    limit: int = Query(100, ge=1, le=1000), offset: int = Query(0, ge=0)) -> dict:
    jobs = getattr(request.app.state, "jobs", None)
    if jobs is None:
        return {"jobs": [], "enabled": False}
    return {"jobs": await asyncio.to_thread(jobs.list, state, limit, offset), "enabled": True}


async def _status(jobs: JobManager, job_id: str) -> dict[str, Any]:
    status = await asyncio.to_thread(jobs.status, job_id)
    if status is None:
        raise not_found(job_id)
    return status


@router.get("/{job_id}", response_model=JobStatus, summary="A job's state, progress and timings",
            responses=error_responses(404))
async def get_job(job_id: str = JobId, jobs: JobManager = Depends(manager)) -> dict:
    return await _status(jobs, job_id)


@router.delete("/{job_id}", response_model=JobStatus, responses=error_responses(404),
               summary="Cancel a job: a queued one at once, a running one after its current step")
async def cancel_job(job_id: str = JobId, jobs: JobManager = Depends(manager)) -> dict:
    status = await asyncio.to_thread(jobs.cancel, job_id)
    if status is None:
        raise not_found(job_id)
    return status


def _ndjson(blob: bytes) -> bytes:
    return json.dumps(jobframes.to_json(jobframes.decode(blob)), separators=(",", ":")).encode() + b"\n"


def _sse(blob: bytes) -> bytes:
    frame = jobframes.to_json(jobframes.decode(blob))
    return f"event: frame\nid: {frame['index']}\ndata: {json.dumps(frame, separators=(',', ':'))}\n\n".encode()


async def stream_frames(jobs: JobManager, job_id: str, start: int, encode: Callable[[bytes], bytes],
                        sse: bool) -> AsyncIterator[bytes]:
    """The job's frames from `start`, each as soon as it is stored; ends once the job has finished."""
    loop = asyncio.get_running_loop()
    new = asyncio.Event()
    def wake() -> None:                   # from a job thread
        try:
            loop.call_soon_threadsafe(new.set)
        except RuntimeError:              # the event loop has closed: the server is stopping
            pass
    unsubscribe = jobs.subscribe(job_id, wake)
    index = start
    try:
        while True:
            new.clear()
            job = await asyncio.to_thread(jobs.store.get, job_id)   # the state first: frames come before the end
            if job is None:
                return
            # read and encode off the event loop (a frame of many atoms takes milliseconds to encode)
            chunks = await asyncio.to_thread(lambda: [encode(b) for b in jobs.store.frames(job_id, index, index + 64)])
            for chunk in chunks:
                yield chunk
            index += len(chunks)
            if chunks:
                continue
            if job["state"] in FINISHED:
                if sse:
                    status = await asyncio.to_thread(jobs.status, job_id)
                    yield f"event: end\ndata: {json.dumps(status, separators=(',', ':'))}\n\n".encode()
                return
            try:
                await asyncio.wait_for(new.wait(), HEARTBEAT_S)
            except asyncio.TimeoutError:
                if sse:
                    yield b": waiting for frames\n\n"
    finally:
        unsubscribe()


def _whole_file(jobs: JobManager, job_id: str, fmt: str, start: int) -> bytes:
    decoded = (jobframes.decode(b) for b in jobs.store.frames(job_id, start))
    if fmt == "extxyz":
        return jobframes.extxyz(decoded)
    fd, path = tempfile.mkstemp(suffix=".traj")
    os.close(fd)
    try:
        jobframes.traj(decoded, path)
        with open(path, "rb") as fh:
            return fh.read()
    finally:
        os.unlink(path)


@router.get(
    "/{job_id}/frames", summary="A job's frames: streamed while it runs (ndjson, sse, msgpack), or a whole file "
    "once it has finished (extxyz, traj)", description=FRAME_DOC,
    responses={200: {"content": {v: {} for v in MEDIA.values()}, "description": FRAME_DOC},
               **error_responses(404, 409)})
async def get_frames(request: Request, job_id: str = JobId, jobs: JobManager = Depends(manager),
                     format: Literal["ndjson", "sse", "msgpack", "extxyz", "traj"] = Query(
                         "ndjson", description="ndjson, sse, msgpack: streamed as made; extxyz, traj: the whole "
                         "trajectory, once the job has finished."),
                     start: int = Query(0, ge=0, description="First frame index to send (SSE: also after the "
                                        "`Last-Event-ID` header's frame).")) -> Response:
    job = await _status(jobs, job_id)
    if format in ("extxyz", "traj"):
        if job["state"] not in FINISHED:
            raise APIError(409, "job_not_finished", f"format: {format} is written once the job has finished (state "
                           f"{job['state']}); stream ndjson, sse or msgpack meanwhile", "format")
        data = await asyncio.to_thread(_whole_file, jobs, job_id, format, start)
        ext = "xyz" if format == "extxyz" else "traj"
        return Response(data, media_type=MEDIA[format],
                        headers={"Content-Disposition": f'attachment; filename="{job_id}.{ext}"'})
    last_event = request.headers.get("last-event-id", "")
    if format == "sse" and last_event.isdigit():        # an EventSource reconnecting: go on after that frame
        start = max(start, int(last_event) + 1)
    encode = {"ndjson": _ndjson, "sse": _sse, "msgpack": bytes}[format]
    headers = {"Cache-Control": "no-cache", "X-Accel-Buffering": "no"}
    return StreamingResponse(stream_frames(jobs, job_id, start, encode, format == "sse"), media_type=MEDIA[format],
                             headers=headers)
