"""The driver against the real i-PI: PIMD over unix and TCP, shared and replaced drivers,
i-PI's batch mode, and the virial convention on a triclinic cell."""
from __future__ import annotations

import signal

import numpy as np
import pytest
from ase import units

from ipi_support import (
    Children,
    bead_frames,
    free_port,
    ipi_input,
    make_model,
    read_output,
    si_structure,
    unique_name,
    wait,
    wait_for_steps,
)

import aceserver

TIMEOUT = 90  # seconds for one i-PI run; a normal one takes a few


@pytest.fixture(scope="module")
def model_path(tmp_path_factory):
    return make_model(tmp_path_factory.mktemp("model") / "si.model")


@pytest.fixture(scope="module")
def model(model_path):
    return aceserver.load_model(model_path)


def _structure(directory, triclinic=False):
    path = directory / "init.extxyz"
    si_structure(triclinic).write(path)
    return path


def _check_bead_energies(directory, model, nbeads, steps):
    """i-PI's per-bead potentials equal our evaluator's on i-PI's positions for every step."""
    out = read_output(directory, nbeads)
    assert list(out["step"]) == list(range(steps + 1))
    for bead in range(nbeads):
        frames = bead_frames(directory, bead)
        assert len(frames) == steps + 1
        ours = [model.evaluate(f.numbers, f.positions, f.cell.array, f.pbc).energy for f in frames]
        # i-PI's eV and Bohr differ from ASE's by ~1e-8; positions are printed to 1e-8 Å.
        np.testing.assert_allclose(out["bead_potentials"][:, bead], ours, rtol=1e-7, atol=1e-6)


def _run(directory, model_path, *driver_args, nbeads=4, steps=10, transport="unix", driver_first=False,
         options="", triclinic=False):
    """One complete i-PI run with one driver process; returns the driver's log."""
    structure = _structure(directory, triclinic)
    if transport == "unix":
        name = unique_name("pimd")
        address, where = dict(unix=name), ["--unix", name]
    else:
        port = free_port()
        address, where = dict(port=port), ["--inet", f"127.0.0.1:{port}"]
    xml = ipi_input(directory, structure, nbeads=nbeads, steps=steps, ffsocket_options=options, **address)
    with Children(directory) as children:
        if driver_first:
            driver = children.driver(model_path, structure, *where, *driver_args)
            server = children.ipi(xml)
        else:
            server = children.ipi(xml)
            driver = children.driver(model_path, structure, *where, *driver_args)
        assert wait(server, TIMEOUT) == 0, (directory / "ipi.log").read_text()[-3000:]
        assert wait(driver, 30) == 0
    return (directory / "driver.log").read_text()


@pytest.mark.parametrize("transport, driver_first", [("unix", True), ("inet", False)])
def test_pimd_nvt(tmp_path, model_path, model, transport, driver_first):
    # Both start orders: a driver started first must wait for the server's socket.
    log = _run(tmp_path, model_path, transport=transport, driver_first=driver_first)
    assert "EXIT from the server" in log
    _check_bead_energies(tmp_path, model, nbeads=4, steps=10)


def test_two_connections_share_the_beads(tmp_path, model_path, model):
    log = _run(tmp_path, model_path, "--clients", "2", options="<slots>2</slots>")
    calls = [int(line.split(" after ")[1].split()[0]) for line in log.splitlines() if "EXIT from the server" in line]
    assert len(calls) == 2 and min(calls) > 0, log  # both connections did work
    assert sum(calls) == 4 * 11
    _check_bead_energies(tmp_path, model, nbeads=4, steps=10)


def test_batch_size(tmp_path, model_path, model):
    # 4 beads in batches of 3: the second batch is padded by i-PI with a repeated structure.
    log = _run(tmp_path, model_path, "-vv", options="<batch_size>3</batch_size>")
    assert "batch_size:3" in log
    _check_bead_energies(tmp_path, model, nbeads=4, steps=10)


@pytest.mark.parametrize(
    "how, options",
    [
        # SIGTERM: the driver finishes its call and leaves.
        ("SIGTERM", ""),
        # SIGKILL: no clean-up in the driver at all; its guard process closes the connection.
        ("SIGKILL", ""),
        # i-PI's legacy mode, which loops forever on EOF while it waits for forces: the guard
        # must leave a reset there instead.
        ("SIGKILL", "<consolidate_messages>false</consolidate_messages>"),
    ],
)
def test_driver_replaced_mid_run(tmp_path, model_path, how, options):
    structure = _structure(tmp_path)
    nbeads, steps = 8, 30
    name = unique_name("kill")
    xml = ipi_input(tmp_path, structure, nbeads=nbeads, steps=steps, unix=name,
                    ffsocket_options=options, trajectory=False)
    with Children(tmp_path) as children:
        first = children.driver(model_path, structure, "--unix", name, log_name="first.log")
        server = children.ipi(xml)
        seen = wait_for_steps(tmp_path, 3, TIMEOUT)
        first.send_signal(getattr(signal, how))
        first.wait(30)
        assert 3 <= seen < steps, "the driver was not stopped mid-run"
        if how == "SIGTERM":
            assert first.returncode == 0
            assert "SIGTERM" in (tmp_path / "first.log").read_text()
        second = children.driver(model_path, structure, "--unix", name, log_name="second.log")
        assert wait(server, TIMEOUT) == 0, (tmp_path / "ipi.log").read_text()[-3000:]
        assert wait(second, 30) == 0
    out = read_output(tmp_path, nbeads)
    assert out["step"][-1] == steps
    assert "EXIT from the server" in (tmp_path / "second.log").read_text()


def test_triclinic_virial(tmp_path, model_path, model):
    """i-PI's virial_md (W/V, atomic units) equals -σ from ACECalculator, off-diagonals included."""
    _run(tmp_path, model_path, nbeads=1, steps=1, triclinic=True)
    out = read_output(tmp_path, 1)
    atoms = bead_frames(tmp_path, 0)[0]  # step 0, as i-PI holds it
    atoms.calc = aceserver.ACECalculator(model)
    stress = atoms.get_stress()  # xx yy zz yz xz xy, eV/Å³
    volume = atoms.get_volume()
    expected = -np.array([stress[0], stress[1], stress[2], stress[5], stress[4], stress[3]]) * volume
    reported = out["virial_md"][0] * units.Hartree / units.Bohr**3 * volume  # i-PI order xx yy zz xy xz yz
    assert np.abs(expected).min() > 1e-3  # a real test: no component vanishes by symmetry
    np.testing.assert_allclose(reported, expected, rtol=1e-6, atol=1e-9 * np.abs(expected).max())
    assert out["potential"][0] == pytest.approx(atoms.get_potential_energy(), rel=1e-7)
