"""Nested cross-validation of a selection procedure (selection.nested_cross_validate, selection.beats)
on a tiny problem: Si_tiny, two nested bases, a handful of candidates.

Checks: (1) no leakage — the targets of an outer test fold are replaced by garbage and that fold's
inner selection (every inner score, the choice) is unchanged, while its outer score moves; (2) the reference candidate's outer
errors equal plain K-fold cross-validation of it (an independent code path: cross_validate with all
blocks); (3) the chosen candidate of each outer fold equals the choice made by cross_validate on
block factors built without that fold's rows at all; (4) the paired rule on given numbers.
Identical inputs give identical arithmetic, so (1) and (3) are asserted to 1e-12 relative; leakage
would move them by orders of magnitude (the garbage is 10 eV/atom).
"""
from pathlib import Path

import numpy as np
import pytest

import aceserver
from aceserver.fitting import assembly, data, selection

DATA = Path(__file__).parent / "data"


@pytest.fixture(autouse=True, scope="module")
def _one_blas_thread():
    """Many small factorisations: on a loaded machine, BLAS threads that spin-wait make them ~10x
    slower; one thread gives the same numbers to rounding and keeps the test short."""
    from threadpoolctl import threadpool_limits
    with threadpool_limits(limits=1, user_api="blas"):
        yield
KEYS = data.Keys(energy="dft_energy", force="dft_force", virial="dft_virial")
E0 = {"Si": -158.54496821}


@pytest.fixture(scope="module")
def setup():
    configs = data.read_configs(DATA / "Si_tiny.xyz", KEYS)
    small = aceserver.ace1_model(elements=["Si"], order=2, totaldegree=6, rcut=5.0, E0=E0)
    big = aceserver.ace1_model(elements=["Si"], order=3, totaldegree=7, rcut=5.0, E0=E0)
    order, _ = selection.prefix_order([small], big)
    system = assembly.assemble(big, configs, None, progress=False)
    folds = selection.kfold(configs, 4, seed=1)
    always = np.array([i for i, c in enumerate(configs) if c.natoms == 1], dtype=np.int64)
    labels = [big.basis_labels[j] for j in order]
    sizes = {"small": small.length_basis, "big": big.length_basis}
    cands = [{"basis": b, "prior": {"name": "algebraic", "p": p}, "weights": {"default": {"E": we, "F": 1.0, "V": 1.0}},
              "E0": E0, "solver": {"name": "blr"}} for b in sizes for p in (2, 4) for we in (3.0, 30.0)]
    return dict(configs=configs, system=system, folds=folds, always=always, order=order, labels=labels,
                sizes=sizes, cands=cands)


def _choose(results):
    return min(results, key=lambda r: r["mae_mean"]["E"] / 1e-3 + r["mae_mean"]["F"] / 0.05)


def _factors(s, system, blocks):
    return selection.BlockFactors(system, s["configs"], blocks, ["Si"], E0, columns=s["order"])


def _nested(s, system):
    f = _factors(s, system, s["folds"] + [s["always"]])
    K = len(s["folds"])
    return f, selection.nested_cross_validate(f, list(range(K)), [K], s["cands"], s["labels"], s["sizes"], _choose,
                                              reference=s["cands"][-1], log=None)


def test_outer_fold_never_enters_the_inner_selection(setup):
    s = setup
    _, base = _nested(s, s["system"])
    o = 2
    rows = np.flatnonzero(np.isin(s["system"].config, s["folds"][o]))
    y = s["system"].y.copy()
    y[rows] += 10.0 * 8 * np.random.default_rng(0).standard_normal(len(rows))   # ~10 eV/atom on 8-atom cells
    bad = assembly.LsqSystem(s["system"].A, y, s["system"].w, s["system"].config, s["system"].kind)
    _, junk = _nested(s, bad)
    a, b = base["outer"][o], junk["outer"][o]
    assert a["chosen"] == b["chosen"]
    for ra, rb in zip(a["inner"], b["inner"]):
        for k in ("E", "F", "V"):
            assert rb["mae_mean"][k] == pytest.approx(ra["mae_mean"][k], rel=1e-12)
    assert b["procedure"]["mae"]["E"] > 10 * a["procedure"]["mae"]["E"]      # the garbage was seen, outside


def test_reference_outer_errors_are_plain_kfold(setup):
    s = setup
    f, res = _nested(s, s["system"])
    K = len(s["folds"])
    plain = selection.cross_validate(f, list(range(K)), [K], [s["cands"][-1]], s["labels"], s["sizes"], log=None)[0]
    for k in range(K):
        for kind in ("E", "F", "V"):
            assert res["outer"][k]["reference"]["mae"][kind] == pytest.approx(plain["folds"][k]["mae"][kind], rel=1e-10)
    assert res["reference"]["mae_mean"]["E"] == pytest.approx(plain["mae_mean"]["E"], rel=1e-10)


def test_inner_choice_is_made_without_the_outer_rows(setup):
    s = setup
    _, res = _nested(s, s["system"])
    K = len(s["folds"])
    for o in range(K):
        blocks = [s["folds"][b] for b in range(K) if b != o] + [s["always"]]   # fold o's rows not factored at all
        f = _factors(s, s["system"], blocks)
        inner = selection.cross_validate(f, list(range(K - 1)), [K - 1], s["cands"], s["labels"], s["sizes"], log=None)
        assert _choose(inner)["candidate"] == res["outer"][o]["chosen"]
        for ri, rn in zip(inner, res["outer"][o]["inner"]):
            assert rn["mae_mean"]["E"] == pytest.approx(ri["mae_mean"]["E"], rel=1e-12)


def test_paired_rule():
    def summ(E, F):
        return {"folds": [{"mae": {"E": e, "F": f}} for e, f in zip(E, F)]}
    ref = summ([2.0, 3.0, 2.5, 2.2, 2.8], [0.06, 0.07, 0.065, 0.06, 0.07])
    better = summ([1.8, 2.7, 2.3, 2.0, 2.6], [0.055, 0.066, 0.06, 0.057, 0.066])     # E gains 0.2 or 0.3, F > 0
    r = selection.beats(better, ref)
    assert r["procedure_wins"] and r["E"]["mean_gain"] == pytest.approx(0.22)
    noisy = summ([1.0, 3.9, 2.5, 2.2, 2.8], [0.055, 0.066, 0.06, 0.057, 0.066])      # E gain 0.2 ± 0.5: noise
    r = selection.beats(noisy, ref)
    d = np.array([1.0, -0.9, 0.0, 0.0, 0.0])                                          # its per-fold E gains
    assert not r["procedure_wins"]
    assert r["E"]["mean_gain"] == pytest.approx(d.mean()) and r["E"]["se"] == pytest.approx(d.std(ddof=1) / np.sqrt(5))
    worse_f = summ([1.8, 2.7, 2.3, 2.0, 2.6], [0.07, 0.08, 0.07, 0.07, 0.08])        # E better, F worse
    assert not selection.beats(worse_f, ref)["procedure_wins"]
