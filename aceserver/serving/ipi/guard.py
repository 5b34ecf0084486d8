"""A watchdog process that keeps the driver's connections from ending in a reset.

If the driver is killed outright (SIGKILL, the out-of-memory killer, a crash in native code)
while bytes from the server wait unread in a socket, the kernel answers with a reset, and a
reset that reaches i-PI 3.3 while it waits for forces kills its poll thread: i-PI hangs.
No code in a killed process runs, so the driver hands a duplicate of every connection to this
small process. While it holds one, the connection outlives the driver; when the driver dies,
the guard ends it in the way i-PI survives (``abandon``), and i-PI requeues the work.

Run as a script (``python guard.py FD``, stdlib only, so it starts fast) with FD one end of a
SOCK_SEQPACKET pair. Messages from the driver: b"A" + key with one file descriptor (adopt),
b"D" + key (drop). EOF on the pair means the driver is gone.
"""
from __future__ import annotations

import signal
import socket
import sys
import time


def close_politely(sock: socket.socket, wait: float = 2.0) -> None:
    """Close so that the server sees a clean EOF, never a reset.

    Closing with unread bytes in the receive queue makes the kernel send a reset; i-PI 3.3
    hangs on a reset that arrives while it waits for forces, but requeues the work on EOF.
    So: stop writing (FIN), read and drop everything until the server closes its side (or
    ``wait`` seconds pass), then close.
    """
    try:
        sock.shutdown(socket.SHUT_WR)
        sock.settimeout(0.2)
        deadline = time.monotonic() + wait
        while time.monotonic() < deadline:
            try:
                if not sock.recv(65536):
                    break
            except socket.timeout:
                continue
    except OSError:
        pass  # already reset or closed by the peer: nothing left to protect
    finally:
        sock.close()


GETFORCE = b"GETFORCE    "


def abandon(sock: socket.socket, grace: float = 0.1) -> None:
    """End a connection whose driver died, in the way the server survives.

    i-PI 3.3 survives EOF but not a reset in its default mode, and the reverse in its legacy
    mode while it waits for FORCEREADY (it then loops on EOF forever). The legacy mode is
    recognisable: its GETFORCE arrives alone, after HAVEDATA; i-PI 3's default mode sends it
    together with POSDATA. So after a moment for messages in flight, a lone GETFORCE is left
    unread (closing then resets the connection), and anything else ends with a clean EOF.
    """
    time.sleep(grace)
    try:
        pending = sock.recv(64, socket.MSG_PEEK | socket.MSG_DONTWAIT)
    except (BlockingIOError, InterruptedError):
        pending = b""
    except OSError:
        sock.close()
        return
    if pending == GETFORCE:
        sock.close()
    else:
        close_politely(sock)


def serve(control: socket.socket) -> None:
    held: dict[bytes, socket.socket] = {}
    while True:
        try:
            message, fds, _, _ = socket.recv_fds(control, 64, 4)
        except OSError:
            message, fds = b"", []
        if not message:
            break
        op, key = message[:1], message[1:]
        if op == b"A" and fds:
            held[key] = socket.socket(fileno=fds[0])
        elif op == b"D" and key in held:
            held.pop(key).close()
    for sock in held.values():  # the driver died holding these
        abandon(sock)


if __name__ == "__main__":
    # The driver handles SIGINT/SIGTERM itself and then closes the pair; a signal sent to the
    # whole process group must not take the guard away first.
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
    serve(socket.socket(fileno=int(sys.argv[1])))
