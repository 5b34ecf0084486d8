"""Verlet list (aceserver.verlet): reused neighbour searches give exactly the pairs of a fresh
search, the search reruns once an atom has moved more than skin/2 or the cell changed, and an
ASE calculator with a skin reproduces one without."""
import numpy as np
import pytest
from ase.build import bulk

from aceserver.kernels.neighbours import neighbour_list
from aceserver.evaluation.verlet import VerletList


def _pair_set(first, nbr, R):
    i = np.repeat(np.arange(len(first) - 1), np.diff(first))
    return {(int(a), int(b), *np.round(r, 9)) for a, b, r in zip(i, nbr, R)}


def test_reused_search_equals_fresh_search():
    at = bulk("Cu", "fcc", a=3.615, cubic=True) * (2, 2, 2)
    rng = np.random.default_rng(0)
    at.positions += rng.normal(scale=0.05, size=at.positions.shape)
    z = np.zeros(len(at), dtype=np.int64)
    cell, pbc, rcut = at.cell.array.copy(), at.pbc.copy(), 5.0
    v = VerletList(skin=0.4)
    pos = at.positions.copy()
    for step in range(40):                    # a random walk: ~0.03 Å per step and atom
        pos = pos + rng.normal(scale=0.03, size=pos.shape)
        got = v.pairs(z, pos, cell, pbc, rcut)
        ref = neighbour_list(pos, cell, pbc, rcut, sort=False)
        assert _pair_set(*got) == _pair_set(*ref), step
        assert np.all(np.diff(got[0]) == np.diff(ref[0]))
    assert 1 < v.searches < 40                # reused most steps, searched again when needed


def test_search_reruns_on_large_moves_and_new_cells():
    at = bulk("Si", "diamond", a=5.43, cubic=True)
    z = np.zeros(len(at), dtype=np.int64)
    v = VerletList(skin=0.3)
    pos, cell, pbc = at.positions.copy(), at.cell.array.copy(), at.pbc.copy()
    v.pairs(z, pos, cell, pbc, 4.0)
    pos[3, 0] += 0.149                        # below skin/2: reused
    v.pairs(z, pos, cell, pbc, 4.0)
    assert v.searches == 1
    pos[3, 0] += 0.002                        # beyond skin/2 since the search
    v.pairs(z, pos, cell, pbc, 4.0)
    assert v.searches == 2
    first, nbr, R = v.pairs(z, pos, cell * 1.01, pbc, 4.0)    # new cell
    assert v.searches == 3
    assert _pair_set(first, nbr, R) == _pair_set(*neighbour_list(pos, cell * 1.01, pbc, 4.0))
    v.pairs(z[:-1], pos[:-1], cell, pbc, 4.0)                 # other atoms
    assert v.searches == 4
    with pytest.raises(ValueError, match="skin"):
        VerletList(skin=0.0)


def test_calculator_with_skin_equals_without(si_model):
    from ase import units
    from ase.md.verlet import VelocityVerlet

    from aceserver.calculator import ACECalculator
    at = bulk("Si", "diamond", a=5.43, cubic=True) * (2, 2, 2)
    at.rattle(0.05, seed=2)
    # ~1500 K of random velocities (Å/fs-scale units of ASE)
    sigma = np.sqrt(units.kB * 1500 / at.get_masses())[:, None]
    at.set_momenta(at.get_masses()[:, None] * sigma * np.random.default_rng(1).normal(size=(len(at), 3)))
    plain = at.copy()
    at.calc = ACECalculator(si_model, skin=0.3)
    plain.calc = ACECalculator(si_model, skin=0)
    dyn = VelocityVerlet(at, 2 * units.fs)
    for _ in range(30):
        dyn.run(1)
        plain.positions = at.positions
        assert at.get_potential_energy() == pytest.approx(plain.get_potential_energy(), abs=1e-10)
        np.testing.assert_allclose(at.get_forces(), plain.get_forces(), atol=1e-11)
        np.testing.assert_allclose(at.get_stress(), plain.get_stress(), atol=1e-12)
    assert 1 <= at.calc.verlet.searches < 30
    assert plain.calc.verlet is None
