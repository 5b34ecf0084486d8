"""API errors and the handlers that turn every failure into a JSON `ErrorBody` reply.

User input never produces a 5xx: decoding, validation and evaluator input errors are 4xx with the
offending field named. A 500 means a bug in the server and is logged with its traceback.
Every error document is bounded whatever the input: at most `MAX_DETAILS` entries in `details`
(plus `more_details`, the count of the rest), messages cut at `MAX_MESSAGE` characters and field
paths at `MAX_FIELD` (they may quote the input).
(The library's own exception hierarchy is `aceserver.errors`; `ACEInputError` becomes a 422 in
`compute.py`.)
"""
from __future__ import annotations

import logging
from typing import Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from pydantic import ValidationError
from starlette.exceptions import HTTPException as StarletteHTTPException

from .schema import ErrorBody

log = logging.getLogger("aceserver.http")

MAX_DETAILS = 20       # entries of `details`; the rest are counted in `more_details`
MAX_MESSAGE = 1000     # characters of a message
MAX_FIELD = 200        # characters of a field path


def _cut(text: str | None, limit: int) -> str | None:
    if text is None or len(text) <= limit:
        return text
    return text[:limit] + f"... ({len(text) - limit} more characters)"


class APIError(Exception):
    """An error with its HTTP status, machine-readable kind and the offending field."""

    def __init__(self, status: int, kind: str, message: str, field: str | None = None,
                 details: list[dict] | None = None, headers: dict[str, str] | None = None):
        super().__init__(message)
        self.status, self.kind, self.message, self.field = status, kind, message, field
        self.details = details or []
        self.headers = headers

    def body(self) -> dict[str, Any]:
        """The error document, bounded (see the module docstring)."""
        details = [{"field": _cut(d.get("field"), MAX_FIELD), "message": _cut(d.get("message"), MAX_MESSAGE)}
                   for d in self.details[:MAX_DETAILS]]
        return {"kind": self.kind, "message": _cut(self.message, MAX_MESSAGE), "field": _cut(self.field, MAX_FIELD),
                "details": details, "more_details": max(0, len(self.details) - MAX_DETAILS)}


class DecodeError(ValueError):
    """The body cannot be decoded (a 400 `malformed_body`); ``field`` names where, when known."""

    def __init__(self, message: str, field: str = "body"):
        super().__init__(message)
        self.field = field


def error_responses(*codes: int) -> dict:
    """OpenAPI `responses` entries: each status code answers with an `ErrorBody`."""
    return {c: {"model": ErrorBody} for c in codes}


def field_path(loc: tuple | list) -> str:
    """('structures', 0, 'positions', 3, 1) -> 'structures[0].positions[3][1]'."""
    out = ""
    for part in loc:
        if isinstance(part, int):
            out += f"[{part}]"
        else:
            out += ("." if out else "") + str(part)
    return out


def from_validation_error(errors: list[dict], prefix: tuple = ()) -> APIError:
    """A 422 APIError from pydantic errors; the first error names `field`, all are in `details`."""
    details = []
    for e in errors:
        loc = tuple(prefix) + tuple(e.get("loc", ()))
        if e.get("type") == "invalid_field":     # model-level check naming its sub-field (schema.field_error)
            loc = loc + (e["ctx"]["field"],)
            message = e["ctx"]["problem"]
        else:
            message = e.get("msg", "invalid value")
        if loc and loc[0] == "body":
            loc = loc[1:]
        details.append({"field": field_path(loc) or "body", "message": message})
    first = details[0] if details else {"field": None, "message": "invalid request"}
    message = f"{first['field']}: {first['message']}" if first["field"] else first["message"]
    if len(details) > 1:
        message += f" (and {len(details) - 1} more problem{'s' if len(details) > 2 else ''})"
    return APIError(422, "invalid_input", message, first["field"], details)


def install_handlers(app: FastAPI, on_error=None) -> None:
    """Register handlers; `on_error(kind)` is called for every error response (for metrics)."""

    def respond(err: APIError) -> JSONResponse:
        if on_error is not None:
            on_error(err.kind)
        return JSONResponse(err.body(), status_code=err.status, headers=err.headers)

    @app.exception_handler(APIError)
    async def _api_error(request: Request, exc: APIError):
        return respond(exc)

    @app.exception_handler(RequestValidationError)
    async def _request_validation(request: Request, exc: RequestValidationError):
        return respond(from_validation_error(list(exc.errors())))

    @app.exception_handler(ValidationError)
    async def _validation(request: Request, exc: ValidationError):
        return respond(from_validation_error(exc.errors(include_url=False)))

    @app.exception_handler(StarletteHTTPException)
    async def _http(request: Request, exc: StarletteHTTPException):
        kinds = {404: "not_found", 405: "method_not_allowed", 401: "unauthorized", 413: "too_large"}
        kind = kinds.get(exc.status_code, "http_error")
        return respond(APIError(exc.status_code, kind, str(exc.detail), headers=getattr(exc, "headers", None)))

    @app.exception_handler(Exception)
    async def _internal(request: Request, exc: Exception):
        log.exception("internal error while serving %s %s", request.method, request.url.path)
        return respond(APIError(500, "internal", f"internal server error ({type(exc).__name__}); see the server log"))
