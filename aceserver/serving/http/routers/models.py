"""The served models: the list, one model's description, and its parity plots (`plots/` beside the
model file, as `aceserver fit` and the shipped models lay them out). Included under /v1."""
from __future__ import annotations

import asyncio
import re
from pathlib import Path

from fastapi import APIRouter, Depends, Request
from fastapi.responses import FileResponse

from .. import dependencies as deps
from ..error_replies import APIError, error_responses
from ..registry import ModelRegistry, ServedModel
from ..learners import learning_status
from ..schema import ModelInfo, ModelList

PLOT_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,100}\.png$")

router = APIRouter(prefix="/v1")


def _plots_dir(model_path: str | None) -> Path | None:
    return Path(model_path).parent / "plots" if model_path else None


@router.get("/models", response_model=ModelList, summary="List the served models")
async def list_models(registry: ModelRegistry = Depends(deps.registry)) -> dict:
    return {"default": registry.default, "models": [m.info() for m in registry.models.values()]}


@router.get("/models/{name}", response_model=ModelInfo, responses=error_responses(404),
            summary="Describe one model: species, cutoff (Å), basis size, sha256, fit errors, units, learning state "
            "(data versions)")
async def model_info(request: Request, model: ServedModel = Depends(deps.served_model)) -> dict:
    info = model.info()
    info["learning"] = await asyncio.to_thread(learning_status, model.name, request)
    return info


@router.get("/models/{name}/plots", summary="Names of the model's parity plots (PNG)")
async def list_plots(model: ServedModel = Depends(deps.served_model)) -> dict:
    d = _plots_dir(model.path)
    names = sorted(p.name for p in d.glob("*.png") if PLOT_RE.match(p.name)) if d and d.is_dir() else []
    return {"model": model.name, "plots": names}


# `name` is a parameter here as well as in `served_model` so that the OpenAPI document lists the
# path parameters in URL order (the endpoint's own come first)
@router.get("/models/{name}/plots/{file}", response_class=FileResponse, summary="One parity plot (PNG)",
            responses={200: {"content": {"image/png": {}}}})
async def plot(name: str, file: str, model: ServedModel = Depends(deps.served_model)) -> FileResponse:
    d = _plots_dir(model.path)
    if not PLOT_RE.match(file) or d is None or not (d / file).is_file():
        raise APIError(404, "not_found", f"model {name!r} has no plot {file!r}", "file")
    return FileResponse(d / file, media_type="image/png")
