"""uvicorn, configured for this service, and what it adds at the connection level.

uvicorn's own options carry the keep-alive timeout (`timeout_keep_alive`) and the backstop of the
graceful shutdown (`timeout_graceful_shutdown`). It has no timeout for a request's head or body,
no limit on the head's size (httptools accepts megabytes of headers), answers malformed HTTP
with `text/plain`, and its `limit_concurrency` answers `text/plain` 503s to the probes as well. So:

* `Protocol` subclasses uvicorn's httptools protocol: malformed HTTP gets the JSON error document
  (400 `malformed_request`; 431 `too_large` for a head over `MAX_HEAD_BYTES`); the head must
  arrive within `header_timeout` s of the connection or of the end of the previous reply, the
  body within `body_timeout` s of the head, else a JSON 408 `request_timeout` and the connection
  is closed (an idle connection is closed without a reply); beyond `max_connections` open
  connections, requests other than the probes get a JSON 503 `too_many_connections`.
* `Server` starts the drain clock (`lifecycle.Drain`) when uvicorn begins to shut down, so that
  requests still waiting for their reply at `--drain-timeout` get a JSON 503 `shutting_down`
  rather than uvicorn's cancellation (a text 500) after the work has finished anyway.
"""
from __future__ import annotations

import asyncio
import http
import json
import logging
from typing import Callable

import httptools
import uvicorn
from fastapi import FastAPI
from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol

from .error_replies import APIError
from .lifecycle import Drain
from .settings import Settings

log = logging.getLogger("aceserver.http")

MAX_HEAD_BYTES = 64 * 1024      # request line and headers; a request with a token needs under 2 kB
PROBES = (b"/healthz", b"/livez", b"/readyz")
LINGER_S = 2.0                  # after a refusal, read and drop what the client still sends, then close
# after the drain deadline: time for the cut requests' 503s (and a reply already streaming, such as
# a parity plot) before uvicorn cancels what is left
DRAIN_BACKSTOP_S = 2.0


class Protocol(HttpToolsProtocol):
    """uvicorn's HTTP/1.1 protocol with JSON protocol errors, head and body timeouts and a
    connection limit. `protocol_for(settings)` makes the class a server uses."""

    settings: Settings = Settings()
    on_error: Callable[[str], None] | None = None

    def __init__(self, *args, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        self._timer: asyncio.TimerHandle | None = None
        self._in_request = False      # bytes of a request have arrived that are not yet answered
        self._head_bytes = 0
        self._head_too_large = False
        self._refused = False

    # -- timers ------------------------------------------------------------------------------
    def _arm(self, seconds: float, expired: Callable[[], None]) -> None:
        self._disarm()
        self._timer = self.loop.call_later(seconds, expired)

    def _disarm(self) -> None:
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None

    def _head_expired(self) -> None:
        self._timer = None
        if self.cycle is not None and not self.cycle.response_complete:
            # the previous request's reply is still pending: its head is complete, the next waits
            self._arm(self.settings.header_timeout, self._head_expired)
        elif not self._in_request:
            self.transport.close()    # idle: nothing to answer
        else:
            self._refuse(408, "request_timeout", f"the request line and headers did not arrive within "
                         f"{self.settings.header_timeout:g} s (--header-timeout)")

    def _body_expired(self) -> None:
        self._timer = None
        if self.flow.read_paused:
            # reading is paused by the server (a pipelined request waits for the reply before it)
            self._arm(self.settings.body_timeout, self._body_expired)
        elif self.cycle is not None and self.cycle.response_started:
            self.transport.close()    # a reply was sent before the body arrived; it cannot be followed
        else:
            self._refuse(408, "request_timeout", f"the request body did not arrive within "
                         f"{self.settings.body_timeout:g} s of its headers (--body-timeout)")

    # -- replies written by the protocol -------------------------------------------------------
    def _refuse(self, status: int, kind: str, message: str) -> None:
        """Write a JSON error reply and end the connection (no request is being served on it): our
        side is shut at once, the client's input is dropped until it closes or for `LINGER_S`
        (closing with unread input would send a reset, which may destroy the reply in flight)."""
        log.warning("%s: %s", kind, message)
        if self.on_error is not None:
            self.on_error(kind)
        if self.cycle is not None and not self.cycle.response_complete:
            # a request in progress (garbage after its body): its reply can no longer be framed here
            self.cycle.disconnected = True
            self.cycle.message_event.set()
        body = json.dumps(APIError(status, kind, message).body()).encode()
        head = [f"HTTP/1.1 {status} {http.HTTPStatus(status).phrase}".encode(),
                *(name + b": " + value for name, value in self.server_state.default_headers),
                b"content-type: application/json", b"content-length: " + str(len(body)).encode(),
                b"connection: close"]
        self.transport.write(b"\r\n".join(head) + b"\r\n\r\n" + body)
        self._in_request, self._refused = False, True
        if self.transport.can_write_eof():
            self.transport.write_eof()
            self._arm(LINGER_S, self.transport.close)
        else:
            self.transport.close()

    def send_400_response(self, msg: str) -> None:
        self._refuse(400, "malformed_request", f"invalid HTTP request: {msg}")

    async def _busy(self, scope, receive, send) -> None:
        """The ASGI app that answers a request over the connection limit."""
        if self.on_error is not None:
            self.on_error("too_many_connections")
        err = APIError(503, "too_many_connections", f"the server has {len(self.connections)} connections open "
                       f"(limit {self.settings.max_connections}, --max-connections); retry shortly")
        body = json.dumps(err.body()).encode()
        await send({"type": "http.response.start", "status": 503, "headers": [
            (b"content-type", b"application/json"), (b"content-length", str(len(body)).encode()),
            (b"retry-after", b"1"), (b"connection", b"close")]})
        await send({"type": "http.response.body", "body": body})

    # -- uvicorn's protocol, extended ----------------------------------------------------------
    def connection_made(self, transport) -> None:
        super().connection_made(transport)
        self._arm(self.settings.header_timeout, self._head_expired)

    def connection_lost(self, exc) -> None:
        self._disarm()
        super().connection_lost(exc)

    def data_received(self, data: bytes) -> None:
        # uvicorn's, with the parser's reason and the head-size limit in the reply
        if self._refused:
            return
        self._unset_keepalive_if_required()
        try:
            self.parser.feed_data(data)
        except httptools.HttpParserUpgrade:
            if self._should_upgrade():
                self.handle_websocket_upgrade()
            else:
                self._unsupported_upgrade_warning()
        except httptools.HttpParserError as ex:
            if self._head_too_large:
                self._refuse(431, "too_large", f"request line and headers exceed {MAX_HEAD_BYTES} bytes")
            else:
                self._refuse(400, "malformed_request", f"invalid HTTP request: {str(ex)[:200]}")

    def on_message_begin(self) -> None:
        super().on_message_begin()
        self._in_request, self._head_bytes = True, 0
        if self._timer is None:       # (after a reply: the keep-alive timer was running instead)
            self._arm(self.settings.header_timeout, self._head_expired)

    def _count_head(self, n: int) -> None:
        self._head_bytes += n
        if self._head_bytes > MAX_HEAD_BYTES:
            self._head_too_large = True
            raise ValueError("request head too large")   # the parser stops; data_received answers 431

    def on_url(self, url: bytes) -> None:
        self._count_head(len(url))
        super().on_url(url)

    def on_header(self, name: bytes, value: bytes) -> None:
        self._count_head(len(name) + len(value) + 4)
        super().on_header(name, value)

    def on_headers_complete(self) -> None:
        path = self.url.split(b"?", 1)[0]
        over = len(self.connections) > self.settings.max_connections and path not in PROBES
        self.app = self._busy if over else self.config.loaded_app
        super().on_headers_complete()
        self._arm(self.settings.body_timeout, self._body_expired)

    def on_message_complete(self) -> None:
        self._disarm()
        super().on_message_complete()

    def on_response_complete(self) -> None:
        self._in_request = False
        super().on_response_complete()


def protocol_for(settings: Settings, on_error: Callable[[str], None] | None = None) -> type[Protocol]:
    """The protocol class of one server: its timeouts and connection limit, and `on_error(kind)`
    for the error counters."""
    return type("Protocol", (Protocol,), {"settings": settings, "on_error": staticmethod(on_error)
                                          if on_error is not None else None})


class Server(uvicorn.Server):
    """uvicorn's server, starting the drain clock when it begins to shut down."""

    def __init__(self, config: uvicorn.Config, drain: Drain, drain_timeout: float) -> None:
        super().__init__(config)
        self.drain, self.drain_timeout = drain, drain_timeout

    async def shutdown(self, sockets=None) -> None:
        self.drain.start(self.drain_timeout)
        await super().shutdown(sockets)


def make_server(app: FastAPI, host: str, port: int, log_level: str = "info", access_log: bool = False) -> Server:
    """The uvicorn server of an application from `create_app` (its `Settings` on `app.state`)."""
    settings: Settings = app.state.settings
    config = uvicorn.Config(app, host=host, port=port, log_level=log_level, access_log=access_log,
                            server_header=False, lifespan="on",
                            http=protocol_for(settings, app.state.metrics.count_error),
                            timeout_keep_alive=settings.keep_alive_timeout,
                            timeout_graceful_shutdown=settings.drain_timeout + DRAIN_BACKSTOP_S)
    return Server(config, app.state.drain, settings.drain_timeout)
