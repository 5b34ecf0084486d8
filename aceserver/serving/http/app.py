"""The FastAPI application: routes under /v1, health, readiness and metrics.

Request bodies are read here (bounded), then decoded, validated, evaluated and encoded in a worker
thread, so the event loop keeps answering /healthz during long evaluations (the numba kernels
release the GIL).
"""
from __future__ import annotations

import asyncio
import logging
import os
import secrets
import signal
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from contextlib import asynccontextmanager
from dataclasses import dataclass
from typing import Any

from fastapi import APIRouter, Depends, FastAPI, Request
from fastapi.openapi.utils import get_openapi
from fastapi.responses import JSONResponse, Response
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer
from pydantic import ValidationError
from starlette.requests import ClientDisconnect

import aceserver

from . import codec
from .compute import check_limits, evaluate_request
from .errors import APIError, from_validation_error, install_handlers
from .metrics import CONTENT_TYPE as METRICS_CONTENT_TYPE
from .metrics import Metrics, MetricsMiddleware
from .registry import ModelRegistry, ServedModel
from .schema import CalculateRequest, CalculateResponse, ErrorBody, Health, ModelInfo, ModelList
from .web import add_model_plot_routes, add_web_routes

log = logging.getLogger("aceserver.http")


@dataclass
class Settings:
    token: str | None = None                 # bearer token for /v1 (None: no authentication)
    max_atoms: int = 100_000                 # atoms per structure (413 above)
    max_structures: int = 1_000              # structures per request (413 above)
    max_body_bytes: int = 64 * 1024 * 1024   # request body size (413 above)
    workers: int = 0                         # evaluation threads (0: one per CPU this process may use)
    kernel_threads: int | None = 1           # threads inside one evaluation (1: serial kernel; None: numba's)
    watch_interval: float = 0.0              # poll model files every S seconds and hot-swap changed ones (0: off)


class State:
    def __init__(self) -> None:
        self.ready = False
        self.failure: str | None = None
        self.draining = False


def _error_responses(*codes: int) -> dict:
    return {c: {"model": ErrorBody} for c in codes}


def create_app(registry: ModelRegistry, settings: Settings | None = None) -> FastAPI:
    settings = settings or Settings()
    metrics = Metrics()
    state = State()
    cpus = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
    executor = ThreadPoolExecutor(max_workers=settings.workers or cpus, thread_name_prefix="ace-eval")

    @asynccontextmanager
    async def lifespan(app: FastAPI):
        async def warm() -> None:
            try:
                await asyncio.get_running_loop().run_in_executor(executor, registry.warm, settings.kernel_threads)
            except Exception as ex:  # readiness reports it; the server stays up for /healthz
                log.exception("warm-up failed")
                state.failure = f"warm-up failed: {type(ex).__name__}: {ex}"
                return
            state.ready = metrics.ready = True
            log.info("ready: serving %s", ", ".join(registry.models))

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
            executor.shutdown(wait=True, cancel_futures=False)
            reloader.shutdown(wait=False, cancel_futures=True)

    app = FastAPI(
        title="aceserver HTTP API",
        version=aceserver.__version__,
        description="Energies, forces and stresses of atomic cluster expansion (ACE) potentials. "
        "Units: energies eV, lengths Å, forces eV/Å, stress eV/Å³ (ASE Voigt order xx yy zz yz xz xy), "
        "virial eV (W = -V·σ). Bodies are JSON or msgpack (Content-Type / Accept "
        "`application/msgpack`); in msgpack every array is a map {dtype: \"<f8\", shape: [...], "
        "data: <raw little-endian bytes>}.",
        lifespan=lifespan,
    )
    app.state.registry, app.state.settings, app.state.metrics, app.state.ready = registry, settings, metrics, state
    install_handlers(app, on_error=metrics.count_error)
    app.add_middleware(MetricsMiddleware, metrics=metrics)

    bearer = HTTPBearer(auto_error=False, description="Bearer token, required when the server has a token file.")

    async def require_token(credentials: HTTPAuthorizationCredentials | None = Depends(bearer)) -> None:
        if settings.token is None:
            return
        if credentials is None or credentials.scheme.lower() != "bearer":
            raise APIError(401, "unauthorized", "missing bearer token (header `Authorization: Bearer <token>`)",
                           "Authorization", headers={"WWW-Authenticate": "Bearer"})
        if not secrets.compare_digest(credentials.credentials.encode(), settings.token.encode()):
            raise APIError(401, "unauthorized", "wrong bearer token", "Authorization",
                           headers={"WWW-Authenticate": "Bearer"})

    def served(name: str) -> ServedModel:
        m = registry.get(name)
        if m is None:
            raise APIError(404, "unknown_model", f"no model named {name!r}; served: {', '.join(registry.models)}",
                           "name")
        return m

    # the token check (and its OpenAPI security scheme) exists only when a token is configured
    v1 = APIRouter(prefix="/v1", dependencies=[Depends(require_token)] if settings.token is not None else [],
                   responses=_error_responses(*((401, 422) if settings.token is not None else (422,))))

    @v1.get("/models", response_model=ModelList, summary="List the served models")
    async def list_models() -> dict:
        return {"default": registry.default, "models": [m.info() for m in registry.models.values()]}

    @v1.get("/models/{name}", response_model=ModelInfo, responses=_error_responses(404),
            summary="Describe one model: species, cutoff (Å), basis size, sha256, fit errors, units")
    async def model_info(name: str) -> dict:
        return served(name).info()

    def handle(m: ServedModel, body: bytes, codec_in: str, codec_out: str) -> tuple[bytes, int, int, float]:
        try:
            request = CalculateRequest.model_validate(codec.decode(body, codec_in))
        except codec.DecodeError as ex:
            raise APIError(400, "malformed_body", str(ex), ex.field) from None
        except ValidationError as ex:
            raise from_validation_error(ex.errors(include_url=False)) from None
        check_limits(request, settings.max_atoms, settings.max_structures)
        t0 = time.perf_counter()
        results = evaluate_request(m.model, request, m.has_committee, settings.kernel_threads)
        seconds = time.perf_counter() - t0
        payload = {"model": m.name, "sha256": m.sha256, "results": results}
        atoms = sum(len(s.positions) for s in request.structure_list())
        return codec.encode(payload, codec_out), atoms, len(results), seconds

    calc_body = {"$ref": "#/components/schemas/CalculateRequest"}

    @v1.post(
        "/models/{name}/calculate",
        response_model=CalculateResponse,
        summary="Energy (eV), forces (eV/Å), stress (eV/Å³), virial (eV), per-atom energies (eV) of structures",
        responses={
            200: {"content": {codec.MSGPACK: {"schema": {"$ref": "#/components/schemas/CalculateResponse"}}},
                  "description": "Results, one per structure; JSON or msgpack by the Accept header."},
            **_error_responses(400, 404, 413, 415, 503),
        },
        openapi_extra={"requestBody": {"required": True, "content": {
            "application/json": {"schema": calc_body}, codec.MSGPACK: {"schema": calc_body}}}},
    )
    async def calculate(name: str, request: Request) -> Response:
        start = time.perf_counter()
        m = served(name)
        if not state.ready:
            raise APIError(503, "not_ready", state.failure or "models are still warming up; retry shortly",
                           headers={"Retry-After": "1"})
        codec_in = codec.request_codec(request.headers.get("content-type"))
        if codec_in is None:
            raise APIError(415, "unsupported_media_type",
                           f"Content-Type must be application/json, {codec.MSGPACK} or {codec.EXTXYZ}", "Content-Type")
        body = await read_body(request, settings.max_body_bytes)
        codec_out = codec.response_codec(request.headers.get("accept"))
        loop = asyncio.get_running_loop()
        payload, atoms, structures, seconds = await loop.run_in_executor(executor, handle, m, body, codec_in, codec_out)
        metrics.count_evaluated(m.name, atoms, structures)
        # Server-Timing (ms): time in model.evaluate and in this handler, for clients measuring overhead
        timing = f"evaluate;dur={1e3 * seconds:.3f}, handler;dur={1e3 * (time.perf_counter() - start):.3f}"
        return Response(payload, media_type=codec_out, headers={"Server-Timing": timing})

    add_model_plot_routes(v1, served)
    app.include_router(v1)
    add_web_routes(app, metrics)

    @app.get("/livez", response_model=Health, summary="Liveness (Kubernetes-style probe): the process answers")
    @app.get("/healthz", response_model=Health, summary="Liveness: the process answers")
    async def healthz() -> dict:
        return {"status": "ok", "models": list(registry.models)}

    @app.get("/readyz", response_model=Health, responses={503: {"model": Health}},
             summary="Readiness: models loaded and kernels warmed")
    async def readyz():
        if state.ready and not state.draining:
            return {"status": "ready", "models": list(registry.models)}
        status = "draining" if state.draining else ("failed" if state.failure else "starting")
        return JSONResponse({"status": status, "message": state.failure, "models": list(registry.models)},
                            status_code=503)

    @app.get("/metrics", response_class=Response, summary="Prometheus metrics (text format 0.0.4)",
             responses={200: {"content": {"text/plain": {"schema": {"type": "string"}}}}})
    async def prometheus_metrics() -> Response:
        return Response(metrics.render(), media_type=METRICS_CONTENT_TYPE)

    def openapi() -> dict[str, Any]:
        if app.openapi_schema is None:
            schema = get_openapi(title=app.title, version=app.version, description=app.description, routes=app.routes)
            components = schema.setdefault("components", {}).setdefault("schemas", {})
            extra = CalculateRequest.model_json_schema(ref_template="#/components/schemas/{model}")
            components.update(extra.pop("$defs", {}))
            components["CalculateRequest"] = extra
            for path, item in schema["paths"].items():   # document which model names exist
                for op in item.values():
                    for param in op.get("parameters", []):
                        if path.startswith("/v1/models/{name}") and param["name"] == "name":
                            param["schema"] = {"type": "string", "enum": list(registry.models), "title": "Name"}
                            param["description"] = "Name of a served model."
            app.openapi_schema = schema
        return app.openapi_schema

    app.openapi = openapi
    return app


async def read_body(request: Request, limit: int) -> bytes:
    """The request body, or 413 as soon as it is known to exceed `limit` bytes."""
    declared = request.headers.get("content-length")
    if declared is not None and declared.isdigit() and int(declared) > limit:
        raise APIError(413, "too_large", f"request body of {int(declared)} bytes exceeds the limit of {limit} bytes",
                       "body")
    chunks, size = [], 0
    try:
        async for chunk in request.stream():
            size += len(chunk)
            if size > limit:
                raise APIError(413, "too_large", f"request body exceeds the limit of {limit} bytes", "body")
            chunks.append(chunk)
    except ClientDisconnect:
        raise APIError(400, "client_disconnected", "the client went away while sending the body", "body") from None
    return b"".join(chunks)
