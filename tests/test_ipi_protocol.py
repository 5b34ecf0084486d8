"""The i-PI driver against a scripted server: golden bytes, message sequences of i-PI and ASE,
batching, split reads, failures, reconnection, stop; and the ACE potential's units."""
from __future__ import annotations

import json
import socket
import struct
import threading
import time

import numpy as np
import pytest
from ase import units

from ipi_support import (
    Server,
    assert_clean_eof,
    handshake,
    hdr,
    make_model,
    posdata,
    recv_exact,
    si_structure,
    start_driver,
)

import aceserver
from aceserver.errors import ACEInputError, UnknownElementError
from aceserver.serving.ipi import ACEPotential, Address, Driver, Session, connect
from aceserver.serving.ipi.driver import BAD_INPUT, FAILED, OK
from aceserver.serving.ipi.protocol import Channel, PeerClosed, ProtocolError, parse_init_string


def golden_reply(energy, forces, virial, extras: bytes) -> bytes:
    nat = len(forces)
    return (b"FORCEREADY  " + struct.pack("<d", energy) + struct.pack("<i", nat)
            + struct.pack(f"<{3 * nat}d", *forces.ravel()) + struct.pack("<9d", *virial.ravel())
            + struct.pack("<i", len(extras)) + extras)


class Toy:
    """A potential that echoes its input, so that every byte of the reply is predictable."""

    natoms = 2

    def __init__(self, fail=False):
        self.calls = 0
        self.fail = fail

    def compute(self, h, q):
        self.calls += 1
        if self.fail:
            raise RuntimeError("model exploded")
        return float(q.sum()), -2.0 * q, h + h.T, '{"n": %d}' % self.calls


H = np.array([[10.0, 1.0, 2.0], [0.0, 11.0, 3.0], [0.0, 0.0, 12.0]])
Q = np.array([[0.5, 1.5, 2.5], [3.0, 4.0, 5.25]])


@pytest.fixture
def pair():
    server, client = socket.socketpair()
    server.settimeout(10)
    yield server, client
    server.close()
    client.close()


def run_session(client, potential, stop=None):
    """Run a Session in a thread; returns (thread, holder) where holder gets 'result'/'error'."""
    holder = {}
    session = Session(Channel(client), potential, stop)

    def target():
        try:
            holder["result"] = session.run()
        except Exception as exc:  # handed to the test
            holder["error"] = exc

    thread = threading.Thread(target=target, daemon=True)
    thread.start()
    holder["session"] = session
    return thread, holder


def test_headers_are_space_padded_upper_case():
    from aceserver.serving.ipi import protocol

    for name in ["STATUS", "READY", "NEEDINIT", "HAVEDATA", "INIT", "POSDATA", "GETFORCE", "FORCEREADY", "EXIT"]:
        value = getattr(protocol, name)
        assert value == name.encode().ljust(12) and b"\0" not in value


def test_init_string_parsing():
    assert parse_init_string(" a : 1 , b : xyz , ") == {"a": "1", "b": "xyz"}
    assert parse_init_string(" a : 1 ,  batch_size:4") == {"a": "1", "batch_size": "4"}
    assert parse_init_string("  batch_size:4") == {"batch_size": "4"}
    assert parse_init_string("\x00") == {}  # ASE
    assert parse_init_string("") == {} and parse_init_string("no pairs here") == {}


def test_ipi3_sequence_golden_bytes(pair):
    """i-PI 3 (consolidated): STATUS, INIT, STATUS, POSDATA+GETFORCE in one write, STATUS, EXIT."""
    server, client = pair
    toy = Toy()
    thread, holder = run_session(client, toy)
    handshake(server, bead=5, text=b" a : 1 , ")
    server.sendall(posdata(H, Q) + hdr("GETFORCE"))
    expected = golden_reply(Q.sum(), -2.0 * Q, H + H.T, b'{"n": 1}')
    assert recv_exact(server, len(expected)) == expected
    server.sendall(hdr("STATUS"))
    assert recv_exact(server, 12) == b"READY       "
    server.sendall(hdr("EXIT"))
    thread.join(5)
    assert holder == {"result": "exit", "session": holder["session"]}
    assert holder["session"].bead == 5 and holder["session"].calls == 1


def test_ase_sequence_and_eof(pair):
    """ASE: STATUS, INIT (rid 0, one NUL), STATUS, POSDATA, STATUS -> HAVEDATA, GETFORCE; EOF at the end."""
    server, client = pair
    thread, holder = run_session(client, Toy())
    server.sendall(hdr("STATUS"))
    assert recv_exact(server, 12) == b"NEEDINIT    "
    server.sendall(hdr("INIT") + struct.pack("<ii", 0, 1) + b"\0")
    for step in range(2):
        server.sendall(hdr("STATUS"))
        assert recv_exact(server, 12) == b"READY       "
        server.sendall(posdata(H, Q * (step + 1)))
        server.sendall(hdr("STATUS"))
        assert recv_exact(server, 12) == b"HAVEDATA    "
        server.sendall(hdr("GETFORCE"))
        expected = golden_reply(Q.sum() * (step + 1), -2.0 * Q * (step + 1), H + H.T, b'{"n": %d}' % (step + 1))
        assert recv_exact(server, len(expected)) == expected
    server.shutdown(socket.SHUT_WR)
    thread.join(5)
    assert isinstance(holder.get("error"), PeerClosed)


def test_split_reads(pair):
    """Messages that arrive a few bytes at a time are reassembled."""
    server, client = pair
    thread, holder = run_session(client, Toy())
    stream = (hdr("STATUS") + hdr("INIT") + struct.pack("<ii", 0, 3) + b"x:y"
              + hdr("STATUS") + posdata(H, Q) + hdr("GETFORCE") + hdr("EXIT"))
    for i in range(0, len(stream), 5):
        server.sendall(stream[i:i + 5])
        time.sleep(0.0005)
    thread.join(5)
    assert holder.get("result") == "exit", holder
    replies = server.recv(65536)
    while not replies.endswith(b'{"n": 1}'):
        replies += server.recv(65536)
    assert replies.startswith(b"NEEDINIT    READY       FORCEREADY  ")


def test_large_message(pair):
    """Messages larger than the read buffer (here 120 kB of positions) arrive intact."""
    server, client = pair
    thread, holder = run_session(client, Toy())
    server.sendall(hdr("STATUS") + hdr("INIT") + struct.pack("<ii", 0, 0))
    assert recv_exact(server, 12) == b"NEEDINIT    "
    q = np.random.default_rng(0).standard_normal((5000, 3))
    sender = threading.Thread(target=server.sendall, args=(posdata(H, q) + hdr("GETFORCE"),))
    sender.start()  # the socket buffer is smaller than the message: send while the driver reads
    expected = golden_reply(q.sum(), -2.0 * q, H + H.T, b'{"n": 1}')
    assert recv_exact(server, len(expected)) == expected
    sender.join(5)
    server.sendall(hdr("EXIT"))
    thread.join(5)
    assert holder.get("result") == "exit"


def test_batched_layout_and_padding(pair):
    """batch_size:3 from INIT switches layouts; the padded repeat is not evaluated again."""
    server, client = pair
    toy = Toy()
    thread, holder = run_session(client, toy)
    handshake(server, bead=2, text=b" a : 1 , batch_size:3")
    cells = [H, 2 * H, 2 * H]
    pos = [Q, Q + 1, Q + 1]  # the last one is i-PI's padding
    msg = hdr("POSDATA") + struct.pack("<i", 2)
    for h in cells:
        msg += h.tobytes() + np.linalg.inv(h).tobytes()
    msg += b"".join(q.tobytes() for q in pos) + hdr("GETFORCE")
    server.sendall(msg)
    forces = [-2.0 * q for q in pos]
    virials = [h + h.T for h in cells]
    extras = [b'{"n": 1}', b'{"n": 2}', b'{"n": 2}']
    expected = (b"FORCEREADY  " + struct.pack("<3d", *(q.sum() for q in pos)) + struct.pack("<i", 2)
                + b"".join(struct.pack("<6d", *f.ravel()) for f in forces)
                + b"".join(struct.pack("<9d", *v.ravel()) for v in virials)
                + b"".join(struct.pack("<i", len(x)) + x for x in extras))
    assert recv_exact(server, len(expected)) == expected
    assert toy.calls == 2
    server.sendall(hdr("EXIT"))
    thread.join(5)
    assert holder.get("result") == "exit"


def test_unexpected_message_is_a_protocol_error(pair):
    server, client = pair
    thread, holder = run_session(client, Toy())
    server.sendall(hdr("GETFORCE"))  # before any POSDATA
    thread.join(5)
    assert isinstance(holder.get("error"), ProtocolError)


# ---------------------------------------------------------------- the Driver on a real unix socket


@pytest.mark.parametrize("consolidated", [True, False])
def test_failure_closes_cleanly_so_the_server_can_requeue(tmp_path, consolidated):
    server = Server(tmp_path / "s")
    driver = Driver(Toy(fail=True), Address(path=server.path), connect_timeout=5)
    thread, holder = start_driver(driver)
    conn = server.accept()
    handshake(conn)
    if consolidated:  # i-PI 3 default: GETFORCE comes with POSDATA
        conn.sendall(posdata(H, Q) + hdr("GETFORCE"))
    else:  # legacy: STATUS follows later, possibly while the driver is closing
        conn.sendall(posdata(H, Q))
        time.sleep(0.05)
        conn.sendall(hdr("STATUS"))
    assert_clean_eof(conn)
    thread.join(10)
    assert holder["status"] == FAILED
    server.close()


def test_reconnect_after_failure_and_after_server_loss(tmp_path):
    server = Server(tmp_path / "s")
    toy = Toy(fail=True)
    driver = Driver(toy, Address(path=server.path), reconnect=True, connect_timeout=5)
    thread, holder = start_driver(driver)
    conn = server.accept()
    handshake(conn)
    conn.sendall(posdata(H, Q) + hdr("GETFORCE"))
    assert_clean_eof(conn)
    conn.close()
    toy.fail = False
    conn = server.accept()  # the driver came back on its own
    handshake(conn)
    conn.close()  # the server goes away without EXIT
    conn = server.accept()
    handshake(conn)
    conn.sendall(posdata(H, Q) + hdr("GETFORCE"))
    assert recv_exact(conn, 12) == b"FORCEREADY  "
    conn.sendall(hdr("EXIT"))
    conn.close()
    thread.join(10)
    assert holder["status"] == OK
    server.close()


def test_connect_waits_for_the_server(tmp_path):
    path = tmp_path / "late"
    driver = Driver(Toy(), Address(path=str(path)), connect_timeout=10)
    thread, holder = start_driver(driver)
    time.sleep(0.3)
    server = Server(path)
    conn = server.accept()
    handshake(conn)
    conn.sendall(hdr("EXIT"))
    conn.close()
    thread.join(10)
    assert holder["status"] == OK
    server.close()


def test_connect_gives_up_after_the_timeout(tmp_path):
    start = time.monotonic()
    with pytest.raises(ConnectionError, match="no i-PI server"):
        connect(Address(path=str(tmp_path / "nobody")), timeout=0.3)
    assert time.monotonic() - start < 3


def test_stop_ends_idle_connections(tmp_path):
    server = Server(tmp_path / "s")
    driver = Driver(Toy(), Address(path=server.path), clients=2, connect_timeout=5)
    thread, holder = start_driver(driver)
    conns = [server.accept(), server.accept()]
    for conn in conns:
        handshake(conn)
    driver.stop("test")
    thread.join(5)
    assert holder["status"] == OK
    for conn in conns:
        assert_clean_eof(conn)
    server.close()


@pytest.mark.parametrize("guard", [True, False])
def test_killed_driver_leaves_a_clean_eof(tmp_path, model, guard):
    """SIGKILL while the server's bytes wait unread: the kernel would answer with a reset
    (which hangs i-PI 3.3); the guard process closes the connection cleanly instead."""
    import os
    import signal
    import subprocess
    import sys

    atoms = si_structure()
    atoms.write(tmp_path / "si.extxyz")
    model.save(tmp_path / "si.model")
    server = Server(tmp_path / "s")
    args = [sys.executable, "-m", "aceserver.cli", "ipi", str(tmp_path / "si.model"), "--structure",
            str(tmp_path / "si.extxyz"), "--unix", "s", "--socket-prefix", f"{tmp_path}/"]
    driver = subprocess.Popen(args + ([] if guard else ["--no-guard"]), start_new_session=True)
    try:
        conn = server.accept()
        handshake(conn)
        os.kill(driver.pid, signal.SIGSTOP)  # so that nothing reads what comes next
        conn.sendall(posdata(atoms.cell.array.T / units.Bohr, atoms.positions / units.Bohr) + hdr("GETFORCE"))
        os.kill(driver.pid, signal.SIGKILL)
        driver.wait(10)
        if guard:
            assert_clean_eof(conn)
        else:  # what the guard prevents
            conn.settimeout(5)
            with pytest.raises(ConnectionResetError):
                conn.recv(4096)
    finally:
        os.killpg(driver.pid, signal.SIGKILL) if driver.poll() is None else None
        driver.wait(10)
        server.close()


def test_tcp_sets_nodelay():
    listener = socket.create_server(("127.0.0.1", 0))
    port = listener.getsockname()[1]
    sock = connect(Address.inet(f"127.0.0.1:{port}"), timeout=5)
    assert sock.getsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY) == 1
    sock.close()
    listener.close()


def test_addresses():
    assert Address.unix("  abc ").path == "/tmp/ipi_abc"
    assert Address.unix("abc", "/run/x_").path == "/run/x_abc"
    assert Address.inet("localhost:31415") == Address(host="localhost", port=31415)
    assert Address.inet("[::1]:80") == Address(host="::1", port=80)
    assert Address.inet(":80").host == "localhost"
    for bad in ["localhost", "host:0", "host:http", "host:70000"]:
        with pytest.raises(ValueError):
            Address.inet(bad)
    with pytest.raises(ValueError, match="longer than"):
        Address.unix("x" * 200)


# ---------------------------------------------------------------- the ACE potential behind the socket


@pytest.fixture(scope="module")
def model(tmp_path_factory):
    return aceserver.load_model(make_model(tmp_path_factory.mktemp("m") / "si.model", committee=True))


def test_potential_units_and_layout(model):
    atoms = si_structure(triclinic=True)
    pot = ACEPotential.from_atoms(model, atoms, extras=("energies", "committee"))
    h = atoms.cell.array.T / units.Bohr  # i-PI: lattice vectors as columns, Bohr
    energy, forces, virial, extras = pot.compute(h, atoms.positions / units.Bohr)
    ref = model.evaluate(atoms.numbers, atoms.positions, atoms.cell.array, atoms.pbc, committee=True)
    assert energy == pytest.approx(ref.energy / units.Hartree, rel=1e-14)
    np.testing.assert_allclose(forces, ref.forces * units.Bohr / units.Hartree, rtol=1e-12, atol=1e-16)
    np.testing.assert_allclose(virial, ref.virial / units.Hartree, rtol=1e-12, atol=1e-16)
    np.testing.assert_array_equal(virial, virial.T)
    # W = -σV with σ the ASE stress
    stress = ref.stress(atoms.cell.array)
    voigt = [(0, 0), (1, 1), (2, 2), (1, 2), (0, 2), (0, 1)]
    for k, (i, j) in enumerate(voigt):
        assert virial[i, j] * units.Hartree == pytest.approx(-stress[k] * atoms.get_volume(), rel=1e-10, abs=1e-12)
    parsed = json.loads(extras)
    assert isinstance(parsed, dict) and "raw" not in parsed  # anything else hangs i-PI 3.3
    assert sum(parsed["energies"]) == pytest.approx(energy, rel=1e-12)
    np.testing.assert_allclose(parsed["committee_pot"], ref.energy_committee / units.Hartree, rtol=1e-12)
    assert parsed["committee_uncertainty"] == pytest.approx(np.std(parsed["committee_pot"], ddof=0))
    assert ACEPotential.from_atoms(model, atoms, extras=()).compute(h, atoms.positions / units.Bohr)[3] == ""
    assert json.loads(ACEPotential.from_atoms(model, atoms).compute(h, atoms.positions / units.Bohr)[3]).keys() \
        == {"committee_pot", "committee_uncertainty"}  # the default


def test_potential_rejects_wrong_atom_count_and_elements(model):
    atoms = si_structure()
    pot = ACEPotential.from_atoms(model, atoms, template_name="si.xyz")
    with pytest.raises(ACEInputError, match="sent 7 atoms, but si.xyz has 8"):
        pot.compute(atoms.cell.array.T / units.Bohr, atoms.positions[:7] / units.Bohr)
    atoms.symbols[0] = "C"
    with pytest.raises(UnknownElementError, match="C not in the model"):
        ACEPotential.from_atoms(model, atoms).compute(atoms.cell.array.T / units.Bohr, atoms.positions / units.Bohr)


def test_wrong_atom_count_from_the_server_is_fatal(tmp_path, model):
    """No retry helps a template that does not match: the driver says so and exits with 2."""
    atoms = si_structure()
    server = Server(tmp_path / "s")
    driver = Driver(ACEPotential.from_atoms(model, atoms), Address(path=server.path), reconnect=True,
                    connect_timeout=5)
    thread, holder = start_driver(driver)
    conn = server.accept()
    handshake(conn)
    q = atoms.positions[:7] / units.Bohr
    conn.sendall(posdata(atoms.cell.array.T / units.Bohr, q) + hdr("GETFORCE"))
    assert_clean_eof(conn)
    thread.join(10)
    assert holder["status"] == BAD_INPUT
    server.close()


def test_cli_reports_unknown_elements(tmp_path, model, caplog):
    from aceserver.cli import main

    path = tmp_path / "m.model"
    model.save(path)
    atoms = si_structure()
    atoms.symbols[:2] = "C"
    atoms.write(tmp_path / "c.extxyz")
    status = main(["ipi", str(path), "--structure", str(tmp_path / "c.extxyz"), "--unix", "never",
                   "--connect-timeout", "0"])
    assert status == 2
    assert "c.extxyz: element(s) C not in the model (it knows Si)" in caplog.text
