"""The driver as the client of ASE's SocketIOCalculator: MD through the socket is MD with
ACECalculator, over unix and TCP sockets."""
from __future__ import annotations

import numpy as np
import pytest
from ase import units
from ase.calculators.socketio import SocketIOCalculator
from ase.md.verlet import VelocityVerlet

from ipi_support import Children, free_port, make_model, si_structure, unique_name, wait

import aceserver


def _md(atoms, calc, steps=20):
    atoms = atoms.copy()
    atoms.calc = calc
    record = []
    dyn = VelocityVerlet(atoms, 1.0 * units.fs)
    dyn.attach(lambda: record.append((atoms.get_potential_energy(), atoms.get_forces(),
                                      atoms.get_stress(), atoms.positions.copy())), interval=1)
    dyn.run(steps)
    return record


@pytest.mark.parametrize("transport", ["unix", "inet"])
def test_socketio_md_equals_direct(tmp_path, transport):
    model_path = make_model(tmp_path / "si.model")
    atoms = si_structure(triclinic=True)
    # ~600 K of random velocities, so that atoms and the stress really move
    atoms.set_velocities(np.random.default_rng(1).normal(0.0, 0.045, (len(atoms), 3)))
    structure = tmp_path / "init.extxyz"
    atoms.write(structure)

    direct = _md(atoms, aceserver.ACECalculator(aceserver.load_model(model_path)))

    if transport == "unix":
        name = unique_name("ase")
        where, server_args = ["--unix", name], dict(unixsocket=name)
    else:
        port = free_port()
        where, server_args = ["--inet", f"localhost:{port}"], dict(port=port)
    with Children(tmp_path) as children:
        driver = children.driver(model_path, structure, *where)
        # The timeout bounds the wait for the driver, which may first compile the numba kernels.
        with SocketIOCalculator(**server_args, timeout=120) as calc:
            socket = _md(atoms, calc)
        assert wait(driver, 30) == 0  # ASE closes without EXIT: EOF ends the driver cleanly

    assert len(socket) == len(direct) == 21
    for (e1, f1, s1, r1), (e2, f2, s2, r2) in zip(direct, socket):
        # Bohr and Hartree there and back with ASE's own constants: equal to rounding.
        assert abs(e1 - e2) < 1e-9
        np.testing.assert_allclose(f2, f1, rtol=0, atol=1e-10)
        np.testing.assert_allclose(s2, s1, rtol=0, atol=1e-12)
        np.testing.assert_allclose(r2, r1, rtol=0, atol=1e-10)
