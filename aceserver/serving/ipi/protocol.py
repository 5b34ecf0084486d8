"""The i-PI wire format: 12-byte headers, native-endian int32/float64 arrays, no framing.

This module only moves bytes and numpy arrays; all values are in i-PI's atomic units
(Bohr, Hartree) and in i-PI's layouts. The cell ``h`` is 3x3 with the lattice vectors
as *columns*, sent in C order; the virial uses the same layout.

Message layouts (see docs/ipi.md):
    INIT       int32 bead index, int32 length, UTF-8 text
    POSDATA    f64[9] h, f64[9] h^-1, int32 nat, f64[3 nat] positions
    POSDATA    batched: int32 nat, B x (f64[9] h, f64[9] h^-1), B x f64[3 nat]
    FORCEREADY f64 energy, int32 nat, f64[3 nat] forces, f64[9] virial, int32 length, extras
    FORCEREADY batched: f64[B] energies, int32 nat, B x f64[3 nat], B x f64[9], B x (int32, extras)
               (for B = 1 the two FORCEREADY layouts are the same bytes)
"""
from __future__ import annotations

import socket
import struct
from collections.abc import Sequence

import numpy as np

HEADER_LEN = 12


def _header(name: str) -> bytes:
    return name.ljust(HEADER_LEN).encode("ascii")


STATUS = _header("STATUS")
READY = _header("READY")
NEEDINIT = _header("NEEDINIT")
HAVEDATA = _header("HAVEDATA")
INIT = _header("INIT")
POSDATA = _header("POSDATA")
GETFORCE = _header("GETFORCE")
FORCEREADY = _header("FORCEREADY")
EXIT = _header("EXIT")

_INT32 = np.dtype(np.int32)
_FLOAT64 = np.dtype(np.float64)
# Refuse absurd sizes before allocating: a corrupted stream must not ask for terabytes.
MAX_ATOMS = 100_000_000
MAX_TEXT = 1 << 24


class PeerClosed(ConnectionError):
    """The server closed the connection (EOF) or reset it."""


class ProtocolError(RuntimeError):
    """The server sent something the protocol does not allow."""


class PeerStalled(ConnectionError):
    """The server stopped in the middle of a message, or stopped reading our reply, for longer
    than the channel's timeout."""


class Channel:
    """A stream socket read through a buffer: every recv takes all that has arrived.

    Besides saving system calls, this takes a whole write of the server off the socket at
    once. i-PI 3 sends GETFORCE in the same write as POSDATA; if those bytes still sat unread
    when this process died, the kernel would answer with a reset, which hangs i-PI 3.3.

    ``timeout`` (seconds, None: never) bounds a stall *inside* a message: once a message has
    begun, every ``timeout`` seconds at least one byte of it must arrive, and a reply must be
    read by the server at that pace, else PeerStalled. Between messages (``wait_for_message``)
    the channel waits as long as the server needs: i-PI may take minutes between steps.
    The timeout is the kernel's (SO_RCVTIMEO/SO_SNDTIMEO), so the socket stays a blocking one
    and a call costs no extra poll.
    """

    CHUNK = 1 << 16

    def __init__(self, sock: socket.socket, timeout: float | None = None):
        if timeout == float("inf"):
            timeout = None
        self.sock = sock
        self.timeout = timeout
        self._buffer = bytearray()  # received, not yet consumed
        self._scratch = bytearray(self.CHUNK)
        if timeout is not None:
            if not timeout > 0:
                raise ValueError(f"timeout must be > 0 s or None, got {timeout}")
            # struct timeval; at least 1 µs, since 0 s 0 µs would mean no timeout at all
            timeval = struct.pack("ll", *divmod(max(1, round(timeout * 1e6)), 1_000_000))
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVTIMEO, timeval)
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_SNDTIMEO, timeval)

    def _recv_into(self, view) -> int:
        try:
            return self.sock.recv_into(view, len(view))
        except ConnectionResetError as exc:
            raise PeerClosed(str(exc)) from exc
        except BlockingIOError as exc:  # SO_RCVTIMEO ran out
            raise PeerStalled(f"no data for {self.timeout:g} s in the middle of a message") from exc
        except TimeoutError as exc:  # ETIMEDOUT from the kernel: TCP keep-alive found no peer
            raise PeerClosed(f"the connection timed out ({exc})") from exc

    def _receive(self) -> int:
        n = self._recv_into(memoryview(self._scratch))
        self._buffer += memoryview(self._scratch)[:n]
        return n

    def wait_for_message(self) -> None:
        """Block until the first byte of the next message has arrived, however long that takes."""
        while not self._buffer:
            try:
                if self._receive() == 0:
                    raise PeerClosed("EOF")
            except PeerStalled:
                continue  # between messages the server may take as long as it needs

    def read_into(self, buffer) -> None:
        """Fill ``buffer`` (bytes-like, e.g. a numpy array) completely."""
        view = memoryview(buffer).cast("B")
        need = len(view)
        got = min(need, len(self._buffer))
        view[:got] = self._buffer[:got]
        del self._buffer[:got]
        while need - got >= self.CHUNK:  # bulk data (large systems): straight into place
            n = self._recv_into(view[got:])
            if n == 0:
                raise PeerClosed("EOF")
            got += n
        while len(self._buffer) < need - got:
            if self._receive() == 0:
                raise PeerClosed("EOF")
        rest = need - got
        view[got:] = self._buffer[:rest]
        del self._buffer[:rest]

    def read(self, size: int) -> bytes:
        buffer = bytearray(size)
        self.read_into(buffer)
        return bytes(buffer)

    def read_ahead(self) -> None:
        """Take whatever else has already arrived off the socket, without blocking
        (after a large message that came in several pieces: see the class docstring)."""
        try:
            while n := self.sock.recv_into(self._scratch, self.CHUNK, socket.MSG_DONTWAIT):
                self._buffer += memoryview(self._scratch)[:n]
        except OSError:
            pass  # nothing more yet (EAGAIN); a reset or EOF is reported by the next read

    def send(self, data: bytes) -> None:
        try:
            self.sock.sendall(data)
        except (BrokenPipeError, ConnectionResetError) as exc:
            raise PeerClosed(str(exc)) from exc
        except BlockingIOError as exc:  # SO_SNDTIMEO ran out: the server does not read
            raise PeerStalled(f"the server has not read our reply for {self.timeout:g} s") from exc
        except TimeoutError as exc:
            raise PeerClosed(f"the connection timed out ({exc})") from exc


def read_header(channel: Channel) -> bytes:
    """The next message's header: waits without limit for it to begin, then reads it whole."""
    channel.wait_for_message()
    return channel.read(HEADER_LEN)


def _read_array(channel: Channel, dtype: np.dtype, count: int) -> np.ndarray:
    out = np.empty(count, dtype=dtype)
    channel.read_into(out)
    return out


def read_init(channel: Channel) -> tuple[int, str]:
    """The body of INIT: (bead index, init string)."""
    bead, length = (int(x) for x in _read_array(channel, _INT32, 2))
    if not 0 <= length <= MAX_TEXT:
        raise ProtocolError(f"INIT string length {length} is out of range")
    text = channel.read(length).decode("utf-8", errors="replace")
    return bead, text


def parse_init_string(text: str) -> dict[str, str]:
    """Parse i-PI's ``" key : value , key2 : value2 , "`` leniently.

    ASE sends a single NUL byte; anything without a ``:`` is ignored.
    """
    params: dict[str, str] = {}
    for item in text.replace("\x00", "").split(","):
        key, sep, value = item.partition(":")
        if sep and key.strip():
            params[key.strip()] = value.strip()
    return params


def _check_natoms(nat: int) -> int:
    if not 0 < nat <= MAX_ATOMS:
        raise ProtocolError(f"POSDATA announces {nat} atoms")
    return nat


def read_posdata(channel: Channel, batch: int | None = None) -> tuple[np.ndarray, np.ndarray]:
    """The body of POSDATA: cells ``h`` (B, 3, 3) and positions (B, nat, 3), Bohr.

    ``batch=None`` reads the plain layout (B = 1); an integer reads i-PI's batched one.
    The inverse cell is read and dropped: i-PI and ASE disagree on its transpose.
    """
    if batch is None:
        head = _read_array(channel, np.dtype(np.uint8), 18 * 8 + 4)
        cells = head[:72].view(_FLOAT64).reshape(1, 3, 3)
        nat = _check_natoms(int(head[144:].view(_INT32)[0]))
    else:
        nat = _check_natoms(int(_read_array(channel, _INT32, 1)[0]))
        cells = _read_array(channel, _FLOAT64, batch * 18).reshape(batch, 2, 3, 3)[:, 0]
    positions = _read_array(channel, _FLOAT64, (1 if batch is None else batch) * nat * 3)
    return cells, positions.reshape(-1, nat, 3)


def encode_forces(
    energies: Sequence[float],
    forces: Sequence[np.ndarray],
    virials: Sequence[np.ndarray],
    extras: Sequence[str],
) -> bytes:
    """FORCEREADY and its body for B structures, as one buffer (one write, one packet).

    Per structure: energy (Hartree), forces (nat, 3) Hartree/Bohr, virial (3, 3) Hartree in
    the layout of ``h``, extras text. For B = 1 the batched layout is the plain one.
    """
    nat = len(forces[0])
    parts = [FORCEREADY, np.asarray(energies, dtype=_FLOAT64).tobytes(), np.int32(nat).tobytes()]
    parts += [np.ascontiguousarray(f, dtype=_FLOAT64).tobytes() for f in forces]
    parts += [np.ascontiguousarray(v, dtype=_FLOAT64).tobytes() for v in virials]
    for text in extras:
        data = text.encode("utf-8")
        parts += [np.int32(len(data)).tobytes(), data]
    return b"".join(parts)
