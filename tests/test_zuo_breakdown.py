"""The CV error breakdown of the shipped Zuo models (`tools/shipped_models/zuo_breakdown.py`).

References: the vacuum gap against the geometry of cells built by ASE (a slab's vacuum as asked for;
the (111) plane spacing a/√3 of a one-atom fcc primitive cell, whose lattice vectors are not
orthogonal); each held-out configuration's energy error and force MAE against a fit of the other
folds by `acefit` (its own assembly and solve) evaluated by the model's own energy and force kernel;
γ against `gamma_report` of that fitted model with the active set of the same training atoms.
"""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from ase.build import bulk, fcc111

import aceserver
from aceserver.fitting import data
from aceserver.fitting.active_set_build import build_active_set
from aceserver.fitting.fit_model import acefit
from aceserver.fitting.gamma_report import gamma_report
from aceserver.fitting.selection import kfold
from tools.shipped_models import zuo_breakdown as zb

DATA = Path(__file__).parent / "data"
E0_SI = -158.54496821     # Si_tiny's isolated atom (eV), the ACEpotentials.jl test's E0


def test_vacuum_gap_of_a_slab_and_of_a_skewed_bulk_cell():
    slab = fcc111("Cu", (2, 2, 4), vacuum=7.0, periodic=True)
    assert zb.vacuum_gap(slab.cell.array, slab.positions, slab.pbc) == pytest.approx(14.0, abs=1e-9)
    a = 3.6
    prim = bulk("Cu", "fcc", a=a)          # one atom: the gap along each vector is one plane spacing
    assert zb.vacuum_gap(prim.cell.array, prim.positions, prim.pbc) == pytest.approx(a / np.sqrt(3), rel=1e-12)
    # a direction that is not periodic is no gap across the cell
    open_z = slab.copy()
    open_z.pbc = [True, True, False]
    assert zb.vacuum_gap(open_z.cell.array, open_z.positions, open_z.pbc) < 3.0


def test_structure_classes():
    slab = fcc111("Cu", (2, 2, 4), vacuum=7.0, periodic=True)
    cube = bulk("Cu", "fcc", a=3.6, cubic=True).repeat(2)

    def cfg(atoms, rms):
        f = np.zeros((len(atoms), 3))
        f[:, 0] = rms
        return data.Config(numbers=atoms.numbers, positions=atoms.positions, cell=atoms.cell.array,
                           pbc=atoms.pbc, energy=0.0, forces=f)
    assert zb.structure_class(cfg(slab, 0.0), rcut=6.0) == "surface slab"
    assert zb.structure_class(cfg(slab, 0.0), rcut=15.0) != "surface slab"     # faces within the cutoff
    assert zb.structure_class(cfg(cube, 0.01), rcut=6.0) == "bulk at rest"
    assert zb.structure_class(cfg(cube, 0.5), rcut=6.0) == "bulk, thermal"


@pytest.fixture(scope="module")
def si_tiny():
    keys = data.Keys(energy="dft_energy", force="dft_force", virial="dft_virial")
    train = data.read_configs(DATA / "Si_tiny.xyz", keys, elements=["Si"])
    return train


def _model():
    return aceserver.ace1_model(elements=["Si"], order=2, totaldegree=8, rcut=5.0, E0={"Si": E0_SI})


def test_cv_errors_match_a_refit_of_the_other_folds(si_tiny):
    train = si_tiny
    weights = {"default": {"E": 30.0, "F": 1.0, "V": 0.0}}
    prior = {"name": "algebraic", "p": 4}
    folds = kfold(train, 5, 0)
    always = np.array([i for i, c in enumerate(train) if c.natoms == 1])
    e_err, f_mae, g = zb.cv_errors(_model(), train, weights, prior, always, folds, threads=1, gamma_too=True)
    assert np.isnan(e_err[always]).all() and np.isnan(g[always]).all()
    assert np.isfinite(e_err[np.setdiff1d(np.arange(len(train)), always)]).all()
    k = 2
    held = np.zeros(len(train), bool)
    held[folds[k]] = True
    held[always] = False
    model = _model()
    acefit(model, [c for c, h in zip(train, held) if not h], weights=weights, prior=prior, solver="blr",
           threads=1, compute_errors=False)
    idx = np.flatnonzero(held)
    for i in idx:
        c = train[i]
        ev = model.evaluate(c.numbers, c.positions, c.cell, c.pbc)
        # the same BLR problem solved twice (its evidence maximised to the optimiser's tolerance) and
        # evaluated two ways (A·θ against the kernel's sums of ~10² terms of ~10² eV): 2e-13 eV/atom
        # here; 1e-9 leaves room for another CPU's rounding and is 10⁻⁶ of the meV/atom reported
        assert e_err[i] == pytest.approx((ev.energy - c.energy) / c.natoms, abs=1e-9)
        assert f_mae[i] == pytest.approx(np.mean(np.abs(ev.forces - c.forces)), abs=1e-9)
    # γ: the same training atoms' active set, read through gamma_report (evaluate_many's γ)
    build = build_active_set(model, [c for c, h in zip(train, held) if not h])
    model.attach_active_set(build.inverses())
    rep = gamma_report(model, [train[i] for i in idx], threads=1, top=len(idx))
    by_index = {idx[f["index"]]: f["max_gamma"] for f in rep["frames"]}
    for i in idx:
        assert g[i] == pytest.approx(by_index[i], rel=1e-9)


def test_summary_shares_and_gamma_splits():
    classes = ["surface slab", "bulk, thermal", "bulk, thermal", "bulk at rest"]
    natoms = np.array([10.0, 50.0, 50.0, 2.0])
    e = np.array([0.010, -0.002, 0.001, np.nan])        # the last one never held out
    f = np.array([0.1, 0.05, 0.07, np.nan])
    g = np.array([4.0, 0.5, 1.5, np.nan])
    rows = {r["class"]: r for r in zb.summarise(classes, natoms, e, f, g)}
    assert set(rows) == {"surface slab", "bulk, thermal"}
    assert rows["surface slab"]["E_share"] == pytest.approx(0.010 / 0.013)
    assert rows["bulk, thermal"]["E_mae"] == pytest.approx(0.0015)
    assert rows["bulk, thermal"]["F_mae"] == pytest.approx((0.05 * 150 + 0.07 * 150) / 300)
    assert sum(r["F_share"] for r in rows.values()) == pytest.approx(1.0)
    assert rows["bulk, thermal"]["above_1"] == 1 and rows["surface slab"]["median_max_gamma"] == 4.0
    split = {b["gamma"]: b for b in zb.by_gamma(e, g)}
    assert split[1.0]["above"] == 2 and split[1.0]["E_mae_above"] == pytest.approx(0.0055)
    assert split[1.0]["E_mae_rest"] == pytest.approx(0.002)
    assert split[5.0]["above"] == 0 and split[5.0]["E_mae_above"] is None
    assert zb.by_gamma(e, np.full(4, np.nan)) is None
