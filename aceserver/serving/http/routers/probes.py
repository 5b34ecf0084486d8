"""Liveness and readiness probes (Kubernetes-style): /healthz and /livez answer while the process
does; /readyz answers 200 only once the models are loaded and warmed, and 503 while starting,
after a failed warm-up, or while draining."""
from __future__ import annotations

from fastapi import APIRouter, Depends
from fastapi.responses import JSONResponse

from .. import dependencies as deps
from ..registry import ModelRegistry
from ..schema import Health
from ..settings import State

router = APIRouter()


@router.get("/livez", response_model=Health, summary="Liveness (Kubernetes-style probe): the process answers")
@router.get("/healthz", response_model=Health, summary="Liveness: the process answers")
async def healthz(registry: ModelRegistry = Depends(deps.registry)) -> dict:
    return {"status": "ok", "models": list(registry.models)}


@router.get("/readyz", response_model=Health, responses={503: {"model": Health}},
            summary="Readiness: models loaded and kernels warmed")
async def readyz(registry: ModelRegistry = Depends(deps.registry), state: State = Depends(deps.state)):
    if state.ready and not state.draining:
        return {"status": "ready", "models": list(registry.models)}
    status = "draining" if state.draining else ("failed" if state.failure else "starting")
    return JSONResponse({"status": status, "message": state.failure, "models": list(registry.models)},
                        status_code=503)
