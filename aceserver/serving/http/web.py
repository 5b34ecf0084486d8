"""The web page at `/` (static files from `aceserver/web/`), its JSON feed `/metrics.json`, and the
parity plots of served models (`/v1/models/{name}/plots/...`, from the `plots/` folder beside the
model file, as `aceserver fit` and the shipped models lay them out)."""
from __future__ import annotations

import re
from pathlib import Path
from typing import Callable

from fastapi import APIRouter, FastAPI
from fastapi.responses import FileResponse, HTMLResponse
from fastapi.staticfiles import StaticFiles

from .errors import APIError

WEB_DIR = Path(__file__).resolve().parents[2] / "web"
PLOT_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,100}\.png$")


def _plots_dir(model_path: str | None) -> Path | None:
    return Path(model_path).parent / "plots" if model_path else None


def add_model_plot_routes(v1: APIRouter, served: Callable) -> None:
    @v1.get("/models/{name}/plots", summary="Names of the model's parity plots (PNG)")
    async def list_plots(name: str) -> dict:
        d = _plots_dir(served(name).path)
        names = sorted(p.name for p in d.glob("*.png") if PLOT_RE.match(p.name)) if d and d.is_dir() else []
        return {"model": name, "plots": names}

    @v1.get("/models/{name}/plots/{file}", response_class=FileResponse, summary="One parity plot (PNG)",
            responses={200: {"content": {"image/png": {}}}})
    async def plot(name: str, file: str) -> FileResponse:
        d = _plots_dir(served(name).path)
        if not PLOT_RE.match(file) or d is None or not (d / file).is_file():
            raise APIError(404, "not_found", f"model {name!r} has no plot {file!r}", "file")
        return FileResponse(d / file, media_type="image/png")


def add_web_routes(app: FastAPI, metrics) -> None:
    registry = app.state.registry

    @app.get("/", response_class=HTMLResponse, include_in_schema=False)
    async def index() -> HTMLResponse:
        return HTMLResponse((WEB_DIR / "index.html").read_text(encoding="utf-8"))

    @app.get("/metrics.json", summary="The server's counters and latency percentiles as JSON (the web page's feed)")
    async def metrics_json() -> dict:
        snap = metrics.snapshot()
        snap["models"] = [{"name": m.name, "sha256": m.sha256, "loaded_at": m.loaded_at}
                          for m in registry.models.values()]
        snap["recent_reloads"] = [vars(r) for r in list(registry.reloads)[-10:]]
        return snap

    app.mount("/ui", StaticFiles(directory=WEB_DIR), name="ui")
