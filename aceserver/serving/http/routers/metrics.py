"""The server's counters: /metrics in Prometheus text format (`router`, open for scrapers), and
/metrics.json for the web page (`feed`: the same counters with latency percentiles, the served
models, the latest hot reloads and the process's settings: BLAS threads as set and as read now,
the garbage collector's frozen objects and collections; behind the token when the server has one)."""
from __future__ import annotations

import asyncio

from fastapi import APIRouter, Depends, Request
from fastapi.responses import Response

from .. import dependencies as deps
from ..counters import CONTENT_TYPE, Metrics
from ..registry import ModelRegistry
from ..settings import Settings
from aceserver.serving import process

router = APIRouter()
feed = APIRouter()


@feed.get("/metrics.json", summary="The server's counters and latency percentiles as JSON (the web page's feed)")
async def metrics_json(request: Request, metrics: Metrics = Depends(deps.metrics),
                       registry: ModelRegistry = Depends(deps.registry),
                       settings: Settings = Depends(deps.settings)) -> dict:
    snap = metrics.snapshot()
    snap["models"] = [{"name": m.name, "sha256": m.sha256, "loaded_at": m.loaded_at}
                      for m in registry.models.values()]
    snap["recent_reloads"] = [r.reply() for r in list(registry.reloads)[-10:]]
    # read now (~1 ms: threadpoolctl lists the loaded libraries), not remembered from the start
    snap["process"] = {"blas_threads": settings.blas_threads, "blas": await asyncio.to_thread(process.blas_threads),
                       "gc_freeze": settings.gc_freeze, "gc": request.app.state.heap.status()}
    return snap


@router.get("/metrics", response_class=Response, summary="Prometheus metrics (text format 0.0.4)",
            responses={200: {"content": {"text/plain": {"schema": {"type": "string"}}}}})
async def prometheus_metrics(metrics: Metrics = Depends(deps.metrics)) -> Response:
    return Response(metrics.render(), media_type=CONTENT_TYPE)
