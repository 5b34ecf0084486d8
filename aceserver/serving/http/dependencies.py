"""FastAPI dependencies shared by the routers: the server's objects (on `request.app.state`, put
there by `create_app`), the bearer-token check, the served model a path names, readiness, and the
limit on a request body's size. The other limits apply as early as each can be seen: while the
body is decoded (`codec`, `extxyz.scan`), on the decoded document before validation
(`compute.check_document`), and in each structure's neighbour search (the pair budget).

Every dependency is `async def`: FastAPI would run a plain `def` in its thread pool.
"""
from __future__ import annotations

import secrets
import time
from concurrent.futures import ThreadPoolExecutor

from fastapi import Depends, Request
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer
from starlette.requests import ClientDisconnect

from . import codec
from .error_replies import APIError
from .counters import Metrics
from .registry import ModelRegistry, ServedModel
from .settings import Settings, State

bearer = HTTPBearer(auto_error=False, description="Bearer token, required when the server has a token file.")


async def registry(request: Request) -> ModelRegistry:
    return request.app.state.registry


async def settings(request: Request) -> Settings:
    return request.app.state.settings


async def metrics(request: Request) -> Metrics:
    return request.app.state.metrics


async def state(request: Request) -> State:
    return request.app.state.server_state


async def executor(request: Request) -> ThreadPoolExecutor:
    """The evaluation threads (decode, validate, evaluate and encode run there, off the event loop)."""
    return request.app.state.executor


async def require_token(request: Request, credentials: HTTPAuthorizationCredentials | None = Depends(bearer)) -> None:
    """401 unless the request sends the server's bearer token (installed on /v1 only when there is one)."""
    token = request.app.state.settings.token
    if token is None:
        return
    if credentials is None or credentials.scheme.lower() != "bearer":
        raise APIError(401, "unauthorized", "missing bearer token (header `Authorization: Bearer <token>`)",
                       "Authorization", headers={"WWW-Authenticate": "Bearer"})
    if not secrets.compare_digest(credentials.credentials.encode(), token.encode()):
        raise APIError(401, "unauthorized", "wrong bearer token", "Authorization",
                       headers={"WWW-Authenticate": "Bearer"})


async def served_model(name: str, request: Request) -> ServedModel:
    """The model the path names, taken once so that a hot swap never mixes two models in one reply;
    404 `unknown_model` when no model has that name."""
    registry = request.app.state.registry
    m = registry.get(name)
    if m is None:
        raise APIError(404, "unknown_model", f"no model named {name!r}; served: {', '.join(registry.models)}",
                       "name")
    return m


async def started_at() -> float:
    """perf_counter() when a handler's own work begins (after authentication), for Server-Timing."""
    return time.perf_counter()


async def require_ready(request: Request) -> None:
    """503 `not_ready` (Retry-After: 1) until the models are warmed, with the warm-up failure if any."""
    state = request.app.state.server_state
    if not state.ready:
        raise APIError(503, "not_ready", state.failure or "models are still warming up; retry shortly",
                       headers={"Retry-After": "1"})


async def body_codecs(request: Request) -> tuple[str, str]:
    """(request codec from Content-Type, response codec from Accept); 415 for a Content-Type that
    is not JSON, msgpack or extended XYZ."""
    codec_in = codec.request_codec(request.headers.get("content-type"))
    if codec_in is None:
        raise APIError(415, "unsupported_media_type",
                       f"Content-Type must be application/json, {codec.MSGPACK} or {codec.EXTXYZ}", "Content-Type")
    return codec_in, codec.response_codec(request.headers.get("accept"))


async def limited_body(request: Request) -> bytes:
    """The request body, at most `Settings.max_body_bytes` (413 above)."""
    return await read_body(request, request.app.state.settings.max_body_bytes)


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
