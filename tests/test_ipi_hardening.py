"""Issue 21, i-PI driver: a server that stalls in the middle of a message, and one bad bead.

A stall *inside* a message ends that connection within the read timeout; waiting *between*
messages never does (i-PI may take minutes between steps). A bead the model cannot evaluate
(NaN positions or cell) fails its own connection, cleanly (a FIN, which i-PI answers by
requeueing), while the other connections of the process go on computing correct forces and
``reconnect`` brings the failed one back. A server that listens but never accepts no longer
blocks ``connect`` forever.

Time bounds: the read timeout T is ours to choose (1 s here); after a stall the driver closes
politely, waiting up to 2 s for the server's FIN (``guard.close_politely``), which a stalled
server never sends. So a stalled connection ends after T + 2 s plus scheduling; the bound
allows 15 s more for a loaded 2-core CI box, still far below "forever", which is the bug.
"""
from __future__ import annotations

import socket
import struct
import subprocess
import sys
import threading
import time
from datetime import datetime

import numpy as np
import pytest
from ase import units

from ipi_support import (
    Children,
    Server,
    assert_clean_eof,
    free_port,
    handshake,
    hdr,
    ipi_input,
    make_model,
    posdata,
    read_output,
    recv_exact,
    si_structure,
    start_driver,
    unique_name,
    wait,
)

import aceserver
from aceserver.serving.ipi import ACEPotential, Address, Driver
from aceserver.serving.ipi.connection import set_keepalive
from aceserver.serving.ipi.driver import BAD_INPUT, FAILED, OK

T = 1.0  # the read timeout of these tests, s
POLITE_CLOSE = 2.0  # close_politely's wait for the server's FIN, s
SLACK = 15.0  # scheduling on a loaded 2-core box


class Echo:
    """A potential for any atom count whose reply is predictable: E = sum q, F = -2q, W = h + h.T."""

    def compute(self, h, q):
        return float(q.sum()), -2.0 * q, h + h.T, ""


H = np.diag([10.0, 11.0, 12.0])


def _reply_size(nat: int) -> int:
    return 12 + 8 + 4 + 24 * nat + 72 + 4


# ---------------------------------------------------------------- stalls


@pytest.mark.parametrize("where", ["header", "posdata", "reply"])
def test_stall_inside_a_message_ends_the_connection(tmp_path, caplog, where):
    server = Server(tmp_path / "s")
    driver = Driver(Echo(), Address(path=server.path), connect_timeout=5, read_timeout=T)
    thread, holder = start_driver(driver)
    conn = server.accept()
    handshake(conn)
    if where == "header":
        conn.sendall(b"STAT")  # 4 of the 12 bytes of a header, then nothing
    elif where == "posdata":
        conn.sendall(posdata(H, np.ones((8, 3)))[:100])  # the header and part of the cell
    else:
        # The server sends a 4.8 MB POSDATA and never reads the 4.8 MB reply: far more than
        # the socket buffers (~0.2 MB each way), so the driver's write stalls.
        q = np.random.default_rng(1).standard_normal((200_000, 3))
        sender = threading.Thread(target=conn.sendall, args=(posdata(H, q) + hdr("GETFORCE"),), daemon=True)
        sender.start()
        sender.join(SLACK)
        assert not sender.is_alive(), "the driver did not read the POSDATA"
    start = time.monotonic()
    thread.join(T + POLITE_CLOSE + SLACK)
    elapsed = time.monotonic() - start
    assert not thread.is_alive(), f"the driver thread still waits {elapsed:.0f} s after a stall (read timeout {T} s)"
    assert elapsed >= 0.9 * T  # and it did wait for the timeout
    assert holder["status"] == FAILED
    assert "the server stalled" in caplog.text
    assert ("has not read our reply" if where == "reply" else "in the middle of a message") in caplog.text
    conn.close()
    server.close()


def test_waiting_between_messages_is_not_a_stall(tmp_path):
    """Pauses between messages (4 T) and a message that trickles in over 2 T (each piece within
    T of the last) are normal: the call is answered exactly."""
    server = Server(tmp_path / "s")
    driver = Driver(Echo(), Address(path=server.path), connect_timeout=5, read_timeout=T)
    thread, holder = start_driver(driver)
    conn = server.accept()
    time.sleep(2 * T)
    handshake(conn)
    time.sleep(2 * T)
    q = np.arange(24, dtype=float).reshape(8, 3)
    message = posdata(H, q) + hdr("GETFORCE")
    pieces = [message[i:i + 80] for i in range(0, len(message), 80)]
    for piece in pieces:
        conn.sendall(piece)
        time.sleep(2 * T / len(pieces))
    reply = recv_exact(conn, _reply_size(8))
    assert reply[:12] == b"FORCEREADY  "
    np.testing.assert_array_equal(np.frombuffer(reply[24:24 + 192]).reshape(8, 3), -2.0 * q)
    conn.sendall(hdr("EXIT"))
    thread.join(10)
    assert holder["status"] == OK
    conn.close()
    server.close()


def test_stalled_connection_reconnects(tmp_path, caplog):
    server = Server(tmp_path / "s")
    driver = Driver(Echo(), Address(path=server.path), connect_timeout=5, read_timeout=T, reconnect=True)
    thread, holder = start_driver(driver)
    conn = server.accept()
    handshake(conn)
    conn.sendall(b"POSDATA     " + b"\0" * 10)
    server.sock.settimeout(T + POLITE_CLOSE + SLACK)
    again = server.accept()  # the driver gave up on the stalled connection and came back
    handshake(again)
    again.sendall(hdr("EXIT"))
    thread.join(10)
    assert holder["status"] == OK
    assert "the server stalled" in caplog.text
    for c in (conn, again):
        c.close()
    server.close()


def test_keepalive_on_tcp_connections():
    listener = socket.create_server(("127.0.0.1", 0))
    port = listener.getsockname()[1]
    driver = Driver(Echo(), Address.inet(f"127.0.0.1:{port}"), connect_timeout=5, keepalive=7, guard=False)
    thread, holder = start_driver(driver)
    listener.settimeout(10)
    conn, _ = listener.accept()
    conn.settimeout(10)
    handshake(conn)
    sock = driver._sockets[0]
    assert sock.getsockopt(socket.SOL_SOCKET, socket.SO_KEEPALIVE) == 1
    assert sock.getsockopt(socket.IPPROTO_TCP, socket.TCP_KEEPIDLE) == 7
    assert sock.getsockopt(socket.IPPROTO_TCP, socket.TCP_KEEPINTVL) == 7  # min(idle, 10 s)
    assert sock.getsockopt(socket.IPPROTO_TCP, socket.TCP_KEEPCNT) == 6
    conn.sendall(hdr("EXIT"))
    thread.join(10)
    assert holder["status"] == OK
    conn.close()
    listener.close()
    unix = socket.socket(socket.AF_UNIX)
    set_keepalive(unix, 60)  # nothing to do on a unix socket
    assert unix.getsockopt(socket.SOL_SOCKET, socket.SO_KEEPALIVE) == 0
    unix.close()


def test_cli_read_timeout(tmp_path):
    """`aceserver ipi --read-timeout 1`: a stalled server ends the process with status 1 and a
    log line that names the stall; a bad value is refused with status 2."""
    atoms = si_structure()
    atoms.write(tmp_path / "si.extxyz")
    model = make_model(tmp_path / "si.model")
    server = Server(tmp_path / "s")
    args = [sys.executable, "-m", "aceserver.cli", "ipi", str(model), "--structure", str(tmp_path / "si.extxyz"),
            "--unix", "s", "--socket-prefix", f"{tmp_path}/"]
    with Children(tmp_path) as children:
        driver = children.start(args + ["--read-timeout", str(T)], "driver.log")
        conn = server.accept()
        handshake(conn)
        conn.sendall(b"POSDATA     " + b"\0" * 10)
        assert wait(driver, T + POLITE_CLOSE + SLACK) == FAILED
        conn.close()
    log = (tmp_path / "driver.log").read_text()
    assert "the server stalled: no data for 1 s in the middle of a message" in log, log
    bad = subprocess.run(args + ["--read-timeout", "0"], capture_output=True, text=True, timeout=120)
    assert bad.returncode == 2 and "--read-timeout must be > 0 s" in bad.stderr
    server.close()


@pytest.mark.parametrize("transport", ["unix", "tcp"])
def test_server_that_never_accepts(tmp_path, caplog, transport):
    """A listening server that never accepts (frozen, its backlog full): a blocking connect
    waited forever on a unix socket (about 2 minutes over TCP), past --connect-timeout and
    deaf to stop(). Now each attempt is bounded and retried until the timeout."""
    if transport == "unix":
        listener = socket.socket(socket.AF_UNIX)
        listener.bind(str(tmp_path / "s"))
        address = Address(path=str(tmp_path / "s"))
    else:
        listener = socket.socket()
        listener.bind(("127.0.0.1", 0))
        address = Address.inet(f"127.0.0.1:{listener.getsockname()[1]}")
    listener.listen(0)
    filler = socket.socket(listener.family)  # takes the one place in the backlog
    filler.connect(listener.getsockname())
    driver = Driver(Echo(), address, connect_timeout=T, guard=False)
    thread, holder = start_driver(driver)
    thread.join(T + SLACK)
    assert not thread.is_alive(), "the driver still waits for a server that never accepts"
    assert holder["status"] == FAILED
    assert "no i-PI server" in caplog.text
    # and without a connect timeout, stop() ends the wait
    driver = Driver(Echo(), address, connect_timeout=None, guard=False)
    thread, holder = start_driver(driver)
    time.sleep(0.5)
    driver.stop("test")
    thread.join(10 + SLACK)  # the current attempt ends within 10 s (connection._ATTEMPT)
    assert not thread.is_alive() and holder["status"] == OK
    filler.close()
    listener.close()


# ---------------------------------------------------------------- one bad bead


@pytest.fixture(scope="module")
def model(tmp_path_factory):
    return aceserver.load_model(make_model(tmp_path_factory.mktemp("m") / "si.model"))


def _good_call(conn, model, atoms, seed):
    """One force call with a rattled structure; the reply must equal the in-process evaluator.

    The driver reuses a Verlet list between calls and the reference searches afresh, so the
    sums run in another order: rounding differences, bounded by 1e-9 relative here (a few
    hundred pair terms of ~1e-16 relative error each), far below any physical difference.
    """
    a = atoms.copy()
    a.rattle(0.02, seed=seed)
    conn.sendall(posdata(a.cell.array.T / units.Bohr, a.positions / units.Bohr) + hdr("GETFORCE"))
    nat = len(a)
    reply = recv_exact(conn, _reply_size(nat))
    assert reply[:12] == b"FORCEREADY  "
    energy = struct.unpack("<d", reply[12:20])[0] * units.Hartree
    forces = np.frombuffer(reply[24:24 + 24 * nat]).reshape(nat, 3) * units.Hartree / units.Bohr
    ref = model.evaluate(a.numbers, a.positions, a.cell.array, a.pbc)
    assert energy == pytest.approx(ref.energy, rel=1e-9)
    np.testing.assert_allclose(forces, ref.forces, rtol=0, atol=1e-9 * np.abs(ref.forces).max())


def _bad_bead(conn, atoms, what, consolidated=True):
    h = atoms.cell.array.T / units.Bohr
    q = atoms.positions / units.Bohr
    if what == "nan positions":
        q = q.copy()
        q[3, 1] = np.nan
    else:
        h = h.copy()
        h[0, 0] = np.inf
    if consolidated:  # i-PI 3's default: GETFORCE in the same write
        conn.sendall(posdata(h, q) + hdr("GETFORCE"))
    else:  # legacy: STATUS follows later
        conn.sendall(posdata(h, q))
        time.sleep(0.05)
        conn.sendall(hdr("STATUS"))


@pytest.mark.parametrize("what, consolidated", [("nan positions", True), ("nan positions", False),
                                                ("inf cell", True)])
def test_bad_bead_fails_only_its_connection(tmp_path, model, caplog, what, consolidated):
    atoms = si_structure()
    server = Server(tmp_path / "s")
    driver = Driver(ACEPotential.from_atoms(model, atoms, extras=()), Address(path=server.path), clients=2,
                    connect_timeout=5)
    thread, holder = start_driver(driver)
    bad, good = server.accept(), server.accept()
    handshake(bad, bead=0)
    handshake(good, bead=1)
    _good_call(good, model, atoms, seed=1)
    _bad_bead(bad, atoms, what, consolidated)
    assert_clean_eof(bad)  # i-PI's answer: EOF, upon which it requeues the request
    for seed in range(2, 5):  # the other connection goes on, exactly
        _good_call(good, model, atoms, seed)
    good.sendall(hdr("EXIT"))
    thread.join(10)
    assert not thread.is_alive()
    assert holder["status"] == BAD_INPUT  # the bad bead's connection, reported at the end
    assert "cannot be evaluated" in caplog.text
    good.close()
    server.close()


def test_bad_bead_with_reconnect(tmp_path, model, caplog):
    atoms = si_structure()
    server = Server(tmp_path / "s")
    driver = Driver(ACEPotential.from_atoms(model, atoms, extras=()), Address(path=server.path), clients=2,
                    connect_timeout=5, reconnect=True)
    thread, holder = start_driver(driver)
    bad, good = server.accept(), server.accept()
    handshake(bad, bead=0)
    handshake(good, bead=1)
    _bad_bead(bad, atoms, "nan positions")
    assert_clean_eof(bad)
    again = server.accept()  # the failed connection comes back
    handshake(again, bead=0)
    for seed in range(3):
        _good_call(again, model, atoms, seed)
        _good_call(good, model, atoms, seed + 10)
    for conn in (again, good):
        conn.sendall(hdr("EXIT"))
    thread.join(10)
    assert holder["status"] == OK
    assert "cannot be evaluated" in caplog.text
    for conn in (again, good):
        conn.close()
    server.close()


# ---------------------------------------------------------------- real i-PI


def test_real_ipi_run_with_short_timeouts(tmp_path):
    """A real i-PI PIMD run over TCP with a read timeout of 0.5 s and keep-alive after 1 s,
    while i-PI polls its connections only every 1.5 s (``<latency>``): the driver waits longer
    than its read timeout between messages, and no call is cut. (A stall inside one of i-PI's
    messages would take i-PI's process being descheduled for 0.5 s between two writes.)"""
    structure = tmp_path / "init.extxyz"
    si_structure().write(structure)
    model_path = make_model(tmp_path / "si.model")
    port = free_port()
    xml = ipi_input(tmp_path, structure, nbeads=2, steps=2, port=port,
                    ffsocket_options="<slots>2</slots><latency>1.5</latency>", trajectory=False)
    with Children(tmp_path) as children:
        server = children.ipi(xml)
        driver = children.driver(model_path, structure, "--inet", f"127.0.0.1:{port}", "--clients", "2",
                                 "--read-timeout", "0.5", "--keepalive", "1", "-vv")
        assert wait(server, 90) == 0, (tmp_path / "ipi.log").read_text()[-3000:]
        assert wait(driver, 30) == 0
    log = (tmp_path / "driver.log").read_text()
    assert "stalled" not in log and log.count("EXIT from the server") == 2, log
    assert list(read_output(tmp_path, 2)["step"]) == list(range(3))
    # The log's time stamps (-vv logs each INIT) show a wait between messages, e.g. from the
    # connection to i-PI's first message, longer than the read timeout.
    stamps = [datetime.strptime(line[:23], "%Y-%m-%d %H:%M:%S,%f") for line in log.splitlines()
              if " aceserver ipi: " in line]
    assert max(np.diff(stamps)).total_seconds() > 0.5, log


class FailsOnce:
    """The ACE potential, except that its ``fail_at``-th call finds NaN positions: a bad bead
    that a requeue can cure, so that the real i-PI run can finish.

    With ``hold``, each later call of the other connections waits up to 50 ms for the failed
    connection (served by the same driver thread) to be back and computing. Otherwise i-PI
    could finish its short run before the reconnection (0.2 s), and the reconnected driver
    would wait for a next server. 50 ms, not longer: i-PI waits for every running call
    before it requeues or accepts a connection, so a longer hold would stall i-PI instead."""

    def __init__(self, potential, fail_at, hold=False):
        self.potential = potential
        self.fail_at = fail_at
        self.hold = hold
        self.calls = 0
        self.lock = threading.Lock()
        self.failed_thread = None
        self.came_back = threading.Event()

    def compute(self, h, q):
        thread = threading.current_thread().name
        with self.lock:
            self.calls += 1
            call = self.calls
        if call == self.fail_at:
            self.failed_thread = thread
            q = q.copy()
            q[0, 0] = np.nan
        elif thread == self.failed_thread:
            self.came_back.set()
        elif self.hold and self.failed_thread is not None:
            self.came_back.wait(0.05)
        return self.potential.compute(h, q)


@pytest.mark.parametrize("reconnect", [False, True])
def test_real_ipi_survives_a_bad_bead(tmp_path, model, caplog, reconnect):
    """Real i-PI, 4 beads over 2 connections, 20 steps; the 10th call has NaN positions. i-PI
    gets EOF on that connection, requeues the bead and finishes the run on the other connection
    (and on the failed one, which comes back with ``reconnect``: 70 held calls give it up to
    3.5 s for a 0.2 s wait)."""
    steps = 20
    caplog.set_level("INFO", logger="aceserver.ipi")
    atoms = si_structure()
    structure = tmp_path / "init.extxyz"
    atoms.write(structure)
    name = unique_name("badbead")
    xml = ipi_input(tmp_path, structure, nbeads=4, steps=steps, unix=name, ffsocket_options="<slots>2</slots>",
                    trajectory=False)
    potential = FailsOnce(ACEPotential.from_atoms(model, atoms, extras=()), fail_at=10, hold=reconnect)
    driver = Driver(potential, Address.unix(name), clients=2, reconnect=reconnect, connect_timeout=60)
    with Children(tmp_path) as children:
        server = children.ipi(xml)
        thread, holder = start_driver(driver)
        assert wait(server, 90) == 0, (tmp_path / "ipi.log").read_text()[-3000:]
        thread.join(30)
    assert not thread.is_alive(), caplog.text
    assert holder["status"] == (OK if reconnect else BAD_INPUT)
    assert "positions contain NaN" in caplog.text
    assert potential.came_back.is_set() == reconnect
    assert caplog.text.count(" connected to ") == (3 if reconnect else 2)
    assert caplog.text.count("EXIT from the server") == (2 if reconnect else 1)
    assert list(read_output(tmp_path, 4)["step"]) == list(range(steps + 1))  # every step was computed
    assert driver.calls == 4 * (steps + 1)  # the bad bead was answered again, by a healthy connection
