"""Pages for people: the web page at `/` (its static files are served from `aceserver/web/` under
/ui, mounted by `create_app`: a router cannot carry a mount; its data come from /metrics.json and
/v1) and the API reference: /openapi.json, /docs (Swagger UI) and /redoc. The page and its files
hold no data and stay open; `reference` carries the token check when the server has a token."""
from __future__ import annotations

from pathlib import Path

from fastapi import APIRouter, Request
from fastapi.openapi.docs import get_redoc_html, get_swagger_ui_html
from fastapi.responses import HTMLResponse, JSONResponse

WEB_DIR = Path(__file__).resolve().parents[3] / "web"

router = APIRouter()
reference = APIRouter(include_in_schema=False)


@router.get("/", response_class=HTMLResponse, include_in_schema=False)
async def index() -> HTMLResponse:
    return HTMLResponse((WEB_DIR / "index.html").read_text(encoding="utf-8"))


@reference.get("/openapi.json")
async def openapi_document(request: Request) -> JSONResponse:
    return JSONResponse(request.app.openapi())


@reference.get("/docs")
async def swagger_ui(request: Request) -> HTMLResponse:
    return get_swagger_ui_html(openapi_url="/openapi.json", title=f"{request.app.title} - Swagger UI")


@reference.get("/redoc")
async def redoc(request: Request) -> HTMLResponse:
    return get_redoc_html(openapi_url="/openapi.json", title=f"{request.app.title} - ReDoc")
