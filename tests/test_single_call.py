"""The single small call's fused path (issue 25): an MD step whose Verlet list holds runs the
checks, the refresh, the serial site pass and the force/virial/energy assembly in one kernel call
(`kernels.single_call`). References: the general path's own kernels composed one by one as
before (`_neighbours` with a Verlet list in lockstep, `site_pass.fast_serial`,
`scatter_forces_virial`, `symmetrised`, numpy's sum), which must give the same bits, since the
fused call runs the same operations in the same order; and for the ASE calculator, a fresh
calculator on a copy after every in-place change of positions, cell, pbc or numbers."""
from pathlib import Path

import numpy as np
import pytest
from ase import Atoms

import aceserver
from aceserver.calculator import ACECalculator
from aceserver.errors import ACEInputError
from aceserver.evaluation.verlet import VerletList
from aceserver.kernels import site_pass as K
from aceserver.kernels.scatter import scatter_forces_virial, symmetrised

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module", params=["models/Si-tiny/Si-tiny.json",
                                        "tests/data/Cu-PBE-core-rep.yace"])
def model(request):
    """Si-tiny (ace1 tables, a committee) and a pacemaker .yace (tabulated tables)."""
    return aceserver.load_model(str(ROOT / request.param))


def small_cell(model, seed, n=2):
    rng = np.random.default_rng(seed)
    z = {"Si": 14, "Cu": 29}[model.elements[0]]
    c = (np.eye(3) + rng.normal(size=(3, 3)) * 0.1) * (3.4 if z == 14 else 2.6)
    return Atoms(numbers=[z] * n, positions=rng.random((n, 3)) @ c, cell=c, pbc=True)


def general_path(model, atoms, verlet, committee):
    """The evaluation as the general serial path composes it, kernel by kernel."""
    z, first, nbr, R = model._neighbours(atoms.numbers, atoms.positions, atoms.cell.array,
                                         atoms.pbc, verlet=verlet)
    tables = model._tables(committee and model.committee is not None)
    E, G, ec = K.fast_serial(first, nbr, R, z, tables, True)
    F, W = scatter_forces_virial(first, nbr, R, G, len(z))
    return E[0].sum(), F, symmetrised(W), E[0], ec, len(nbr)


@pytest.mark.parametrize("committee", [True, False])
def test_verlet_steps_give_the_general_paths_bits(model, committee):
    """A random walk of ~0.03 Å per step: most steps reuse the list (the fused call), some
    search again; every step equals the general path (its own Verlet list in lockstep) bit for
    bit, energy, forces, virial, site energies, committee energies and the pair count."""
    atoms = small_cell(model, 1)
    fused, lockstep = VerletList(0.3), VerletList(0.3)
    rng = np.random.default_rng(2)
    reused = 0
    for step in range(60):
        atoms.positions += rng.normal(scale=0.03, size=atoms.positions.shape)
        args = (atoms.numbers, atoms.positions, atoms.cell.array, atoms.pbc)
        will_reuse = fused.step(*args, model._lookup, model.rcut, model.min_distance,
                                model._tables(committee and model.committee is not None))
        reused += will_reuse is not None
        got = model.evaluate(*args, committee=committee, threads=1, verlet=fused)
        energy, F, W, energies, ec, pairs = general_path(model, atoms, lockstep, committee)
        assert got.energy == energy and got.pairs == pairs, step
        for a, b in ((got.forces, F), (got.virial, W), (got.energies, energies)):
            assert a.shape == b.shape and a.tobytes() == b.tobytes(), step
        if committee and model.committee is not None:
            assert got.energy_committee.tobytes() == ec.tobytes()
        else:
            assert got.energy_committee is None
    assert fused.searches == lockstep.searches
    assert 10 < reused < 60 and 1 < fused.searches < 50      # both paths were taken


def test_verlet_step_refuses_what_the_general_path_must_handle(model):
    """No search yet, a moved-too-far atom, another cell, periodicity or species, converted
    arrays: step answers None (the caller searches); bad input with a live list still gets
    the general path's named errors."""
    atoms = small_cell(model, 3)
    v = VerletList(0.3)
    tables = model._tables(False)

    def step(a=atoms, **over):
        args = dict(numbers=a.numbers, positions=a.positions, cell=a.cell.array, pbc=a.pbc) | over
        return v.step(args["numbers"], args["positions"], args["cell"], args["pbc"],
                      model._lookup, model.rcut, model.min_distance, tables)

    assert step() is None                                  # nothing searched yet
    model.evaluate(atoms.numbers, atoms.positions, atoms.cell.array, atoms.pbc, verlet=v)
    assert step() is not None
    moved = atoms.positions.copy()
    moved[0, 0] += 0.151                                   # beyond skin/2
    assert step(positions=moved) is None
    assert step(cell=atoms.cell.array * 1.01) is None
    assert step(pbc=np.array([True, True, False])) is None
    assert step(numbers=atoms.numbers.astype(np.int32)) is None     # not what ASE holds
    assert step(positions=atoms.positions.tolist()) is None
    assert step(numbers=np.full(2, 1)) is None                      # H: no species here
    cases = (("positions", lambda a: a.positions.__setitem__((1, 2), np.nan), "NaN"),
             ("positions", lambda a: a.positions.__setitem__(1, a.positions[0]), "on top|closer"),
             ("numbers", lambda a: a.numbers.__setitem__(0, 1), "H"))
    for field, spoil, match in cases:
        bad = atoms.copy()
        spoil(bad)
        with pytest.raises(ACEInputError, match=match) as err:
            model.evaluate(bad.numbers, bad.positions, bad.cell.array, bad.pbc, verlet=v)
        assert err.value.field == field


def _results(calc, atoms):
    atoms.calc = calc
    return (atoms.get_potential_energy(), atoms.get_forces(),
            atoms.get_stress() if atoms.pbc.all() else None,     # only 3-D periodic cells have one
            atoms.get_potential_energies(), calc.results.get("energy_committee"))


def _assert_same(got, want, exact):
    for g, w in zip(got, want):
        if w is None:
            assert g is None
        elif exact:
            assert np.array_equal(g, w)
        else:
            # a refreshed list forms R_ij as R_ref + d_j - d_i, a fresh search as x_j - x_i:
            # a few ulp of ~10 Å coordinates (~1e-14 Å), times force constants of ~10-100 eV/Å²
            np.testing.assert_allclose(g, w, rtol=0, atol=1e-10)


@pytest.mark.parametrize("change", ["positions", "cell", "pbc", "numbers"])
def test_calculator_sees_every_in_place_change(tial_model, change):
    """Positions, cell, pbc and numbers changed in place between calls on the same Atoms: the
    results are a fresh calculator's on a copy (bit for bit where the change forces a new
    search; positions within the refresh's rounding, see _assert_same)."""
    rng = np.random.default_rng(4)
    c = (np.eye(3) + rng.normal(size=(3, 3)) * 0.1) * 4.2
    atoms = Atoms("TiAl", positions=rng.random((2, 3)) @ c, cell=c, pbc=True)
    calc = ACECalculator(tial_model, threads=1)
    for k in range(4):
        before = calc.calculations
        if change == "positions":
            atoms.positions[1] += 0.01 * (k + 1)
        elif change == "cell":
            atoms.cell[0, 1] += 0.02
        elif change == "pbc":
            atoms.pbc[2] = not atoms.pbc[2]
        else:
            atoms.numbers[[0, 1]] = atoms.numbers[[1, 0]]
        got = _results(calc, atoms)
        assert calc.calculations == before + 1                  # the change was seen
        want = _results(ACECalculator(tial_model, threads=1), atoms.copy())
        _assert_same(got, want, exact=change != "positions" or k == 0)
