"""Shared pieces of the i-PI driver tests: a small real ACE model, i-PI inputs, child processes,
and a scripted server (a plain socket speaking the protocol's bytes) for the driver.

Every child process is started through ``Children``, which kills whatever is still running
when the test ends (pass or fail), and every wait is bounded.
"""
from __future__ import annotations

import itertools
import os
import shutil
import signal
import socket
import struct
import subprocess
import sys
import threading
import time
from pathlib import Path

import numpy as np
import pytest

from ase import Atoms
from ase.build import bulk
from ase.cell import Cell

import aceserver


def _ipi_command() -> list[str]:
    # The i-pi script sits beside this interpreter (venv or not); run it with this interpreter.
    # i-PI (the 'test' extra) is required: these tests are the proof that the driver works.
    script = Path(sys.executable).parent / "i-pi"
    if not script.exists():
        found = shutil.which("i-pi")
        assert found, "the i-pi script is not installed: pip install -e '.[test]'"
        script = Path(found)
    return [sys.executable, str(script)]

_names = itertools.count()


def make_model(path: Path, committee: bool = False) -> Path:
    """A small Si ACE model with random small parameters, saved to ``path``."""
    model = aceserver.ace1_model(elements=["Si"], order=2, totaldegree=6, rcut=5.0)
    rng = np.random.default_rng(7)
    model.parameters = 0.05 * rng.standard_normal(model.length_basis)
    if committee:
        model.committee = model.parameters + 0.01 * rng.standard_normal((4, model.length_basis))
    model.save(path)
    return path


def si_structure(triclinic: bool = False) -> Atoms:
    """8 Si atoms, slightly rattled; the triclinic cell is in ASE's lower-triangular form,
    which is the upper-triangular ``h`` i-PI requires."""
    atoms = bulk("Si", "diamond", a=5.43, cubic=True)
    if triclinic:
        cell = Cell.fromcellpar([5.5, 5.3, 5.6, 80.0, 95.0, 100.0])
        atoms.set_cell(cell, scale_atoms=True)
    atoms.rattle(0.05, seed=3)
    return atoms


def unique_name(tag: str) -> str:
    return f"acetest_{tag}_{os.getpid()}_{next(_names)}"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Children:
    """Start child processes; kill any still alive on exit."""

    def __init__(self, directory: Path):
        self.directory = directory
        self.procs: list[subprocess.Popen] = []

    def start(self, args, log_name: str) -> subprocess.Popen:
        log = open(self.directory / log_name, "w")
        proc = subprocess.Popen(args, cwd=self.directory, stdout=log, stderr=subprocess.STDOUT,
                                start_new_session=True)
        proc.log_path = self.directory / log_name
        self.procs.append(proc)
        return proc

    def driver(self, model: Path, structure: Path, *args: str, log_name: str = "driver.log") -> subprocess.Popen:
        return self.start([sys.executable, "-m", "aceserver.cli", "ipi", str(model),
                           "--structure", str(structure), *args], log_name)

    def ipi(self, input_xml: Path) -> subprocess.Popen:
        return self.start([*_ipi_command(), str(input_xml)], "ipi.log")

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        for proc in self.procs:
            if proc.poll() is None:
                os.killpg(proc.pid, signal.SIGKILL)
            proc.wait(10)


def wait(proc: subprocess.Popen, timeout: float) -> int:
    """Return code of ``proc``; fail the test (with its log) if it runs past ``timeout``."""
    try:
        return proc.wait(timeout)
    except subprocess.TimeoutExpired:
        pytest.fail(f"{proc.args[-1]} still running after {timeout} s; log:\n{proc.log_path.read_text()[-3000:]}")


def ipi_input(
    directory: Path,
    structure: Path,
    *,
    nbeads: int,
    steps: int,
    unix: str | None = None,
    port: int | None = None,
    ffsocket_options: str = "",
    trajectory: bool = True,
) -> Path:
    """An NVT (PIMD when nbeads > 1) i-PI input; the output holds per-bead potentials and the
    virial with full precision, and (``trajectory``) every bead's positions each step."""
    if unix:
        socket_xml = f"<ffsocket name='ace' mode='unix' pbc='false'><address>{unix}</address>"
    else:
        socket_xml = f"<ffsocket name='ace' mode='inet' pbc='false'><address>127.0.0.1</address><port>{port}</port>"
    traj = ("<trajectory filename='pos' stride='1' format='ase' flush='1'> positions </trajectory>"
            if trajectory else "")
    text = f"""<simulation verbosity='low' safe_stride='100000' floatformat='%.16e'>
  <output prefix='sim'>
    <properties stride='1' filename='out' flush='1'>
      [ step, potential{{electronvolt}}, bead_potentials{{electronvolt}}, virial_md ] </properties>
    {traj}
  </output>
  <total_steps>{steps}</total_steps>
  <prng><seed>31415</seed></prng>
  {socket_xml}{ffsocket_options}</ffsocket>
  <system>
    <initialize nbeads='{nbeads}'>
      <file mode='ase'> {structure.name} </file>
      <velocities mode='thermal' units='kelvin'> 300 </velocities>
    </initialize>
    <forces><force forcefield='ace'/></forces>
    <motion mode='dynamics'>
      <dynamics mode='nvt'>
        <timestep units='femtosecond'> 0.5 </timestep>
        <thermostat mode='pile_l'><tau units='femtosecond'> 50 </tau></thermostat>
      </dynamics>
    </motion>
    <ensemble><temperature units='kelvin'> 300 </temperature></ensemble>
  </system>
</simulation>
"""
    path = directory / "input.xml"
    path.write_text(text)
    return path


def read_output(directory: Path, nbeads: int) -> dict[str, np.ndarray]:
    """Columns of sim.out: step, potential (eV), bead_potentials (eV), virial_md (a.u.)."""
    data = np.atleast_2d(np.loadtxt(directory / "sim.out"))
    return {
        "step": data[:, 0].astype(int),
        "potential": data[:, 1],
        "bead_potentials": data[:, 2:2 + nbeads],
        "virial_md": data[:, 2 + nbeads:8 + nbeads],  # xx yy zz xy xz yz
    }


def bead_frames(directory: Path, bead: int):
    import ase.io

    return ase.io.read(directory / f"sim.pos_{bead}.extxyz", index=":")


def wait_for_steps(directory: Path, steps: int, timeout: float) -> int:
    """Wait until sim.out reports ``steps`` steps; returns the number seen."""
    deadline = time.monotonic() + timeout
    seen = 0
    while time.monotonic() < deadline:
        try:
            seen = sum(1 for line in open(directory / "sim.out") if line.strip() and not line.startswith("#"))
        except FileNotFoundError:
            pass
        if seen >= steps:
            break
        time.sleep(0.01)
    return seen


# ---------------------------------------------------------------- a scripted server


def hdr(name: str) -> bytes:
    return name.encode().ljust(12)


def posdata(h: np.ndarray, q: np.ndarray) -> bytes:
    """Plain POSDATA exactly as i-PI writes it (the inverse cell is garbage on purpose)."""
    return hdr("POSDATA") + h.tobytes() + np.full(9, np.nan).tobytes() + struct.pack("<i", len(q)) + q.tobytes()


def recv_exact(sock: socket.socket, n: int) -> bytes:
    data = b""
    while len(data) < n:
        chunk = sock.recv(n - len(data))
        assert chunk, f"EOF after {len(data)} of {n} bytes"
        data += chunk
    return data


def handshake(conn, bead=0, text=b""):
    """STATUS -> NEEDINIT, INIT, STATUS -> READY, as i-PI opens a connection."""
    conn.sendall(hdr("STATUS"))
    assert recv_exact(conn, 12) == b"NEEDINIT    "
    conn.sendall(hdr("INIT") + struct.pack("<ii", bead, len(text)) + text + hdr("STATUS"))
    assert recv_exact(conn, 12) == b"READY       "


class Server:
    """A listening unix socket standing in for i-PI."""

    def __init__(self, path, listen=True):
        self.path = str(path)
        self.sock = None
        if listen:
            self.listen()

    def listen(self):
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        self.sock.bind(self.path)
        self.sock.listen(4)
        # A bound, not an expectation: a driver process may first compile the numba kernels.
        self.sock.settimeout(120)

    def accept(self):
        conn, _ = self.sock.accept()
        conn.settimeout(10)
        return conn

    def close(self):
        if self.sock:
            self.sock.close()


def start_driver(driver):
    holder = {}
    thread = threading.Thread(target=lambda: holder.setdefault("status", driver.run()), daemon=True)
    thread.start()
    return thread, holder


def assert_clean_eof(conn):
    """The peer closed with FIN, not a reset, and read everything we sent."""
    conn.settimeout(5)
    assert conn.recv(4096) == b""  # a reset would raise ConnectionResetError here
    conn.close()  # as i-PI does; the driver waits for it before closing its side
