"""The numba evaluator against independent references: finite differences, symmetry, supercells,
the basis form, and bad input."""
import numpy as np
import pytest
from ase import Atoms
from ase import units
from ase.build import bulk

import aceserver
from aceserver.errors import ACEInputError, UnknownElementError
from aceserver.evaluation.site_potential import PARALLEL_MIN_ATOMS
from sum_bounds import scatter_bounds


def ev(model, atoms, **kw):
    return model.evaluate(atoms.numbers, atoms.positions, atoms.cell[:], atoms.pbc, **kw)


def si_cell(rattle=0.1, seed=1):
    at = bulk("Si", "diamond", a=5.43, cubic=True)
    at.rattle(rattle, seed=seed)
    return at


def tial_cell(seed=2):
    at = bulk("Al", "fcc", a=4.05, cubic=True) * (2, 1, 1)
    rng = np.random.default_rng(seed)
    at.numbers = rng.choice([13, 22], size=len(at))
    at.rattle(0.1, seed=seed)
    return at


def triclinic_tial(seed=3):
    """A sheared (triclinic) Ti/Al cell: fcc positions under a general strain, rattled."""
    at = tial_cell(seed)
    strain = np.array([[1.0, 0.21, -0.12], [0.05, 0.96, 0.17], [-0.08, 0.1, 1.04]])
    at.set_cell(at.cell[:] @ strain, scale_atoms=True)
    return at


def cluster(symbols, seed=4):
    rng = np.random.default_rng(seed)
    pos, n = [], len(Atoms(symbols))
    while len(pos) < n:
        p = rng.uniform(-3.5, 3.5, size=3)
        if all(np.linalg.norm(p - q) > 2.0 for q in pos):
            pos.append(p)
    return Atoms(symbols, positions=pos)


def fd_forces(model, atoms, h=1e-5):
    # E0 is a constant; dropping it keeps ~7000 eV of offset out of the difference quotient
    model = aceserver.ACEModel(model.basis, parameters=model.parameters,
                               E0={el: 0.0 for el in model.elements})
    F = np.zeros((len(atoms), 3))
    for i in range(len(atoms)):
        for a in range(3):
            p = atoms.copy()
            p.positions[i, a] += h
            ep = ev(model, p).energy
            p.positions[i, a] -= 2 * h
            em = ev(model, p).energy
            F[i, a] = -(ep - em) / (2 * h)
    return F


CASES = {
    "si-periodic": ("si_model", si_cell),
    "si-molecule": ("si_model", lambda: cluster("Si8")),
    "tial-periodic": ("tial_model", tial_cell),
    "tial-triclinic": ("tial_model", triclinic_tial),
    "tial-molecule": ("tial_model", lambda: cluster("Ti4Al5")),
}


@pytest.mark.parametrize("case", sorted(CASES))
def test_forces_equal_finite_differences(case, request):
    """Central differences with h = 1e-5 Å err by truncation h²/6·|∂³E| plus rounding ~ε Σ|E_i|/h
    (E0 dropped, see fd_forces). Measured (AMD EPYC): |∂³E| ≤ 350 eV/Å³ and Σ|E_i| ≤ 160 eV give
    ≤ 6e-9 + 4e-9 eV/Å (observed FD errors 5e-11 to 1e-8) against the tolerance 1e-6·max|F| ≥ 2e-7
    eV/Å: neither term depends on the CPU beyond ε, and a wrong force is off by O(|F|)."""
    model_name, build = CASES[case]
    model = request.getfixturevalue(model_name)
    atoms = build()
    F = ev(model, atoms).forces
    Ffd = fd_forces(model, atoms)
    assert np.abs(F).max() > 1e-2
    assert np.abs(F - Ffd).max() / np.abs(F).max() < 1e-6


@pytest.mark.parametrize("case", ["si-periodic", "tial-periodic", "tial-triclinic"])
def test_virial_equals_finite_strain_derivative(case, request):
    model_name, build = CASES[case]
    model = request.getfixturevalue(model_name)
    atoms = build()
    W = ev(model, atoms).virial
    model = aceserver.ACEModel(model.basis, parameters=model.parameters,
                               E0={el: 0.0 for el in model.elements})
    h = 1e-6
    dE = np.zeros((3, 3))
    for a in range(3):
        for b in range(3):
            e = np.zeros((3, 3))
            e[a, b] = h
            for sign in (1, -1):
                st = atoms.copy()
                st.set_cell(atoms.cell[:] @ (np.eye(3) + sign * e), scale_atoms=True)
                dE[a, b] += sign * ev(model, st).energy
    dE /= 2 * h
    # W = -dE/dε (symmetric part)
    sym = -(dE + dE.T) / 2
    # strain step h = 1e-6: rounding ε|E|/h ≤ 4e-8 eV (|E| ≤ 160 eV without E0), truncation
    # h²/6·|∂³E/∂ε³| ~ 1e-12·|W|; the tolerance 1e-6·max|W| is far above both
    np.testing.assert_allclose(W, sym, atol=1e-6 * np.abs(W).max())
    from aceserver.calculator import ACECalculator
    atoms.calc = ACECalculator(request.getfixturevalue(model_name))
    stress = atoms.get_stress()
    V = atoms.get_volume()
    np.testing.assert_allclose(stress, -np.array([W[0, 0], W[1, 1], W[2, 2], W[1, 2], W[0, 2],
                                                  W[0, 1]]) / V, rtol=1e-12, atol=1e-14)


def test_rotation_translation_permutation(tial_model):
    """Rotating, translating or permuting changes the inputs by ~ε|x| and reorders the sums: the
    results differ by ~nε Σ|terms| (~1e-13 here). Measured on an AMD EPYC with 1 and 2 threads: at
    most 1e-3 of each tolerance below used; a broken symmetry is off by O(|F|)."""
    at = tial_cell()
    ref = ev(tial_model, at)
    rng = np.random.default_rng(0)
    Q, _ = np.linalg.qr(rng.normal(size=(3, 3)))
    rot = at.copy()
    rot.set_cell(at.cell[:] @ Q.T, scale_atoms=False)
    rot.positions = at.positions @ Q.T + rng.normal(size=3)
    r = ev(tial_model, rot)
    assert r.energy == pytest.approx(ref.energy, rel=1e-12)
    np.testing.assert_allclose(r.forces, ref.forces @ Q.T, atol=1e-10)
    np.testing.assert_allclose(r.virial, Q @ ref.virial @ Q.T, atol=1e-9)
    perm = rng.permutation(len(at))
    p = at[perm]
    rp = ev(tial_model, p)
    assert rp.energy == pytest.approx(ref.energy, rel=1e-12)
    np.testing.assert_allclose(rp.forces, ref.forces[perm], atol=1e-11)
    np.testing.assert_allclose(rp.energies, ref.energies[perm], atol=1e-11)


def test_supercell_and_small_cells(si_model, tial_model):
    # 8 and 64 copies summed: nε Σ|E_i| ~ 1e-13 relative; tolerances 1e-10/1e-9 (measured < 1e-3 used)
    at = tial_cell()
    big = at * (2, 2, 2)
    r1, r8 = ev(tial_model, at), ev(tial_model, big)
    assert r8.energy == pytest.approx(8 * r1.energy, rel=1e-10)
    np.testing.assert_allclose(r8.forces[: len(at)], r1.forces, atol=1e-9)
    np.testing.assert_allclose(r8.virial, 8 * r1.virial, rtol=1e-9, atol=1e-9)
    # a 2-atom primitive cell, far smaller than the 5 Å cutoff, against its 4x4x4 supercell
    prim = bulk("Si", "diamond", a=5.43)
    prim.positions[1] += [0.05, -0.03, 0.02]
    rp, rs = ev(si_model, prim), ev(si_model, prim * (4, 4, 4))
    assert rs.energy == pytest.approx(64 * rp.energy, rel=1e-10)
    np.testing.assert_allclose(rs.forces[:2], rp.forces, atol=1e-9)


def test_per_atom_energies_sum_and_isolated_atoms(tial_model):
    at = tial_cell()
    r = ev(tial_model, at)
    assert r.energies.sum() == pytest.approx(r.energy, rel=1e-14)
    lone = Atoms("TiAl", positions=[[0, 0, 0], [0, 0, 20.0]])
    r = ev(tial_model, lone)
    assert r.energy == pytest.approx(-1586.0195 - 105.5954, abs=1e-12)
    np.testing.assert_array_equal(r.forces, 0.0)


def test_fast_form_equals_basis_form(si_model, tial_model):
    for model, atoms in ((si_model, si_cell()), (tial_model, tial_cell()),
                         (tial_model, triclinic_tial()), (tial_model, cluster("Ti3Al4"))):
        r = ev(model, atoms)
        e, f, v = model.basis_rows(atoms.numbers, atoms.positions, atoms.cell[:], atoms.pbc)
        e0 = sum(model.E0[s] for s in atoms.get_chemical_symbols())
        theta = model.parameters
        # two summation orders of the same terms (basis rows · θ vs the fast form): ~mε Σ|terms|,
        # measured < 1e-3 of these tolerances
        assert e @ theta + e0 == pytest.approx(r.energy, rel=1e-10)
        scale = np.abs(r.forces).max()
        np.testing.assert_allclose(f @ theta, r.forces, atol=1e-10 * scale)
        np.testing.assert_allclose(v @ theta, r.virial, atol=1e-10 * np.abs(r.virial).max())


def test_parallel_kernel_equals_serial(tial_model):
    """Site energies are computed site by site in both kernels; only the scatter's sums are
    reassociated. Measured on an AMD EPYC (2 numba threads): forces 2.8e-16 eV/Å, virial 1.8e-12 eV
    against bounds 1.1e-13 and 4e-9 (the former fixed atol=1e-11 for the virial was used to 9 %)."""
    at = tial_cell() * (4, 3, 3)
    assert len(at) >= PARALLEL_MIN_ATOMS
    a = ev(tial_model, at, threads=1)
    b = ev(tial_model, at, threads=None)
    # the energy: n site energies summed by numpy in the same order (nε Σ|E_i| is the bound, were it not)
    assert a.energy == pytest.approx(b.energy, rel=0, abs=2 * len(at) * np.finfo(float).eps * np.abs(a.energies).sum())
    f_bound, w_bound = scatter_bounds(tial_model, at)
    assert np.all(np.abs(a.forces - b.forces) <= f_bound)
    assert np.all(np.abs(a.virial - b.virial) <= 0.5 * (w_bound + w_bound.T))   # W is symmetrised


def test_concurrent_threads_give_serial_numbers(tial_model):
    from concurrent.futures import ThreadPoolExecutor
    structures = [tial_cell(seed=s) * (k, 1, 1) for s, k in zip(range(12), [1, 2, 3] * 4)]
    serial = [ev(tial_model, s) for s in structures]
    with ThreadPoolExecutor(4) as pool:
        par = list(pool.map(lambda s: ev(tial_model, s), structures * 2))
    for r, ref in zip(par, serial * 2):
        assert r.energy == ref.energy
        np.testing.assert_array_equal(r.forces, ref.forces)


def test_bad_structures_get_clear_errors(tial_model):
    at = tial_cell()
    with pytest.raises(UnknownElementError, match="Si"):
        tial_model.evaluate([14] + list(at.numbers[1:]), at.positions, at.cell[:], True)
    pos = at.positions.copy()
    pos[3, 1] = np.nan
    with pytest.raises(ACEInputError, match="NaN") as err:
        tial_model.evaluate(at.numbers, pos, at.cell[:], True)
    assert err.value.field == "positions"
    pos = at.positions.copy()
    pos[2] = pos[5]
    with pytest.raises(ACEInputError, match="on top of each other"):
        tial_model.evaluate(at.numbers, pos, at.cell[:], True)
    with pytest.raises(ACEInputError, match="shape"):
        tial_model.evaluate(at.numbers, at.positions[:, :2], at.cell[:], True)
    with pytest.raises(ACEInputError, match="degenerate"):
        tial_model.evaluate(at.numbers, at.positions, np.diag([4.0, 4.0, 0.0]), True)
    with pytest.raises(ACEInputError, match="inf"):
        tial_model.evaluate(at.numbers, at.positions, np.diag([4.0, np.inf, 4.0]), True)
    pos = at.positions.copy()
    pos[0, 0] = 1e300
    with pytest.raises(ACEInputError, match="exceed"):
        tial_model.evaluate(at.numbers, pos, at.cell[:], True)


def test_ase_calculator_md_and_optimiser(si_model, tmp_path):
    from ase.md.verlet import VelocityVerlet
    from ase.md.velocitydistribution import MaxwellBoltzmannDistribution
    from ase.optimize import BFGS

    from aceserver.calculator import ACECalculator
    path = tmp_path / "si.json"
    si_model.save(path)
    at = si_cell(0.05)
    at.calc = ACECalculator(path)             # from a file path
    MaxwellBoltzmannDistribution(at, temperature_K=300, rng=np.random.default_rng(0))
    e0 = at.get_total_energy()
    VelocityVerlet(at, timestep=0.5 * units.fs).run(20)
    assert abs(at.get_total_energy() - e0) < 1e-3 * len(at)
    np.testing.assert_allclose(at.get_potential_energies().sum(), at.get_potential_energy())
    assert at.calc.get_property("free_energy") == at.get_potential_energy()
    mol = cluster("Si5")
    mol.calc = ACECalculator(si_model)
    f0 = np.abs(mol.get_forces()).max()
    BFGS(mol, logfile=None).run(fmax=f0 / 10, steps=200)
    assert np.abs(mol.get_forces()).max() <= f0 / 10


def test_ase_calculator_direct_calculate_calls_snapshot_the_atoms(si_model):
    """calculate() called directly (not through get_*) with changed atoms must recompute from
    them and keep its own copy (the calculator skips ASE's second copy only when the stored
    atoms are the same)."""
    from aceserver.calculator import ACECalculator
    calc = ACECalculator(si_model, skin=0)
    a, b = si_cell(0.05), si_cell(0.08)
    calc.calculate(a, ["energy", "forces"])
    assert calc.atoms is not a and np.array_equal(calc.atoms.positions, a.positions)
    calc.calculate(b, ["energy", "forces"])
    ref = ev(si_model, b)
    assert calc.results["energy"] == pytest.approx(ref.energy, rel=1e-13)
    np.testing.assert_allclose(calc.results["forces"], ref.forces, rtol=0, atol=1e-12)
    b.positions[0] += 0.1                        # the stored copy does not follow the caller's atoms
    assert not np.array_equal(calc.atoms.positions, b.positions)
    b.calc = calc                                # through get_*: one fresh evaluation per change
    assert b.get_potential_energy() == pytest.approx(ev(si_model, b).energy, rel=1e-13)
    with pytest.raises(ValueError, match="no atoms"):
        ACECalculator(si_model).calculate()


def test_one_compilation_serves_every_structure_size(si_model):
    from types import SimpleNamespace

    from aceserver.kernels import neighbours as NL
    from aceserver.kernels.basis_rows import basis_rows
    from aceserver.kernels.scatter import scatter_forces_virial
    from aceserver.kernels.site_pass import _serial_ace1
    K = SimpleNamespace(_serial_ace1=_serial_ace1, basis_rows=basis_rows,
                        scatter_forces_virial=scatter_forces_virial)
    for reps in (1, 2, 3):
        at = si_cell() * (reps, 1, 1)
        ev(si_model, at, threads=1)
        si_model.basis_rows(at.numbers, at.positions, at.cell[:], at.pbc)
    ev(si_model, cluster("Si6"), threads=1)
    assert len(K._serial_ace1.signatures) == 1      # the ace1 entry point of the site pass
    assert len(K.basis_rows.signatures) == 1
    assert len(K.scatter_forces_virial.signatures) == 1
