"""The server's counters: /metrics in Prometheus text format (`router`, open for scrapers), and
/metrics.json for the web page (`feed`: the same counters with latency percentiles, the served
models and the latest hot reloads; behind the token when the server has one)."""
from __future__ import annotations

from fastapi import APIRouter, Depends
from fastapi.responses import Response

from .. import dependencies as deps
from ..counters import CONTENT_TYPE, Metrics
from ..registry import ModelRegistry

router = APIRouter()
feed = APIRouter()


@feed.get("/metrics.json", summary="The server's counters and latency percentiles as JSON (the web page's feed)")
async def metrics_json(metrics: Metrics = Depends(deps.metrics),
                       registry: ModelRegistry = Depends(deps.registry)) -> dict:
    snap = metrics.snapshot()
    snap["models"] = [{"name": m.name, "sha256": m.sha256, "loaded_at": m.loaded_at}
                      for m in registry.models.values()]
    snap["recent_reloads"] = [r.reply() for r in list(registry.reloads)[-10:]]
    return snap


@router.get("/metrics", response_class=Response, summary="Prometheus metrics (text format 0.0.4)",
            responses={200: {"content": {"text/plain": {"schema": {"type": "string"}}}}})
async def prometheus_metrics(metrics: Metrics = Depends(deps.metrics)) -> Response:
    return Response(metrics.render(), media_type=CONTENT_TYPE)
