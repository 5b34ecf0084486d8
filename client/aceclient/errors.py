"""Exceptions for server errors; each carries the server's message, error kind and offending field."""
from __future__ import annotations


class ACEServerError(RuntimeError):
    """An error response from the server (or no response at all)."""

    def __init__(self, message: str, status: int | None = None, kind: str | None = None, field: str | None = None,
                 details: list | None = None):
        super().__init__(message)
        self.message, self.status, self.kind, self.field = message, status, kind, field
        self.details = details or []


class InvalidInputError(ACEServerError, ValueError):
    """400/422: the structure or request is invalid (unknown element, NaN, wrong shape, bad cell, ...)."""


class AuthenticationError(ACEServerError, PermissionError):
    """401: missing or wrong bearer token."""


class ModelNotFoundError(ACEServerError, LookupError):
    """404: the server has no model of that name."""


class RequestTooLargeError(ACEServerError):
    """413: too many atoms or structures, or a body over the server's size limit."""


class ServerNotReadyError(ACEServerError):
    """503: the server is still loading and warming its models (or is shutting down)."""


class ACEServerConnectionError(ACEServerError, ConnectionError):
    """The server could not be reached or the connection broke."""


BY_STATUS = {400: InvalidInputError, 401: AuthenticationError, 404: ModelNotFoundError, 413: RequestTooLargeError,
             415: InvalidInputError, 422: InvalidInputError, 503: ServerNotReadyError}


def from_response(status: int, body: object) -> ACEServerError:
    cls = BY_STATUS.get(status, ACEServerError)
    if isinstance(body, dict) and "message" in body:
        return cls(f"HTTP {status}: {body['message']}", status, body.get("kind"), body.get("field"),
                   body.get("details"))
    return cls(f"HTTP {status}: {str(body)[:500]}", status)
