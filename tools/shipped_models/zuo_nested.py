"""Nested cross-validation of the Zuo selection PROCEDURE against the fixed upstream recipe.

    python -m tools.shipped_models.zuo_nested --data-dir DIR Si [--grid small|full] [--out FILE]

(from the repository root; DIR holds ZuoEtAl2020/<El>_train.xyz, default $ACESERVER_DATA; the Zuo
test splits are never read). Outer folds: the 5 seeded, stratified folds of ``zuo_select``. For each
outer fold the whole selection runs on the other four alone — 4-fold CV over them, every candidate
of the grid, the paired one-standard-error rule of ``zuo_select`` — and its winner, refitted on
the four, is scored on the held-out fold; the upstream recipe (ACEpotentials.jl
``examples/zuobench/error_table.jl``, "lge": order 3, totaldegree [25,21,17], rcut 2.5 bond lengths,
E0 = 0, weights E 30 / F 1, algebraic prior p = 4, BLR) is fitted and scored on the same outer
folds. Rule: ship the selected model only where the procedure beats the recipe on both E and F MAE
by more than the outer folds' noise (mean paired gain above one standard error of the paired
gains, :func:`aceserver.fitting.selection.beats`), else ship the recipe.

Grids, all at rcut = 2.5 bond lengths (the cutoff stage of ``zuo_select`` is not nested here), each a
nested chain of bases assembled once (the largest) and factored per outer fold:

* ``small``: bases order 3 [20,16,12], [25,21,17], order 4 [26,22,18,14]; prior algebraic p ∈ {2, 4};
  w_E ∈ {10, 30, 100}; E0 ∈ {0, mean energy per atom}: 36 candidates;
* ``full``: the order-3 bases of ``zuo_select`` with [25,21,17] added, and order 4 [26,22,18,14];
  its priors, energy weights and E0: 240 candidates.

Writes a JSON file (default models/zuo-<El>/nested_cv.json): per outer fold the chosen candidate and
the outer errors of procedure and recipe, their means and spreads, the paired comparison and the
verdict, the timings, and the speed (µs/atom, timed alternately in one process) of the recipe, of the
bases the procedure chose, of ``zuo_select``'s choice and of the bases and cutoffs of its CV grid
(selection.json, where there is one); ``--speed-only`` re-times an existing file.
"""
from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import numpy as np

import aceserver
from aceserver.benchmarking import build_structure, time_calls
from aceserver.fitting import selection
from aceserver.fitting.fit_model import jsonable
from aceserver.fitting.workflow import sha256_file

from .common import MODELS
from .zuo_recipe import (E_WEIGHTS, K, PRIORS, SEED, TARGETS, add_data_dir, basis_name, data_dir_of, fold_score,
                         parse_basis, rcut_of, score, training_split)
from .zuo_select import Assembled, log

RECIPE_BASIS = (3, [25, 21, 17])
RECIPE_FACTOR = 2.5
GRIDS = {
    "small": dict(chain=[(3, [20, 16, 12]), RECIPE_BASIS, (4, [26, 22, 18, 14])],
                  priors=({"name": "algebraic", "p": 2}, {"name": "algebraic", "p": 4}), e_weights=(10.0, 30.0, 100.0)),
    "full": dict(chain=[(3, [12, 10, 8]), (3, [16, 12, 10]), (3, [20, 16, 12]), (3, [24, 20, 16]), RECIPE_BASIS,
                        (4, [26, 22, 18, 14])], priors=PRIORS, e_weights=E_WEIGHTS),
}


def recipe_candidate(el: str) -> dict:
    return {"basis": basis_name(*RECIPE_BASIS), "rcut_bond_lengths": RECIPE_FACTOR, "prior": {"name": "algebraic", "p": 4},
            "weights": {"default": {"E": 30.0, "F": 1.0, "V": 1.0}}, "E0": {el: 0.0}, "solver": {"name": "blr"}}


def grid_candidates(el: str, grid: dict, e_mean: float) -> list[dict]:
    E0s = [{el: 0.0}, {el: e_mean}]
    return [{"basis": basis_name(o, td), "rcut_bond_lengths": RECIPE_FACTOR, "prior": pr,
             "weights": {"default": {"E": we, "F": 1.0, "V": 1.0}}, "E0": E0, "solver": {"name": "blr"}}
            for o, td in grid["chain"] for pr in grid["priors"] for we in grid["e_weights"] for E0 in E0s]


def chooser(targets):
    """zuo_select's rule: paired one standard error on (E MAE/E target, F MAE/F target)."""
    return lambda results: selection.one_standard_error(results, lambda r: score(r, targets),
                                                        fold_score=lambda r: fold_score(r, targets))


def speed_specs(el: str, res: dict) -> list[dict]:
    """The (basis, rcut) pairs to time, each with its roles: "recipe", "nested" (chosen in an outer
    fold), "selected" (``zuo_select``'s choice, selection.json) and "candidate" (a basis and cutoff of
    that selection's CV grid, for the accuracy-versus-speed plot)."""
    specs: dict = {}

    def add(basis, factor, role):
        specs.setdefault((basis, float(factor)), set()).add(role)

    add(res["recipe"]["basis"], res["recipe"]["rcut_bond_lengths"], "recipe")
    for f in res["outer"]:
        add(f["chosen"]["basis"], f["chosen"].get("rcut_bond_lengths", RECIPE_FACTOR), "nested")
    sel_file = MODELS / f"zuo-{el}" / "selection.json"
    if sel_file.is_file():
        sel = json.loads(sel_file.read_text())
        for r in sel["results"] + sel.get("cutoff_results", []):
            add(r["candidate"]["basis"], r["candidate"]["rcut_bond_lengths"], "candidate")
        if "chosen" in sel:
            add(sel["chosen"]["basis"], sel["chosen"]["rcut_bond_lengths"], "selected")
    return [{"basis": b, "rcut_bond_lengths": f, "roles": sorted(roles)} for (b, f), roles in specs.items()]


def speed(el: str, res: dict, rounds: int = 5, calls: int = 10) -> dict:
    """µs/atom (energy+forces+virial, one numba thread) of every basis and cutoff of
    :func:`speed_specs` (the recipe, the nested choices, ``zuo_select``'s choice and its CV grid), all
    parameters nonzero (as a BLR fit), timed alternately (forward, then reversed order) on one
    rattled cell (diamond64 for Si and Ge, else fcc108); medians over rounds, ratios to the recipe."""
    import numba
    numba.set_num_threads(1)
    specs = speed_specs(el, res)
    rng = np.random.default_rng(0)
    models = []
    for s in specs:
        o, td = parse_basis(s["basis"])
        m = aceserver.ace1_model(elements=[el], order=o, totaldegree=td, rcut=rcut_of(el, s["rcut_bond_lengths"]),
                                 E0={el: 0.0})
        m.parameters = rng.standard_normal(m.length_basis) / m.length_basis
        s["n_basis"] = m.length_basis
        models.append(m)
    name = "diamond64" if el in ("Si", "Ge") else "fcc108"
    at = build_structure(name, [el])
    times = [[] for _ in specs]
    idx = list(range(len(specs)))
    for r in range(rounds):
        for i in (idx if r % 2 == 0 else idx[::-1]):
            m = models[i]
            times[i].append(time_calls(lambda: m.evaluate(at.numbers, at.positions, at.cell[:], at.pbc), calls)
                            / len(at) * 1e6)
    ref = next(float(np.median(t)) for s, t in zip(specs, times) if "recipe" in s["roles"])
    for s, t in zip(specs, times):
        s["us_per_atom"] = float(np.median(t))
        s["ratio_to_recipe"] = s["us_per_atom"] / ref
    return {"structure": name, "rounds": rounds, "calls": calls, "threads": 1, "models": specs}


def run(el: str, data_dir: Path, grid_name: str, out: Path, threads: int | None = 1):
    t_all = time.perf_counter()
    timings: dict = {}
    path, train, folds, always = training_split(el, data_dir)
    e_mean = round(float(np.mean([c.energy / c.natoms for c in train])), 6)
    grid = GRIDS[grid_name]
    cands = grid_candidates(el, grid, e_mean)
    recipe = recipe_candidate(el)
    log(f"zuo-{el} nested CV: {len(train)} configurations, {K} outer folds, grid {grid_name!r} "
        f"({len(cands)} candidates)")
    res = {"element": el, "data": {"file": path.name, "sha256": sha256_file(path)}, "outer_folds": K, "seed": SEED,
           "grid": grid_name, "n_candidates": len(cands), "targets": {"E": TARGETS[el][0], "F": TARGETS[el][1]},
           "recipe": recipe, "outer": [], "timings_s": timings,
           "units": {"E": "eV/atom", "F": "eV/Å"}}

    def save():
        out.write_text(json.dumps(jsonable(res), indent=1))

    a = Assembled(el, train, grid["chain"], RECIPE_FACTOR, folds, always, threads, timings, "nested")
    t0 = time.perf_counter()

    def on_fold(f):
        res["outer"].append(f)
        timings["outer_s"] = time.perf_counter() - t0
        save()

    nested = selection.nested_cross_validate(a.factors, list(range(K)), [K], cands, a.labels, a.sizes,
                                             chooser(TARGETS[el]), reference=recipe, log=log, on_fold=on_fold)
    res["procedure"], res["recipe_estimate"] = nested["procedure"], nested["reference"]
    res["comparison"] = selection.beats(nested["procedure"], nested["reference"])
    res["ship"] = "selected" if res["comparison"]["procedure_wins"] else "recipe"
    res["rule"] = ("ship the selected model only where the procedure beats the recipe on both E and F: mean "
                   "paired gain (recipe MAE - procedure MAE over the same outer folds) above one standard error "
                   "of the paired gains; else ship the recipe")
    timings["total_s"] = time.perf_counter() - t_all
    res["speed"] = speed(el, res)
    save()
    p, r = res["procedure"], res["recipe_estimate"]
    log(f"zuo-{el}: procedure E {p['mae_mean']['E'] * 1e3:.3f} ± {p['mae_std']['E'] * 1e3:.3f} meV/atom, "
        f"F {p['mae_mean']['F']:.4f} ± {p['mae_std']['F']:.4f} eV/Å; recipe E {r['mae_mean']['E'] * 1e3:.3f} ± "
        f"{r['mae_std']['E'] * 1e3:.3f}, F {r['mae_mean']['F']:.4f} ± {r['mae_std']['F']:.4f}; ship {res['ship']} "
        f"({timings['total_s']:.0f} s)")
    return res


def main(argv=None):
    ap = argparse.ArgumentParser(prog="python -m tools.shipped_models.zuo_nested", description=__doc__.split("\n\n")[0])
    ap.add_argument("elements", nargs="+", choices=sorted(TARGETS))
    add_data_dir(ap)
    ap.add_argument("--grid", choices=sorted(GRIDS), default="small", help="candidate grid (default small)")
    ap.add_argument("--out", default=None, help="output JSON (default models/zuo-<El>/nested_cv.json; one element)")
    ap.add_argument("--threads", type=int, default=1, help="assembly threads (default 1)")
    ap.add_argument("--rounds", type=int, default=5, help="timing rounds of the speed run (default 5)")
    ap.add_argument("--speed-only", action="store_true",
                    help="only (re)time the recipe, the chosen bases and the selection's grid into an existing output file")
    args = ap.parse_args(argv)
    if args.speed_only:
        for el in args.elements:
            out = Path(args.out) if args.out else MODELS / f"zuo-{el}" / "nested_cv.json"
            res = json.loads(out.read_text())
            res["speed"] = speed(el, res, rounds=args.rounds)
            out.write_text(json.dumps(jsonable(res), indent=1))
            log(f"zuo-{el}: {res['speed']}")
        return
    data_dir = data_dir_of(ap, args)
    if args.out and len(args.elements) > 1:
        ap.error("--out takes one element")
    for el in args.elements:
        out = Path(args.out) if args.out else MODELS / f"zuo-{el}" / "nested_cv.json"
        run(el, data_dir, args.grid, out, args.threads)


if __name__ == "__main__":
    main()
