"""Finding the i-PI (or ASE) server: addresses, connecting with back-off, guarding connections."""
from __future__ import annotations

import itertools
import logging
import socket
import subprocess
import sys
import threading
import time
from dataclasses import dataclass

from . import guard

log = logging.getLogger("aceserver.ipi")

DEFAULT_PREFIX = "/tmp/ipi_"  # i-PI's default and the one ASE hard-codes
_UNIX_PATH_MAX = 107  # sun_path is 108 bytes including the terminating NUL


@dataclass(frozen=True)
class Address:
    """A unix socket path or a TCP (host, port)."""

    path: str | None = None
    host: str | None = None
    port: int | None = None

    @classmethod
    def unix(cls, name: str, prefix: str = DEFAULT_PREFIX) -> "Address":
        # i-PI binds prefix + address, with the address stripped of whitespace.
        path = prefix + name.strip()
        if len(path.encode()) > _UNIX_PATH_MAX:
            raise ValueError(f"unix socket path {path!r} is longer than {_UNIX_PATH_MAX} bytes")
        return cls(path=path)

    @classmethod
    def inet(cls, spec: str) -> "Address":
        host, sep, port = spec.rpartition(":")
        if not sep or not port.isdigit() or not 0 < int(port) < 65536:
            raise ValueError(f"expected HOST:PORT, got {spec!r}")
        return cls(host=host.strip("[]") or "localhost", port=int(port))

    def __str__(self) -> str:
        return f"unix:{self.path}" if self.path else f"{self.host}:{self.port}"

    def _open(self, timeout: float) -> socket.socket:
        """One connection attempt of at most ``timeout`` seconds; the socket it returns blocks."""
        if self.path:
            sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
            try:
                sock.settimeout(timeout)  # a full backlog then fails at once instead of blocking
                sock.connect(self.path)
                sock.settimeout(None)
            except BaseException:
                sock.close()
                raise
            return sock
        # create_connection tries every address of the host (IPv6 and IPv4 "localhost").
        sock = socket.create_connection((self.host, self.port), timeout=timeout)
        sock.settimeout(None)
        # Replies are one write each, but without NODELAY a small write waiting for a
        # delayed ACK costs ~40 ms per call on loopback.
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        return sock


KEEPALIVE_PROBES = 6
KEEPALIVE_INTERVAL = 10.0  # seconds between probes (at most the idle time)
_KEEPALIVE_MAX = 32767  # Linux's limit for TCP_KEEPIDLE and TCP_KEEPINTVL


def set_keepalive(sock: socket.socket, idle: float | None) -> None:
    """TCP keep-alive: after ``idle`` seconds without traffic the kernel probes the server's host,
    every min(idle, 10) s; 6 unanswered probes end the connection (the next read fails).

    This is what notices a server host that vanished (power, network) while the driver waits
    between messages, which no read timeout may bound. A live host answers the probes whatever
    its i-PI is doing, so a slow simulation is never cut. Unix sockets need none (a dead peer
    process means EOF); None or 0 leaves the socket as it is.
    """
    if not idle or sock.family not in (socket.AF_INET, socket.AF_INET6):
        return
    interval = min(idle, KEEPALIVE_INTERVAL)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_KEEPALIVE, 1)
    for name, value in (("TCP_KEEPIDLE", idle), ("TCP_KEEPINTVL", interval), ("TCP_KEEPCNT", KEEPALIVE_PROBES)):
        if hasattr(socket, name):  # Linux; elsewhere the system's keep-alive defaults apply
            sock.setsockopt(socket.IPPROTO_TCP, getattr(socket, name), min(max(1, round(value)), _KEEPALIVE_MAX))


# Errors that mean "no server listening yet", or one that does not accept (a full backlog:
# BlockingIOError on a unix socket, TimeoutError over TCP): keep trying.
_NOT_YET = (FileNotFoundError, ConnectionRefusedError, ConnectionResetError, ConnectionAbortedError,
            BlockingIOError, TimeoutError)
# Seconds for one attempt: a blocking connect to a server that never accepts would wait
# forever on a unix socket (minutes over TCP), past the timeout and deaf to stop().
_ATTEMPT = 10.0


def connect(
    address: Address,
    timeout: float | None = None,
    stop: threading.Event | None = None,
    first_delay: float = 0.05,
    max_delay: float = 1.0,
) -> socket.socket | None:
    """Connect, retrying with exponential back-off until the server appears.

    Start order then does not matter. Gives up after ``timeout`` seconds (None: never)
    with ConnectionError; returns None if ``stop`` is set while waiting.
    """
    stop = stop or threading.Event()
    deadline = None if timeout is None else time.monotonic() + timeout
    delay = first_delay
    waiting_logged = False
    while not stop.is_set():
        attempt = _ATTEMPT if deadline is None else min(_ATTEMPT, max(0.01, deadline - time.monotonic()))
        try:
            return address._open(attempt)
        except _NOT_YET as exc:
            if deadline is not None and time.monotonic() >= deadline:
                raise ConnectionError(f"no i-PI server at {address} after {timeout:g} s ({exc})") from exc
            if not waiting_logged:
                log.info("waiting for the server at %s", address)
                waiting_logged = True
        wait = delay if deadline is None else max(0.0, min(delay, deadline - time.monotonic()))
        stop.wait(wait)
        delay = min(delay * 1.5, max_delay)
    return None


class Guard:
    """Hands a duplicate of every live connection to the guard process (see ``guard.py``),
    which closes them politely if this process dies without doing so itself."""

    def __init__(self):
        ours, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
        try:
            # -I: stdlib only, no site customisation, fast start.
            self.process = subprocess.Popen([sys.executable, "-I", guard.__file__, str(theirs.fileno())],
                                            pass_fds=[theirs.fileno()], stdin=subprocess.DEVNULL)
        finally:
            theirs.close()
        self._control = ours
        self._lock = threading.Lock()
        self._keys = itertools.count()

    def adopt(self, sock: socket.socket) -> bytes | None:
        key = b"%d" % next(self._keys)
        return key if self._send(b"A" + key, [sock.fileno()]) else None

    def drop(self, key: bytes | None) -> None:
        if key is not None:
            self._send(b"D" + key, [])

    def _send(self, message: bytes, fds: list[int]) -> bool:
        with self._lock:
            try:
                socket.send_fds(self._control, [message], fds)
                return True
            except OSError as exc:
                log.warning("connection guard unavailable (%s): a killed driver may hang i-PI", exc)
                return False

    def close(self) -> None:
        self._control.close()  # EOF: the guard exits
        try:
            self.process.wait(5)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait()
