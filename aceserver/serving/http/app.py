"""The FastAPI application: `create_app` puts the server's objects on `app.state`, installs the
error handlers, the metrics and drain middleware, includes the routers (`routers/`), and
documents the API; `lifespan` warms the models, watches their files and drains on shutdown; with
`settings.gc_freeze` it freezes the heap once warm and again after each model swap, when the model
swapped out is gone (`serving.process.Heap`).

With a token, everything but the probes (/healthz, /livez, /readyz), /metrics and the web page's
own files (/, /ui/) asks for it: /v1, /metrics.json, /openapi.json, /docs and /redoc.
"""
from __future__ import annotations

import asyncio
import gc
import logging
import os
import signal
import threading
from concurrent.futures import ThreadPoolExecutor
from contextlib import asynccontextmanager
from functools import partial
from typing import Any

from fastapi import Depends, FastAPI
from fastapi.openapi.utils import get_openapi
from fastapi.staticfiles import StaticFiles

import aceserver
from aceserver.jobs import JobLimits, JobManager
from aceserver.jobs import cluster as jobs_cluster
from aceserver.serving.process import Heap

from . import packed
from .counters import Metrics, MetricsMiddleware
from .dependencies import require_token
from .error_replies import error_responses, install_handlers
from .lifecycle import Drain, DrainMiddleware
from .registry import ModelRegistry, without_paths
from .learners import open_learners
from .learn_schema import DataRequest
from .routers import calculate, jobs, learn, models, probes, web
from .routers import metrics as metrics_routes
from .job_schema import MDJobRequest, RelaxJobRequest, RelaxManyJobRequest
from .schema import CalculateRequest
from .settings import Settings, State

log = logging.getLogger("aceserver.http")

DESCRIPTION = (
    "Energies, forces and stresses of atomic cluster expansion (ACE) potentials. "
    "Units: energies eV, lengths Å, forces eV/Å, stress eV/Å³ (ASE Voigt order xx yy zz yz xz xy), "
    "virial eV (W = -V·σ). Bodies are JSON or msgpack (Content-Type / Accept "
    "`application/msgpack`); in msgpack every array is a map {dtype: \"<f8\", shape: [...], "
    "data: <raw little-endian bytes>}.")


def create_app(registry: ModelRegistry, settings: Settings | None = None, fitter: Any = None) -> FastAPI:
    """The application. `fitter`: the incremental fitter (`aceserver.fitting.incremental`), needed when
    `settings.learn` names models (the commands pass it; tests may pass another with its four functions)."""
    settings = settings or Settings()
    cpus = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
    # the API reference routes are `web.reference`'s, so that they can carry the token check
    app = FastAPI(title="aceserver HTTP API", version=aceserver.__version__, description=DESCRIPTION,
                  lifespan=lifespan, openapi_url=None, docs_url=None, redoc_url=None)
    app.state.registry, app.state.settings, app.state.metrics = registry, settings, Metrics()
    app.state.server_state, app.state.drain, app.state.heap = State(), Drain(), Heap()
    app.state.executor = ThreadPoolExecutor(max_workers=settings.workers or cpus, thread_name_prefix="ace-eval")
    app.state.jobs = None
    if settings.jobs_dir is not None:
        client = None if settings.scheduler is None else jobs_cluster.connect(settings.scheduler)
        app.state.jobs = JobManager(
            settings.jobs_dir, settings.max_jobs or max(1, cpus // 2), settings.jobs_ttl_hours,
            JobLimits(settings.jobs_max_atom_steps, settings.jobs_max_frame_atoms, settings.jobs_max_queued), client)
        app.state.jobs.owns_client = client is not None
    app.state.learners = open_learners(registry, settings, app.state.metrics, fitter)
    install_handlers(app, on_error=app.state.metrics.count_error)
    app.add_middleware(DrainMiddleware, drain=app.state.drain, on_error=app.state.metrics.count_error)
    app.add_middleware(MetricsMiddleware, metrics=app.state.metrics)   # outermost: it sees the drain's 503s

    # the token check (and its OpenAPI security scheme) exists only when a token is configured
    token = [Depends(require_token)] if settings.token is not None else []
    v1 = {"dependencies": token, "responses": error_responses(*((401, 422) if token else (422,)))}
    app.include_router(models.router, **v1)
    app.include_router(calculate.router, **v1)
    app.include_router(jobs.router, **v1)
    app.include_router(learn.router, **v1)
    app.include_router(web.router)
    app.include_router(web.reference, dependencies=token)
    app.mount("/ui", StaticFiles(directory=web.WEB_DIR), name="ui")
    app.include_router(probes.router)
    app.include_router(metrics_routes.router)
    app.include_router(metrics_routes.feed, dependencies=token, responses=error_responses(401) if token else None)
    app.openapi = partial(openapi, app)
    return app


@asynccontextmanager
async def lifespan(app: FastAPI):
    """Warm the models in the background (readiness waits for it), hot-swap changed model files
    (the watcher, SIGHUP); on shutdown the evaluations in flight have finished, or were cut at
    the drain deadline (`server.Server`, `lifecycle.Drain`): those are not waited for."""
    registry, settings, metrics = app.state.registry, app.state.settings, app.state.metrics
    state, executor, heap = app.state.server_state, app.state.executor, app.state.heap
    loop = asyncio.get_running_loop()
    heap.install()
    refreezing: asyncio.Task | None = None

    async def refreeze() -> None:
        # a freeze waits while a swapped-out model is alive (a request or job still on it)
        delay = 0.5
        while not heap.frozen:
            if not await asyncio.to_thread(heap.freeze):
                await asyncio.sleep(delay)
                delay = min(2 * delay, 30.0)
        log.info("garbage collector: %d objects frozen", gc.get_freeze_count())

    def swapped_out(old) -> None:          # on the loop: registry.on_swap, from the reload or refit thread
        nonlocal refreezing
        heap.release(old.model)
        if refreezing is None or refreezing.done():
            refreezing = asyncio.ensure_future(refreeze())
            tasks.add(refreezing)
            refreezing.add_done_callback(tasks.discard)

    if settings.gc_freeze:
        registry.on_swap = lambda old: loop.call_soon_threadsafe(swapped_out, old)

    async def warm() -> None:
        try:
            await asyncio.get_running_loop().run_in_executor(executor, registry.warm, settings.kernel_threads)
            if settings.gc_freeze:    # what start-up made lives as long as the process
                await refreeze()
        except Exception as ex:  # readiness reports it; the server stays up for /healthz
            log.exception("warm-up failed")
            state.failure = without_paths(f"warm-up failed: {type(ex).__name__}: {ex}")
            return
        state.ready = metrics.ready = True
        log.info("ready: serving %s", ", ".join(registry.models))
        for learner in app.state.learners.values():      # refits of data left by a previous server start now
            learner.start()

    reloader = ThreadPoolExecutor(max_workers=1, thread_name_prefix="ace-reload")

    async def reload(force: bool) -> None:
        if not state.ready:               # the first load is still warming; nothing to swap yet
            return
        done = await asyncio.get_running_loop().run_in_executor(
            reloader, registry.reload, force, settings.kernel_threads)
        for r in done:
            metrics.count_reload(r.name, r.result)

    async def watch() -> None:
        while True:
            await asyncio.sleep(settings.watch_interval)
            try:
                await reload(False)
            except Exception:             # never let the watcher die; the old models keep serving
                log.exception("model file watch failed")

    def on_sighup() -> None:
        log.info("SIGHUP: reloading model files")
        tasks.add(t := asyncio.ensure_future(reload(True)))
        t.add_done_callback(tasks.discard)

    tasks = {asyncio.create_task(warm())}
    if settings.watch_interval > 0:
        tasks.add(asyncio.create_task(watch()))
    sighup = hasattr(signal, "SIGHUP") and threading.current_thread() is threading.main_thread()
    if sighup:
        asyncio.get_running_loop().add_signal_handler(signal.SIGHUP, on_sighup)
    try:
        yield
    finally:
        state.draining = True
        metrics.ready = False
        if sighup:
            asyncio.get_running_loop().remove_signal_handler(signal.SIGHUP)
        for t in list(tasks):
            t.cancel()
        for learner in app.state.learners.values():      # a refit in progress finishes or is dropped; the log
            learner.stop()                                 # keeps its data for the next start
        if app.state.jobs is not None:      # running jobs stop after their current step: `interrupted`
            await asyncio.to_thread(app.state.jobs.shutdown)
        executor.shutdown(wait=not app.state.drain.expired, cancel_futures=app.state.drain.expired)
        reloader.shutdown(wait=False, cancel_futures=True)
        registry.on_swap = None
        heap.uninstall()                    # thawed: a process that embeds the app is left as it was


def openapi(app: FastAPI) -> dict[str, Any]:
    """The OpenAPI document, built once: the request schema in full (the calculate route reads its
    body itself, so FastAPI does not see it) and the served model names as an enum."""
    if app.openapi_schema is None:
        schema = get_openapi(title=app.title, version=app.version, description=app.description, routes=app.routes)
        components = schema.setdefault("components", {}).setdefault("schemas", {})
        extra = CalculateRequest.model_json_schema(ref_template="#/components/schemas/{model}")
        components.update(extra.pop("$defs", {}))
        components["CalculateRequest"] = extra
        components.update(packed.openapi_components())      # the packed batch (msgpack)
        for cls in (RelaxJobRequest, MDJobRequest, RelaxManyJobRequest, DataRequest):     # the jobs and data routes read their bodies too
            extra = cls.model_json_schema(ref_template="#/components/schemas/{model}")
            components.update(extra.pop("$defs", {}))
            components[cls.__name__] = extra
        for path, item in schema["paths"].items():   # document which model names exist
            for op in item.values():
                for param in op.get("parameters", []):
                    if path.startswith("/v1/models/{name}") and param["name"] == "name":
                        param["schema"] = {"type": "string",
                                           "enum": list(app.state.registry.models), "title": "Name"}
                        param["description"] = "Name of a served model."
        app.openapi_schema = schema
    return app.openapi_schema
