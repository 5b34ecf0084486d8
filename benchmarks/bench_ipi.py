"""Benchmark the i-PI driver: overhead per force call, and i-PI PIMD steps per second.

    python benchmarks/bench_ipi.py [--model FILE] [--calls 1000] [--steps 300] [--skip-ipi]

1. Overhead per force call on a unix socket, 64 Si atoms. A minimal in-process server plays
   i-PI 3 (POSDATA+GETFORCE in one write, FORCEREADY, then the STATUS/READY probe) against
   a Driver with a zero-cost potential in a child process: the protocol's cost. The adapter's
   own cost (units, extras) is timed on a model that returns a fixed Evaluation. Their sum is
   the driver overhead. The same loop against `aceserver ipi` with the real model is printed
   as a check; on a shared machine its evaluation time varies more than the overhead.
2. i-PI NVT PIMD, 8 beads, 64 atoms: steps/s with one and two driver connections (and with
   i-PI's batch_size=8), from i-PI's own "t/step" averages after the first 100 steps.

Prints numbers only; the machine's load makes them noisy, so each is a median (or min) of repeats.
"""
from __future__ import annotations

import argparse
import os
import re
import socket
import struct
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
from ase import units
from ase.build import bulk

import aceserver

HDR = {name: name.encode().ljust(12) for name in ["STATUS", "INIT", "POSDATA", "GETFORCE", "EXIT"]}

ZERO_DRIVER = """
import sys
import numpy as np
from aceserver.serving.ipi import Address, Driver

class Zero:
    def compute(self, h, q):
        return 0.0, np.zeros_like(q), np.zeros((3, 3)), ""

sys.exit(Driver(Zero(), Address(path=sys.argv[1]), connect_timeout=30).run())
"""


def structure():
    atoms = bulk("Si", "diamond", a=5.43, cubic=True).repeat(2)  # 64 atoms
    atoms.rattle(0.03, seed=1)
    return atoms


def model_file(args, directory: Path) -> Path:
    if args.model:
        return Path(args.model)
    model = aceserver.ace1_model(elements=["Si"], order=3, totaldegree=10, rcut=5.0)
    model.parameters = 0.02 * np.random.default_rng(0).standard_normal(model.length_basis)
    path = directory / "si_bench.model"
    model.save(path)
    return path


def recv_exact(sock, n):
    buf = bytearray(n)
    view = memoryview(buf)
    got = 0
    while got < n:
        k = sock.recv_into(view[got:])
        if k == 0:
            raise ConnectionError("driver closed the connection")
        got += k
    return buf


def time_calls(conn, atoms, calls):
    """Seconds per force call, i-PI-3 style, for ``calls`` calls (after 50 warm-up calls)."""
    nat = len(atoms)
    h = (atoms.cell.array.T / units.Bohr).tobytes()
    ih = np.linalg.inv(atoms.cell.array.T / units.Bohr).tobytes()
    q0 = atoms.positions / units.Bohr
    rng = np.random.default_rng(2)
    head = HDR["POSDATA"] + h + ih + struct.pack("<i", nat)
    fixed = 12 + 8 + 4 + 24 * nat + 72 + 4
    times = []
    for i in range(calls + 50):
        q = (q0 + 1e-3 * rng.standard_normal(q0.shape)).tobytes()
        t0 = time.perf_counter()
        conn.sendall(head + q + HDR["GETFORCE"])
        reply = recv_exact(conn, fixed)
        (extra,) = struct.unpack("<i", reply[-4:])
        if extra:
            recv_exact(conn, extra)
        conn.sendall(HDR["STATUS"])
        recv_exact(conn, 12)
        if i >= 50:
            times.append(time.perf_counter() - t0)
    return np.array(times)


def serve_driver(command, path: str, atoms, calls):
    if os.path.exists(path):
        os.unlink(path)
    server = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    server.bind(path)
    server.listen(1)
    server.settimeout(120)
    proc = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    try:
        conn, _ = server.accept()
        conn.sendall(HDR["STATUS"])
        assert recv_exact(conn, 12).strip() == b"NEEDINIT"
        conn.sendall(HDR["INIT"] + struct.pack("<ii", 0, 0) + HDR["STATUS"])
        assert recv_exact(conn, 12).strip() == b"READY"
        times = time_calls(conn, atoms, calls)
        conn.sendall(HDR["EXIT"])
        conn.close()
        proc.wait(30)
        return times
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
        server.close()
        os.unlink(path)


class Canned:
    """The model's interface with a fixed answer: times the adapter without evaluation noise."""

    def __init__(self, model, result):
        self.elements, self.committee, self.result = model.elements, model.committee, result

    def evaluate(self, *args, **kwargs):
        return self.result


def bench_overhead(args, directory: Path):
    from aceserver.serving.ipi import ACEPotential

    atoms = structure()
    atoms.write(directory / "si64.extxyz")
    path = model_file(args, directory)
    model = aceserver.load_model(path)
    numbers, cell, pbc = atoms.numbers, atoms.cell.array, atoms.pbc
    h, q = cell.T / units.Bohr, atoms.positions / units.Bohr
    rng = np.random.default_rng(2)
    for _ in range(20):
        model.evaluate(numbers, atoms.positions, cell, pbc)
    evals, serial = [], []
    for _ in range(args.calls):
        pos = atoms.positions + 1e-3 * units.Bohr * rng.standard_normal(atoms.positions.shape)
        t0 = time.perf_counter()
        model.evaluate(numbers, pos, cell, pbc)
        t1 = time.perf_counter()
        model.evaluate(numbers, pos, cell, pbc, threads=1)
        evals.append(t1 - t0)
        serial.append(time.perf_counter() - t1)
    evals, serial = np.array(evals), np.array(serial)
    canned = Canned(model, model.evaluate(numbers, atoms.positions, cell, pbc, committee=True))
    adapter = {}
    for label, extras in [("none", ()), ("energies", ("energies", "committee"))]:
        pot = ACEPotential.from_atoms(canned, atoms, extras=extras)
        t = []
        for _ in range(args.calls):
            t0 = time.perf_counter()
            pot.compute(h, q)
            t.append(time.perf_counter() - t0)
        adapter[label] = np.median(t)
    sock = f"/tmp/ipi_bench_{os.getpid()}"
    zero = np.median(serve_driver([sys.executable, "-c", ZERO_DRIVER, sock], sock, atoms, args.calls))
    print(f"64 Si atoms, unix socket, {args.calls} calls; medians (min) in µs")
    print(f"  bare model.evaluate                          {np.median(evals) * 1e6:9.1f} ({evals.min() * 1e6:.1f})")
    print(f"  bare model.evaluate(threads=1)               {np.median(serial) * 1e6:9.1f} ({serial.min() * 1e6:.1f})")
    print(f"  protocol: Driver with a zero-cost potential  {zero * 1e6:9.1f}"
          "   (both sides' round trips, i-PI 3 style)")
    for label in ["none", "energies"]:
        print(f"  ACEPotential (units, extras {label:8s})     {adapter[label] * 1e6:9.1f}"
              f"   -> driver overhead per call: {(zero + adapter[label]) * 1e6:.1f}")
    for label, extras in [("none", ["--extras", "none"]), ("energies", ["--extras", "energies,committee"])]:
        cmd = [sys.executable, "-m", "aceserver.cli", "ipi", str(path), "--structure",
               str(directory / "si64.extxyz"), "--unix", Path(sock).name[len("ipi_"):], "-q", *extras]
        e2e = serve_driver(cmd, sock, atoms, args.calls)
        # Only a check: the child's evaluation time varies as much as the two lines above.
        print(f"  end to end, aceserver ipi --extras {label:8s} {np.median(e2e) * 1e6:9.1f} ({e2e.min() * 1e6:.1f})")
    return path


IPI_INPUT = """<simulation verbosity='medium' safe_stride='100000'>
  <output prefix='sim'><properties stride='100' filename='out'> [ step, potential ] </properties></output>
  <total_steps>{steps}</total_steps>
  <prng><seed>1</seed></prng>
  <ffsocket name='ace' mode='unix' pbc='false'><address>{name}</address>{options}</ffsocket>
  <system>
    <initialize nbeads='8'>
      <file mode='ase'> si64.extxyz </file>
      <velocities mode='thermal' units='kelvin'> 300 </velocities>
    </initialize>
    <forces><force forcefield='ace'/></forces>
    <motion mode='dynamics'><dynamics mode='nvt'>
      <timestep units='femtosecond'> 0.5 </timestep>
      <thermostat mode='pile_l'><tau units='femtosecond'> 100 </tau></thermostat>
    </dynamics></motion>
    <ensemble><temperature units='kelvin'> 300 </temperature></ensemble>
  </system>
</simulation>
"""


def bench_pimd(args, directory: Path, model_path: Path):
    ipi_script = Path(sys.executable).parent / "i-pi"
    print(f"i-PI NVT PIMD, 8 beads x 64 Si atoms, {args.steps} steps; steps/s after step 100")
    runs = [("1 connection", ["--clients", "1"], ""), ("2 connections", ["--clients", "2"], ""),
            ("1 connection, batch_size=8", ["--clients", "1"], "<batch_size>8</batch_size>")]
    for label, clients, options in runs:
        name = f"bench_pimd_{os.getpid()}"
        run_dir = directory / re.sub(r"\W+", "_", label)
        run_dir.mkdir()
        (run_dir / "si64.extxyz").write_bytes((directory / "si64.extxyz").read_bytes())
        (run_dir / "input.xml").write_text(IPI_INPUT.format(steps=args.steps, name=name, options=options))
        procs = []
        try:
            procs.append(subprocess.Popen([sys.executable, str(ipi_script), "input.xml"], cwd=run_dir,
                                          stdout=open(run_dir / "ipi.log", "w"), stderr=subprocess.STDOUT))
            procs.append(subprocess.Popen([sys.executable, "-m", "aceserver.cli", "ipi", str(model_path),
                                           "--structure", "si64.extxyz", "--unix", name, "-q", *clients],
                                          cwd=run_dir))
            procs[0].wait(600)
            procs[1].wait(60)
        finally:
            for p in procs:
                if p.poll() is None:
                    p.kill()
                    p.wait()
        per_step = [float(x) for x in re.findall(r"t/step:\s*(\S+)", (run_dir / "ipi.log").read_text())[1:]]
        if not per_step:
            print(f"  {label:28s} no timings (see {run_dir / 'ipi.log'})")
            continue
        print(f"  {label:28s} {1 / np.median(per_step):8.1f} steps/s  ({np.median(per_step) * 1e3:.2f} ms/step)")


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", help="model file (default: a random Si model, order 3, totaldegree 10)")
    parser.add_argument("--calls", type=int, default=1000)
    parser.add_argument("--steps", type=int, default=300)
    parser.add_argument("--skip-ipi", action="store_true", help="only the overhead benchmark")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        directory = Path(tmp)
        model_path = bench_overhead(args, directory)
        if not args.skip_ipi:
            bench_pimd(args, directory, model_path)


if __name__ == "__main__":
    main()
