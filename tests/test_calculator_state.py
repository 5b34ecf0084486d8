"""The ASE calculator's cheap fixed cost keeps ASE's contract (issue 25): `stored_copy` holds what
`Atoms.copy()` holds; the overridden `get_property` gives the numbers of ASE's own
`BaseCalculator.get_property` bit for bit (a subclass that uses ASE's is the reference), committee
outputs included; the cheaper stress and committee spread are the previous formulas' bits
(np.std, and the stress as -W/V picked into Voigt order one entry at a time)."""
import copy

import numpy as np
import pytest
from ase import Atoms
from ase.build import bulk
from ase.calculators.calculator import BaseCalculator
from ase.constraints import FixAtoms

import aceserver
from aceserver.calculator import ACECalculator, stored_copy
from aceserver.errors import ACEInputError
from aceserver.evaluation import postprocess

SI_TINY = "models/Si-tiny/Si-tiny.json"


@pytest.fixture(scope="module")
def si_tiny():
    from pathlib import Path
    return aceserver.load_model(str(Path(__file__).resolve().parents[1] / SI_TINY))


class ASEFlow(ACECalculator):
    """The reference: ASE's own get_property (Atoms.copy, then calculate compares the atoms)."""
    get_property = BaseCalculator.get_property


def two_atom_cells(count, seed):
    rng = np.random.default_rng(seed)
    out = []
    for _ in range(count):
        c = (np.eye(3) + rng.normal(size=(3, 3)) * 0.15) * 3.4
        out.append(Atoms("Si2", positions=rng.random((2, 3)) @ c, cell=c, pbc=True))
    return out


def test_stored_copy_holds_what_atoms_copy_holds():
    a = bulk("Si", "diamond", 5.43, cubic=True)
    a.set_constraint(FixAtoms(indices=[0, 3]))
    a.info["config_type"] = "bulk"
    a.set_tags(np.arange(len(a)))
    a.set_momenta(np.ones((len(a), 3)))
    a.set_celldisp([0.1, 0.2, 0.3])
    a.pbc = [True, False, True]
    mine, ase_copy = stored_copy(a), a.copy()
    assert type(mine) is Atoms and mine.calc is None
    assert vars(mine).keys() == vars(ase_copy).keys()
    assert mine.arrays.keys() == ase_copy.arrays.keys()
    for name, arr in mine.arrays.items():
        assert np.array_equal(arr, ase_copy.arrays[name]) and arr.dtype == ase_copy.arrays[name].dtype
        assert not np.shares_memory(arr, a.arrays[name])
    for got, want, orig in ((mine.cell.array, ase_copy.cell.array, a.cell.array),
                            (mine.pbc, ase_copy.pbc, a.pbc),
                            (mine.get_celldisp(), ase_copy.get_celldisp(), a.get_celldisp())):
        assert np.array_equal(got, want) and got.dtype == want.dtype and not np.shares_memory(got, orig)
    assert mine.info == ase_copy.info and mine.info is not a.info
    assert [c.todict() for c in mine.constraints] == [c.todict() for c in ase_copy.constraints]
    assert mine.constraints[0] is not a.constraints[0]
    assert mine == a                                   # ASE's own comparison (arrays, cell, pbc)

    class Mine(Atoms):
        pass
    sub = Mine("Si2", positions=[[0, 0, 0], [1.3, 1.3, 1.3]])
    assert type(stored_copy(sub)) is Mine              # other classes: their own copy()


@pytest.mark.parametrize("committee", [True, False])
def test_calls_give_ase_flow_numbers_bit_for_bit(si_tiny, committee):
    """MD-like moves (positions changed in place), new cells, a changed cell of the same atoms,
    and cached get_* calls: every result the same bits as ASE's get_property flow."""
    mine, ref = (cls(si_tiny, committee=committee, threads=1) for cls in (ACECalculator, ASEFlow))
    md = two_atom_cells(1, 3)[0]

    def md_step(k):           # positions changed in place: check_state must see it
        md.positions[1] += 0.02 * np.sin([k, k + 1, k + 2])
        return md

    cells = two_atom_cells(4, 5)
    strained = cells[-1].copy()
    strained.cell[0, 0] += 0.05                                   # same positions, another cell
    steps = [lambda k=k: md_step(k) for k in range(6)] + [lambda a=a: a for a in cells + [strained]]
    names = ["energy", "forces", "stress", "energies", "free_energy"]
    for step in steps:
        a = step()
        got, want = {}, {}
        for calc, out in ((mine, got), (ref, want)):
            for name in names + names:                            # the second round is cached
                out[name] = calc.get_property(name, a)
            out["results"] = dict(calc.results)
        for name in names:
            assert np.array_equal(got[name], want[name]), name
        assert got["results"].keys() == want["results"].keys()
        if committee:
            assert np.array_equal(got["results"]["energy_committee"], want["results"]["energy_committee"])
            assert got["results"]["energy_std"] == want["results"]["energy_std"]
            assert got["results"]["energy_std"] == float(np.std(got["results"]["energy_committee"]))
        else:
            assert "energy_std" not in got["results"]
        assert mine.atoms is not a and mine.atoms == a
    assert mine.calculations == ref.calculations == len(steps)


def test_results_are_previous_formulas_bits(si_tiny):
    """Stress as -W/V with V the triple product, Voigt entries one by one; energies and forces
    those of model.evaluate; energy_std np.std's bits (the previous code)."""
    for a in two_atom_cells(5, 9):
        calc = ACECalculator(si_tiny, threads=1, skin=0)
        a.calc = calc
        s = a.get_stress()
        ev = si_tiny.evaluate(a.numbers, a.positions, a.cell.array, a.pbc, committee=True, threads=1)
        (a0, a1, a2), (b0, b1, b2), (c0, c1, c2) = a.cell.array.tolist()
        v = abs(a0 * (b1 * c2 - b2 * c1) - a1 * (b0 * c2 - b2 * c0) + a2 * (b0 * c1 - b1 * c0))
        t = -ev.virial / v
        assert np.array_equal(s, np.array([t[i, j] for i, j in postprocess.VOIGT]))
        assert a.get_potential_energy() == ev.energy and np.array_equal(a.get_forces(), ev.forces)
        assert calc.results["energy_std"] == float(np.std(ev.energy_committee))
    a.pbc = [True, True, False]
    calc = ACECalculator(si_tiny, threads=1)
    calc.calculate(a, ["energy"])
    assert "stress" not in calc.results


def test_energy_spread_is_np_std_bit_for_bit():
    """K from 1 to 70 (numpy's pairwise sum unrolls by 8 and splits blocks of 128: the same
    reduction is used, so every K must agree), values at eV scales with a large common offset."""
    rng = np.random.default_rng(0)
    for k in list(range(1, 40)) + [64, 65, 70, 129, 300]:
        for scale in (1e-3, 1.0, 50.0):
            x = -158.5 * 64 + scale * rng.normal(size=k)
            assert postprocess.energy_spread(x) == float(np.std(x)), (k, scale)


def test_periodic_stress_matches_has_stress_and_stress():
    rng = np.random.default_rng(2)
    W = rng.normal(size=(3, 3))
    cell = rng.normal(size=(3, 3)) * 4
    for pbc in ([True] * 3, [True, True, False], [False] * 3):
        want = postprocess.stress(W, cell) if postprocess.has_stress(cell, pbc) else None
        got = postprocess.periodic_stress(W, cell, pbc)
        assert (got is None) == (want is None) and (got is None or np.array_equal(got, want))
    assert postprocess.periodic_stress(W, np.zeros((3, 3)), [True] * 3) is None
    assert postprocess.periodic_stress(W, None, [True] * 3) is None


def test_checks_in_one_kernel_still_name_the_problem(si_tiny):
    """The one-kernel checks of ASE arrays fall back to `prepare`, whose messages name the field."""
    a = two_atom_cells(1, 4)[0]
    for where, index, value, match, field in (("positions", (1, 2), np.nan, "NaN", "positions"),
                                              ("positions", (0, 0), 1e300, "exceed", "positions"),
                                              ("cell", (2, 2), np.inf, "inf", "cell"),
                                              ("numbers", 0, 29, "Cu", "numbers")):
        b = copy.deepcopy(a)
        (b.cell.array if where == "cell" else b.arrays[where])[index] = value
        with pytest.raises(ACEInputError, match=match) as err:
            si_tiny.evaluate(b.numbers, b.positions, b.cell.array, b.pbc)
        assert err.value.field == field
