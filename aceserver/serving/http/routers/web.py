"""The web page at `/`; its static files are served from `aceserver/web/` under /ui (mounted by
`create_app`: a router cannot carry a mount) and its data come from /metrics.json and /v1."""
from __future__ import annotations

from pathlib import Path

from fastapi import APIRouter
from fastapi.responses import HTMLResponse

WEB_DIR = Path(__file__).resolve().parents[3] / "web"

router = APIRouter()


@router.get("/", response_class=HTMLResponse, include_in_schema=False)
async def index() -> HTMLResponse:
    return HTMLResponse((WEB_DIR / "index.html").read_text(encoding="utf-8"))
