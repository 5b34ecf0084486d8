"""The driver loop: answers an i-PI (or ASE) server over one or more connections.

Knows nothing of physics. A *potential* is any object with
``compute(h, positions) -> (energy, forces, virial, extras)`` in atomic units and i-PI
layouts (see ``protocol``); ``ACEPotential`` in ``adapter.py`` is the one we ship.
"""
from __future__ import annotations

import logging
import socket
import threading

import numpy as np

from aceserver.errors import ACEInputError, UnknownElementError

from .connection import Address, Guard, connect, set_keepalive
from .guard import close_politely
from .protocol import (
    EXIT,
    GETFORCE,
    HAVEDATA,
    INIT,
    NEEDINIT,
    POSDATA,
    READY,
    STATUS,
    Channel,
    PeerClosed,
    PeerStalled,
    ProtocolError,
    encode_forces,
    parse_init_string,
    read_header,
    read_init,
    read_posdata,
)

log = logging.getLogger("aceserver.ipi")

# Exit statuses of Driver.run
OK, FAILED, BAD_INPUT = 0, 1, 2

DEFAULT_READ_TIMEOUT = 60.0  # s without a byte in the middle of a message (never between messages)
DEFAULT_KEEPALIVE = 60.0  # s of silence before TCP keep-alive probes the server's host
_RETRY_FIRST, _RETRY_MAX = 0.2, 5.0  # s before reconnecting; doubles while connections keep failing


class TemplateMismatch(ACEInputError):
    """Raised by a potential when the server's structures can never fit it (the atom count
    differs from the template's): every connection would fail the same way, so the driver
    stops the whole process with BAD_INPUT, even with ``reconnect``. Any other ACEInputError
    is one bad structure (NaN positions): only its own connection fails."""


class Session:
    """One connection's protocol state machine.

    The server asks STATUS; we answer NEEDINIT until INIT arrives (the only way to learn the
    bead index and i-PI's ``batch_size``), then HAVEDATA while a result waits, else READY.
    Forces are computed as soon as POSDATA is read: i-PI 3 sends GETFORCE in the same write
    and ASE asserts HAVEDATA on the next STATUS, so there is nothing to gain by deferring.
    """

    def __init__(self, channel: Channel, potential, stop: threading.Event | None = None):
        self.channel = channel
        self.potential = potential
        self.stop = stop or threading.Event()
        self.initialised = False
        self.bead: int | None = None
        self.batch: int | None = None  # None: plain layout; B: i-PI's batched layout
        self.calls = 0
        self._reply: bytes | None = None

    def run(self) -> str:
        """Serve until EXIT ("exit") or, after a finished call, a stop request ("stopped").

        Raises PeerClosed when the server goes away, PeerStalled when it stops in the middle
        of a message, ProtocolError on nonsense, and whatever the potential raises (the caller
        closes the socket so that the server requeues).
        """
        channel = self.channel
        while True:
            header = read_header(channel)
            if header == STATUS:
                if not self.initialised:
                    channel.send(NEEDINIT)
                else:
                    channel.send(HAVEDATA if self._reply is not None else READY)
            elif header == POSDATA:
                cells, positions = read_posdata(channel, self.batch)
                channel.read_ahead()
                self._reply = encode_forces(*self._compute(cells, positions))
            elif header == GETFORCE:
                if self._reply is None:
                    raise ProtocolError("GETFORCE before POSDATA")
                channel.send(self._reply)
                self._reply = None
                self.calls += 1
                if self.stop.is_set():
                    return "stopped"
            elif header == INIT:
                self.bead, text = read_init(channel)
                try:
                    batch = int(parse_init_string(text).get("batch_size", 1))
                except ValueError:
                    raise ProtocolError(f"INIT string {text!r} has a bad batch_size") from None
                self.batch = batch if batch > 1 else None
                self.initialised = True
                log.debug("INIT bead %d, %r", self.bead, text)
            elif header == EXIT:
                return "exit"
            else:
                raise ProtocolError(f"unexpected message {header!r}")

    def _compute(self, cells: np.ndarray, positions: np.ndarray):
        results = []
        for i in range(len(cells)):
            if i and np.array_equal(cells[i], cells[i - 1]) and np.array_equal(positions[i], positions[i - 1]):
                results.append(results[-1])  # i-PI pads a short batch by repeating the last structure
            else:
                results.append(self.potential.compute(cells[i], positions[i]))
        return tuple(zip(*results))


class Driver:
    """Serve ``clients`` connections to ``address`` in parallel threads, one potential shared.

    The evaluator releases the GIL, so beads sent to different connections are evaluated
    concurrently. Each connection ends on its own; ``run()`` blocks until every one is done and
    returns the worst of their statuses: OK (EXIT, EOF or stop()); FAILED (no server, an
    evaluation failure, a server that stalled in the middle of a message); BAD_INPUT (a
    structure that cannot be evaluated, e.g. NaN positions). With ``reconnect`` a failed
    connection connects again instead and adds nothing to the status. A TemplateMismatch (or
    an element the model lacks) is BAD_INPUT for the whole process: it stops every connection.
    ``read_timeout`` (s, None: never) bounds a stall inside a message, never the wait between
    messages; ``keepalive`` (s, None or 0: off) is the idle time before TCP keep-alive probes.
    With ``guard`` a watchdog process holds a duplicate of each connection and closes it
    cleanly should this process be killed (see ``guard.py``).
    """

    def __init__(
        self,
        potential,
        address: Address,
        clients: int = 1,
        reconnect: bool = False,
        connect_timeout: float | None = None,
        guard: bool = True,
        read_timeout: float | None = DEFAULT_READ_TIMEOUT,
        keepalive: float | None = DEFAULT_KEEPALIVE,
    ):
        if clients < 1:
            raise ValueError("clients must be at least 1")
        if read_timeout is not None and not read_timeout > 0:
            raise ValueError(f"read_timeout must be > 0 s or None, got {read_timeout}")
        if keepalive is not None and not keepalive >= 0:
            raise ValueError(f"keepalive must be >= 0 s or None, got {keepalive}")
        self.potential = potential
        self.address = address
        self.clients = clients
        self.reconnect = reconnect
        self.connect_timeout = connect_timeout
        self.use_guard = guard
        self.read_timeout = None if read_timeout == float("inf") else read_timeout
        self.keepalive = None if keepalive == float("inf") else keepalive
        self._guard: Guard | None = None
        self.calls = 0
        self._stop = threading.Event()
        self._lock = threading.Lock()
        self._sockets: dict[int, socket.socket] = {}
        self._status = OK

    def run(self) -> int:
        if self.use_guard:
            try:
                self._guard = Guard()
            except OSError as exc:
                log.warning("cannot start the connection guard (%s): a killed driver may hang i-PI", exc)
        threads = [
            threading.Thread(target=self._serve, args=(i,), name=f"ipi-client-{i}", daemon=True)
            for i in range(self.clients)
        ]
        for thread in threads:
            thread.start()
        for thread in threads:
            while thread.is_alive():
                thread.join(0.5)  # wake now and then so signal handlers run promptly
        if self._guard is not None:
            self._guard.close()
        return self._status

    def stop(self, reason: str = "stop requested") -> None:
        """Finish the calls in flight, then close every connection (safe from signal handlers)."""
        if not self._stop.is_set():
            log.info("%s: closing the connections", reason)
        self._stop.set()
        with self._lock:
            sockets = list(self._sockets.values())
        for sock in sockets:
            try:
                sock.shutdown(socket.SHUT_RD)  # wakes a thread blocked in recv with EOF
            except OSError:
                pass

    def _fail(self, status: int) -> None:
        with self._lock:
            self._status = max(self._status, status)

    def _serve(self, index: int) -> None:
        delay = _RETRY_FIRST
        while not self._stop.is_set():
            try:
                sock = connect(self.address, self.connect_timeout, self._stop)
            except OSError as exc:
                log.error("client %d: %s", index, exc)
                self._fail(FAILED)
                return
            if sock is None:
                return
            log.info("client %d connected to %s", index, self.address)
            try:
                set_keepalive(sock, self.keepalive)
                channel = Channel(sock, self.read_timeout)
            except OSError as exc:
                log.error("client %d: cannot set the socket options: %s", index, exc)
                close_politely(sock)
                self._fail(FAILED)
                return
            guard_key = self._guard.adopt(sock) if self._guard else None
            with self._lock:
                self._sockets[index] = sock
            if self._stop.is_set():  # stop() may have missed this socket
                sock.shutdown(socket.SHUT_RD)
            session = Session(channel, self.potential, self._stop)
            retry = False
            try:
                outcome = session.run()
                log.info("client %d: %s after %d force calls", index,
                         "EXIT from the server" if outcome == "exit" else "stopped", session.calls)
            except PeerClosed as exc:
                if not self._stop.is_set():
                    log.info("client %d: the server closed the connection after %d force calls (%s)",
                             index, session.calls, exc)
                    retry = self.reconnect
            except PeerStalled as exc:
                log.error("client %d: the server stalled: %s (read timeout); closing this connection",
                          index, exc)
                retry = self._failed(FAILED)
            except (TemplateMismatch, UnknownElementError) as exc:
                log.error("client %d: %s", index, exc)
                self._fail(BAD_INPUT)
                self.stop("the structure does not fit the model")
            except ACEInputError as exc:
                # One bad structure (NaN positions, atoms on top of each other): the closed
                # connection is i-PI's answer, and it requeues the request; the others go on.
                log.error("client %d: the server sent a structure that cannot be evaluated: %s; "
                          "closing this connection", index, exc)
                retry = self._failed(BAD_INPUT)
            except Exception as exc:
                # Nothing in the protocol reports an error: closing (politely) is how the
                # server learns that this request must go to another client.
                log.error("client %d: %s: %s; closing the connection so that the server requeues the work",
                          index, type(exc).__name__, exc, exc_info=not isinstance(exc, ProtocolError))
                retry = self._failed(FAILED)
            finally:
                with self._lock:
                    self._sockets.pop(index, None)
                    self.calls += session.calls
                close_politely(sock)
                if self._guard:
                    self._guard.drop(guard_key)
            if not retry:
                return
            # back off while the failures repeat (a bad bead that i-PI keeps requeueing)
            if session.calls:
                delay = _RETRY_FIRST
            log.info("client %d: reconnecting in %.1f s", index, delay)
            self._stop.wait(delay)
            delay = min(2 * delay, _RETRY_MAX)

    def _failed(self, status: int) -> bool:
        """A connection failed: True to reconnect, else its status counts for the process."""
        if self.reconnect:
            return True
        self._fail(status)
        return False
