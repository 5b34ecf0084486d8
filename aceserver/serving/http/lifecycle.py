"""What becomes of a request in flight when its client goes away or the server stops.

* `until_done_or_gone` awaits work running in a thread and watches the connection meanwhile: when
  the client disconnects it sets the work's cancel event (`compute.evaluate_request` stops before
  the next structure, the evaluator at its next block of atoms) and the request ends as a 499 `client_disconnected`, not counted as served.
* `Drain` and `DrainMiddleware`: on shutdown the server (`server.Server`) starts the drain clock;
  requests that have not begun their reply when `--drain-timeout` runs out are cancelled and
  answered with a JSON 503 `shutting_down` (their evaluation threads are told to stop as above).
"""
from __future__ import annotations

import asyncio
import json
import logging
import threading
from typing import Any, Callable

from .error_replies import APIError

log = logging.getLogger("aceserver.http")


def shutting_down() -> APIError:
    return APIError(503, "shutting_down", "the server is shutting down and stopped this request at its "
                    "drain deadline (--drain-timeout); retry on another replica or after the restart",
                    headers={"Connection": "close"})


class Drain:
    """The requests in flight (their asyncio tasks) and the drain deadline (event-loop thread only)."""

    def __init__(self) -> None:
        self.requests: dict[asyncio.Task, dict[str, bool]] = {}
        self.started = False
        self.expired = False

    def start(self, timeout: float) -> None:
        """Shutdown has begun: in `timeout` seconds, cut the requests still waiting for their reply."""
        if not self.started:
            self.started = True
            asyncio.get_running_loop().call_later(max(0.0, timeout), self.expire)

    def expire(self) -> None:
        self.expired = True
        cut = [task for task, state in self.requests.items() if not state["started"]]
        if cut:
            log.warning("drain deadline: %d request(s) not answered yet get a 503 shutting_down", len(cut))
        for task in cut:                  # (a reply already under way is left to finish)
            task.cancel()


class DrainMiddleware:
    """Pure ASGI middleware: registers every HTTP request with the `Drain`, and answers one cut at
    the drain deadline with the JSON 503 `shutting_down` document."""

    def __init__(self, app, drain: Drain, on_error: Callable[[str], None] | None = None) -> None:
        self.app, self.drain, self.on_error = app, drain, on_error

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        state = {"started": False}

        async def send_wrapper(message):
            if message["type"] == "http.response.start":
                state["started"] = True
            await send(message)

        if self.drain.expired:             # (a pipelined request after the deadline)
            return await self._reply(send_wrapper, shutting_down())
        task = asyncio.current_task()
        self.drain.requests[task] = state
        try:
            await self.app(scope, receive, send_wrapper)
        except asyncio.CancelledError:
            if not self.drain.expired or state["started"]:
                raise                      # not ours: uvicorn's own shutdown backstop
            if hasattr(task, "uncancel"):  # Python 3.11+: the cancellation is handled here
                task.uncancel()
            await self._reply(send_wrapper, shutting_down())
        finally:
            self.drain.requests.pop(task, None)

    async def _reply(self, send, err: APIError) -> None:
        if self.on_error is not None:
            self.on_error(err.kind)
        body = json.dumps(err.body()).encode()
        headers = [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode())]
        headers += [(k.lower().encode(), v.encode()) for k, v in (err.headers or {}).items()]
        await send({"type": "http.response.start", "status": err.status, "headers": headers})
        await send({"type": "http.response.body", "body": body})


async def _disconnected(receive) -> None:
    """Returns once the client has gone (call after the request body has been read: the ASGI
    server then answers `receive` only with `http.disconnect`)."""
    while (await receive())["type"] != "http.disconnect":
        pass


async def until_done_or_gone(future: asyncio.Future, receive, cancel: threading.Event) -> Any:
    """The result of `future` (work in a thread that watches `cancel`), unless the client goes
    away first (499 `client_disconnected`) or this request is cancelled (the drain deadline):
    then `cancel` is set, so that the thread stops at its next check, and the future is dropped."""
    watcher = asyncio.ensure_future(_disconnected(receive))
    try:
        await asyncio.wait({future, watcher}, return_when=asyncio.FIRST_COMPLETED)
    except BaseException:
        cancel.set()
        future.cancel()
        raise
    finally:
        watcher.cancel()
    if future.done():
        return future.result()
    cancel.set()
    future.cancel()
    raise APIError(499, "client_disconnected", "the client went away before the reply; its work was stopped")
