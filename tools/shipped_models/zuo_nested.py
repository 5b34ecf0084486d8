"""Nested cross-validation of the Zuo selection PROCEDURE against the fixed upstream recipe.

    python -m tools.shipped_models.zuo_nested --data-dir DIR Si [--grid small|full|sparse|fast|transform|transform_large|transform_large_weighted|transform_smooth] [--seed S] [--out FILE]

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
  its priors, energy weights and E0: 240 candidates;
* ``sparse``: the recipe's basis, order 4 [26,22,18,14] (1634 functions) and order 4 [27,23,19,15]
  (2140), each dense (BLR) with the recipe's settings and with the small grid's most chosen ones (E0
  0 and mean); and ASP on the recipe's basis (400, 700 functions) and on the 2140 basis (600, 900):
  the lasso path to n functions on the fold's prior-scaled factors, its support refitted by BLR
  (``{"name": "asp", "max_active": n, "refit": "blr"}``); the simplest candidate of the
  one-standard-error rule is the one with the fewest nonzero functions. Written to
  nested_cv_sparse.json, with the speed of every dense basis and of each ASP support (fitted on
  the whole training split) against the recipe;
* ``fast``: the candidates of ``sparse`` that were no slower than the recipe in its speed run for Mo
  (dense on the recipe's basis, ASP 400 and 700 on it, ASP 600 on the 2140 basis), so that its
  winner can ship (shipped models are no slower than the recipe): nested_cv_fast.json;
* ``transform``: the recipe's basis with the many-body radial transform Agnesi (2, 6) in place of
  (2, 4) and rcut 2.25 bond lengths (the force screen of ``zuo_variants``), prior algebraic p ∈ {2, 4},
  w_E ∈ {10, 20, 30}, E0 ∈ {0, mean}: 12 candidates, each with exactly the recipe's functions and
  fewer neighbours (timed with the recipe in the same run); the recipe's outer folds from its own
  assembly; nested_cv_transform.json.
* ``transform_large``: that transform and cutoff with the same 12 settings on the order-4 bases
  [26,22,18,14] (1634 functions) and [27,23,19,15] (2140): 24 candidates, the simplest of the rule the
  one with fewer functions; each basis timed with the recipe in the same run (a dense model may be
  up to about 1.5 x the recipe's time); nested_cv_transform_large.json.
* ``transform_large_weighted``: ``transform_large`` with force-magnitude weights as a further choice,
  β ∈ {0, 0.5} (``zuo_weights``: configurations grouped by RMS-force quartile, each group's force
  rows weighted by (median RMS force / the group's median)^β; the quartiles are those of the whole
  training split): 48 candidates; nested_cv_transform_large_weighted.json.
* ``transform_smooth``: the 2140 basis of that family with β 0.5 and smoother priors, algebraic
  p ∈ {4, 6, 8}, w_E ∈ {20, 30}, E0 ∈ {0, mean}: 12 candidates (designed after the runs above, so judged
  on fresh outer folds: ``--seed 2``, nested_cv_transform_smooth_seed2.json).

Writes a JSON file (default models/zuo-<El>/nested_cv.json): per outer fold the chosen candidate and
the outer errors of procedure and recipe, their means and spreads, the paired comparison and the
verdict, the timings, and the speed (µs/atom, timed alternately in one process) of the recipe, of the
bases the procedure chose, of ``zuo_select``'s choice and of the bases and cutoffs of its CV grid
(selection.json, where there is one); ``--speed-only`` re-times an existing file.
"""
from __future__ import annotations

import argparse
import json
import resource
import time
from pathlib import Path

import numpy as np

import aceserver
from aceserver.fitting import priors, selection
from aceserver.fitting.data import normalise_weights
from aceserver.fitting.fit_model import jsonable
from aceserver.fitting.workflow import sha256_file

from .common import MODELS, same, time_alternating
from .zuo_recipe import (E_WEIGHTS, K, PRIORS, SEED, TARGETS, add_data_dir, basis_name, data_dir_of, fold_score,
                         force_groups, parse_basis, weights_of, rcut_of, score, training_split)
from .zuo_select import Assembled, log

RECIPE_BASIS = (3, [25, 21, 17])
RECIPE_FACTOR = 2.5
GRIDS = {
    "small": dict(chain=[(3, [20, 16, 12]), RECIPE_BASIS, (4, [26, 22, 18, 14])],
                  priors=({"name": "algebraic", "p": 2}, {"name": "algebraic", "p": 4}), e_weights=(10.0, 30.0, 100.0)),
    "full": dict(chain=[(3, [12, 10, 8]), (3, [16, 12, 10]), (3, [20, 16, 12]), (3, [24, 20, 16]), RECIPE_BASIS,
                        (4, [26, 22, 18, 14])], priors=PRIORS, e_weights=E_WEIGHTS),
    "sparse": dict(chain=[RECIPE_BASIS, (4, [26, 22, 18, 14]), (4, [27, 23, 19, 15])],
                   asp_sizes=[(RECIPE_BASIS, (400, 700)), ((4, [27, 23, 19, 15]), (600, 900))]),
    # the candidates of "sparse" no slower than the recipe in its speed run (Mo: the larger dense bases
    # 1.27 and 1.70 x, ASP 900 of 2140 1.11 x; ASP 600 of 2140 0.93 x)
    "fast": dict(chain=[RECIPE_BASIS, (4, [27, 23, 19, 15])], dense=[RECIPE_BASIS],
                 asp_sizes=[(RECIPE_BASIS, (400, 700)), ((4, [27, 23, 19, 15]), (600,))]),
}
# the force screen's lead (zuo_variants, variants_cv.json): the recipe's basis with the many-body
# radial transform Agnesi (2, 6) and rcut 2.25 bond lengths lowered the CV force MAE of every setting,
# fold by fold, with fewer neighbours; the small grid's settings with w_E 20 in place of 100: 12
# candidates, each with the recipe's functions and splines (timed with the recipe)
# (max_time_ratio: zuo_ship ships this family's dense winners up to 1.5 x the recipe's time, the budget
# their bases were chosen under; the sparse grids' winners no slower than the recipe)
GRIDS["transform"] = dict(chain=[RECIPE_BASIS], rcut=2.25, basis_kw={"transform": ["agnesi", 2, 6]},
                          priors=GRIDS["small"]["priors"], e_weights=(10.0, 20.0, 30.0), max_time_ratio=1.5)
# the screen's combination (zuo_variants): that transform and cutoff on the order-4 bases of 1634 and
# 2140 functions lowered the CV force MAE beyond the transform family's, fold by fold (2140: 1.45 x
# the recipe's time); the same 12 settings per basis: 24 candidates
GRIDS["transform_large"] = dict(GRIDS["transform"], chain=[(4, [26, 22, 18, 14]), (4, [27, 23, 19, 15])])
# the weights screen (zuo_weights, weights_cv.json): force rows weighted by (RMS force)^-0.5 per RMS-force
# quartile lowered the CV E and F MAE on the recipe's basis and on the transform lead alike; that family's
# grid with β ∈ {0, 0.5}: 48 candidates
GRIDS["transform_large_weighted"] = dict(GRIDS["transform_large"], force_betas=(0.0, 0.5))
# where the energy error is (plain 5-fold CV on zuo_select's folds): Mo's 9 surface slabs (6-36 atoms,
# a vacuum gap of 11-20 Å) are 5 % of its configurations and 29 % of the recipe's CV E MAE (14.9
# meV/atom each on average when held out, 1.8 on the rest; Ge's 11: 48 %, 22.9 and 1.3). On that
# lead's 2140 basis with β 0.5, a smoother prior (algebraic p 6) halved the error of the cells under
# 40 atoms (13.9 -> 6.6) and kept the forces (CV E 1.95, F 0.0900 against the recipe's 2.41, 0.0958).
# A family designed on those folds, so only its run on fresh outer folds (--seed 2; seeds 0 and 1 are
# spent on Mo) decides whether it ships: the 2140 basis, β 0.5, p ∈ {4, 6, 8}, w_E ∈ {20, 30},
# E0 ∈ {0, mean}: 12 candidates
GRIDS["transform_smooth"] = dict(GRIDS["transform_large"], chain=[(4, [27, 23, 19, 15])],
                                 priors=tuple({"name": "algebraic", "p": p} for p in (4, 6, 8)),
                                 e_weights=(20.0, 30.0), force_betas=(0.5,))
RECIPE_SETTINGS = ({"name": "algebraic", "p": 4}, {"default": {"E": 30.0, "F": 1.0, "V": 1.0}})


def recipe_candidate(el: str) -> dict:
    return {"basis": basis_name(*RECIPE_BASIS), "rcut_bond_lengths": RECIPE_FACTOR, "prior": {"name": "algebraic", "p": 4},
            "weights": {"default": {"E": 30.0, "F": 1.0, "V": 1.0}}, "E0": {el: 0.0}, "solver": {"name": "blr"}}


def grid_candidates(el: str, grid: dict, e_mean: float, groups: tuple | None = None) -> list[dict]:
    """The grid's candidates; with ``force_betas``, each also with force-magnitude weights
    (``zuo_recipe.weights_of``; groups: the (medians, overall) RMS forces of ``zuo_recipe.force_groups``)."""
    E0s = [{el: 0.0}, {el: e_mean}]
    kw = {"basis_kw": grid["basis_kw"]} if "basis_kw" in grid else {}

    def weights(we, beta):
        return {"default": {"E": we, "F": 1.0, "V": 1.0}} if beta == 0.0 else weights_of(beta, we, *groups)
    return [{"basis": basis_name(o, td), "rcut_bond_lengths": grid.get("rcut", RECIPE_FACTOR), **kw, "prior": pr,
             "weights": weights(we, beta), "E0": E0, "solver": {"name": "blr"}}
            for o, td in grid["chain"] for beta in grid.get("force_betas", (0.0,)) for pr in grid["priors"]
            for we in grid["e_weights"] for E0 in E0s]


def small_grid_best(el: str, e_mean: float) -> tuple[dict, dict, dict]:
    """(prior, weights, E0) chosen most often over the outer folds of the small grid's nested CV
    (models/zuo-<El>/nested_cv.json); the recipe's settings where there is none."""
    f = MODELS / f"zuo-{el}" / "nested_cv.json"
    if not f.is_file() or json.loads(f.read_text()).get("grid") != "small":
        return RECIPE_SETTINGS + ({el: 0.0},)
    chosen = [(c["prior"], c["weights"], c["E0"]) for c in (o["chosen"] for o in json.loads(f.read_text())["outer"])]
    tags = [json.dumps(c, sort_keys=True) for c in chosen]
    pr, w, E0 = chosen[max(range(len(tags)), key=lambda i: (tags.count(tags[i]), -i))]
    return pr, w, ({el: e_mean} if E0[el] != 0.0 else {el: 0.0})


def sparse_candidates(el: str, grid: dict, e_mean: float) -> list[dict]:
    """Grid ``sparse``: on every basis of the chain, dense BLR with the recipe's settings and with the
    small grid's most chosen settings (each with E0 0 and the mean energy per atom); and ASP (lasso
    path to n functions, support refitted by BLR) with the small grid's settings at the sizes of
    ``asp_sizes``."""
    pr, w, E0 = small_grid_best(el, e_mean)
    settings = [RECIPE_SETTINGS] + ([(pr, w)] if not same((pr, w), RECIPE_SETTINGS) else [])
    out = [{"basis": basis_name(o, td), "rcut_bond_lengths": RECIPE_FACTOR, "prior": p_, "weights": w_, "E0": e0,
            "solver": {"name": "blr"}} for o, td in grid.get("dense", grid["chain"]) for p_, w_ in settings
           for e0 in ({el: 0.0}, {el: e_mean})]
    for (o, td), sizes in grid["asp_sizes"]:
        out += [{"basis": basis_name(o, td), "rcut_bond_lengths": RECIPE_FACTOR, "prior": pr, "weights": w, "E0": E0,
                 "solver": {"name": "asp", "max_active": n, "select": "final", "refit": "blr"}} for n in sizes]
    return out


def n_functions(result: dict) -> int:
    """Nonzero functions of a CV result's candidate: the basis size, or an ASP candidate's support."""
    sol = result["candidate"].get("solver") or {}
    return min(result["n_basis"], int(sol["max_active"])) if sol.get("name") == "asp" else result["n_basis"]


def chooser(targets):
    """zuo_select's rule: paired one standard error on (E MAE/E target, F MAE/F target); the simplest
    candidate is the one with the fewest nonzero functions (an ASP candidate's support size)."""
    return lambda results: selection.one_standard_error([dict(r, n_basis=n_functions(r)) for r in results],
                                                        lambda r: score(r, targets),
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
    name, med = time_alternating(el, models, rounds, calls)
    ref = next(t for s, t in zip(specs, med) if "recipe" in s["roles"])
    for s, t in zip(specs, med):
        s["us_per_atom"] = t
        s["ratio_to_recipe"] = t / ref
    return {"structure": name, "rounds": rounds, "calls": calls, "threads": 1, "models": specs}


def sparse_speed(el: str, a, cands: list[dict], rounds: int = 5, calls: int = 10) -> dict:
    """µs/atom of the recipe and of each basis of the sparse grid's chain with all parameters nonzero,
    and of each ASP candidate's support fitted on the whole training split (that basis with only its
    support's parameters nonzero: the evaluator prunes the rest), timed alternately in one run
    (:func:`common.time_alternating`); ratios to the recipe."""
    comb = a.factors.combine(list(range(K + 1)))
    rng = np.random.default_rng(0)
    specs, models = [], []

    def variant(name, p):
        o, td = parse_basis(name)
        m = aceserver.ace1_model(elements=[el], order=o, totaldegree=td, rcut=rcut_of(el, RECIPE_FACTOR), E0={el: 0.0})
        m.parameters = p
        models.append(m)

    for b, name in enumerate(a.names):
        ncols = a.sizes[name]
        full = rng.standard_normal(ncols) / ncols
        variant(name, full)
        specs.append({"basis": name, "solver": "blr", "n_active": ncols,
                      "roles": ["recipe"] if name == basis_name(*RECIPE_BASIS) else ["candidate"]})
        inv = np.empty(ncols, dtype=np.int64)          # factor column -> this basis's parameter index
        inv[a.where[b]] = np.arange(ncols)
        for c in cands:
            if c["basis"] != name or c["solver"]["name"] != "asp":
                continue
            gamma = priors.make_prior(a.labels[:ncols], c["prior"])
            (theta, _, _), = a.factors.solve(comb, ncols, gamma, normalise_weights(c["weights"]), [c["E0"]],
                                             c["solver"])
            p = np.zeros(ncols)
            cols = inv[np.flatnonzero(theta)]
            p[cols] = full[cols]
            variant(name, p)
            specs.append({"basis": name, "solver": c["solver"], "n_active": int(len(cols)), "roles": ["candidate"]})
    structure, med = time_alternating(el, models, rounds, calls)
    ref = next(t for s_, t in zip(specs, med) if "recipe" in s_["roles"])
    for s_, t in zip(specs, med):
        s_["us_per_atom"], s_["ratio_to_recipe"] = t, t / ref
    return {"structure": structure, "rounds": rounds, "calls": calls, "threads": 1, "models": specs}


def kw_speed(el: str, grid: dict, rounds: int = 9, calls: int = 10) -> dict:
    """µs/atom of the recipe and of each basis of a grid with further ace1_model keywords
    (``basis_kw``), all parameters nonzero (the same random ones where the sizes agree), timed
    alternately in one run; ratios to the recipe."""
    rng = np.random.default_rng(0)
    factor = grid.get("rcut", RECIPE_FACTOR)
    specs = [(RECIPE_BASIS, RECIPE_FACTOR, {}, ["recipe"])] + [((o, td), factor, grid.get("basis_kw", {}), ["candidate"])
                                                               for o, td in grid["chain"]]
    models, params = [], {}
    for (o, td), f, kw, _ in specs:
        m = aceserver.ace1_model(elements=[el], order=o, totaldegree=td, rcut=rcut_of(el, f), E0={el: 0.0}, **kw)
        p = params.setdefault(m.length_basis, rng.standard_normal(m.length_basis) / m.length_basis)
        m.parameters = p
        models.append(m)
    structure, med = time_alternating(el, models, rounds, calls)
    out = [{"basis": basis_name(*b), "rcut_bond_lengths": f, "basis_kw": kw, "solver": "blr", "n_active": m.length_basis,
            "roles": roles, "us_per_atom": t, "ratio_to_recipe": t / med[0]}
           for (b, f, kw, roles), m, t in zip(specs, models, med)]
    return {"structure": structure, "rounds": rounds, "calls": calls, "threads": 1, "models": out}


def run(el: str, data_dir: Path, grid_name: str, out: Path, threads: int | None = 1, seed: int = SEED):
    t_all = time.perf_counter()
    timings: dict = {}
    path, train, folds, always = training_split(el, data_dir, seed)
    e_mean = round(float(np.mean([c.energy / c.natoms for c in train])), 6)
    grid = GRIDS[grid_name]
    groups = None
    if "force_betas" in grid:     # configurations labelled by RMS-force quartile (config_type), as zuo_weights
        _, medians, overall = force_groups(train)
        groups = (medians, overall)
    cands = (sparse_candidates(el, grid, e_mean) if "asp_sizes" in grid
             else grid_candidates(el, grid, e_mean, groups))
    recipe = recipe_candidate(el)
    log(f"zuo-{el} nested CV: {len(train)} configurations, {K} outer folds, grid {grid_name!r} "
        f"({len(cands)} candidates)")
    res = {"element": el, "data": {"file": path.name, "sha256": sha256_file(path)}, "outer_folds": K, "seed": seed,
           "grid": grid_name, "n_candidates": len(cands), "candidates": cands, "targets": {"E": TARGETS[el][0], "F": TARGETS[el][1]},
           "recipe": recipe, "outer": [], "timings_s": timings,
           "units": {"E": "eV/atom", "F": "eV/Å"}}

    def save():
        out.write_text(json.dumps(jsonable(res), indent=1))

    kw = grid.get("basis_kw")
    own = bool(kw) or grid.get("rcut", RECIPE_FACTOR) != RECIPE_FACTOR
    reference = None
    if own:     # the recipe's basis is not among this grid's columns: its outer folds from its own assembly
        ra = Assembled(el, train, [RECIPE_BASIS], RECIPE_FACTOR, folds, always, threads, timings, "recipe")
        reference, = selection.cross_validate(ra.factors, list(range(K)), [K], [recipe], ra.labels, ra.sizes, log=None)
        del ra
    prev = json.loads(out.read_text()) if out.is_file() else {}
    if own and prev.get("data") == res["data"] and same(prev.get("candidates"), jsonable(cands)) and len(
            prev.get("outer", [])) == K:
        # resume: a run that stopped after its outer folds (their choices and errors are all kept)
        res["outer"], a = prev["outer"], None
        timings.update({k: v for k, v in prev["timings_s"].items() if k.startswith(("nested_", "outer_"))}, resumed=True)
        procedure = selection.summarise({"procedure": "inner selection"}, [f["procedure"] for f in res["outer"]], 0)
        log(f"  the {K} outer folds kept from the earlier run ({out.name})")
    else:
        a = Assembled(el, train, grid["chain"], grid.get("rcut", RECIPE_FACTOR), folds, always, threads, timings,
                      "nested", basis_kw=kw)
        t0 = time.perf_counter()

        def on_fold(f):
            res["outer"].append(f)
            timings["outer_s"] = time.perf_counter() - t0
            save()

        nested = selection.nested_cross_validate(a.factors, list(range(K)), [K], cands, a.labels, a.sizes,
                                                 chooser(TARGETS[el]), reference=None if own else recipe, log=log,
                                                 on_fold=on_fold)
        procedure, reference = nested["procedure"], reference or nested["reference"]
    res["procedure"], res["recipe_estimate"] = procedure, reference
    res["comparison"] = selection.beats(procedure, reference)
    res["ship"] = "selected" if res["comparison"]["procedure_wins"] else "recipe"
    res["rule"] = ("ship the selected model only where the procedure beats the recipe on both E and F: mean "
                   "paired gain (recipe MAE - procedure MAE over the same outer folds) above one standard error "
                   "of the paired gains; else ship the recipe")
    timings["total_s"] = time.perf_counter() - t_all
    res["speed"] = (sparse_speed(el, a, cands) if "asp_sizes" in grid else kw_speed(el, grid) if own
                    else speed(el, res))
    res["peak_rss_mib"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024   # Linux: KiB
    save()
    p, r = res["procedure"], res["recipe_estimate"]
    log(f"zuo-{el}: procedure E {p['mae_mean']['E'] * 1e3:.3f} ± {p['mae_std']['E'] * 1e3:.3f} meV/atom, "
        f"F {p['mae_mean']['F']:.4f} ± {p['mae_std']['F']:.4f} eV/Å; recipe E {r['mae_mean']['E'] * 1e3:.3f} ± "
        f"{r['mae_std']['E'] * 1e3:.3f}, F {r['mae_mean']['F']:.4f} ± {r['mae_std']['F']:.4f}; ship {res['ship']} "
        f"({timings['total_s']:.0f} s)")
    return res


def nested_file_name(grid: str, seed: int = SEED) -> str:
    """The default output file of a grid's nested CV: nested_cv.json (small, full), else
    nested_cv_<grid>.json; on fresh outer folds (seed other than SEED) ..._seed<seed>.json."""
    base = "nested_cv" if grid in ("small", "full") else f"nested_cv_{grid}"
    return f"{base}.json" if seed == SEED else f"{base}_seed{seed}.json"


def fresh_runs(d: Path, grid: str) -> list[Path]:
    """A grid's finished nested CVs on fresh outer folds in model folder ``d``
    (nested_cv_<grid>_seed<s>.json), by seed (a running one has no "procedure" yet)."""
    return sorted((f for f in d.glob(f"nested_cv_{grid}_seed*.json") if "procedure" in json.loads(f.read_text())),
                  key=lambda f: int(f.stem.rsplit("_seed", 1)[1]))


def deciding_file(d: Path, grid: str) -> Path:
    """The nested CV whose verdict decides whether a grid's winner ships, in model folder ``d``: its
    last finished run on fresh outer folds (`fresh_runs`) where there is one (a grid designed after its
    run on ``zuo_select``'s folds is judged on folds it has not seen), else nested_cv_<grid>.json."""
    fresh = fresh_runs(d, grid)
    return fresh[-1] if fresh else d / nested_file_name(grid)


def main(argv=None):
    ap = argparse.ArgumentParser(prog="python -m tools.shipped_models.zuo_nested", description=__doc__.split("\n\n")[0])
    ap.add_argument("elements", nargs="+", choices=sorted(TARGETS))
    add_data_dir(ap)
    ap.add_argument("--grid", choices=sorted(GRIDS), default="small", help="candidate grid (default small)")
    ap.add_argument("--out", default=None, help="output JSON (default models/zuo-<El>/nested_cv.json; one element)")
    ap.add_argument("--threads", type=int, default=1, help="assembly threads (default 1)")
    ap.add_argument("--seed", type=int, default=SEED,
                    help=f"seed of the outer folds (default {SEED}, zuo_select's folds); another seed gives fresh "
                         "folds, to confirm a grid designed after a run on the default ones (default output "
                         "nested_cv_<grid>_seed<seed>.json)")
    ap.add_argument("--rounds", type=int, default=5, help="timing rounds of the speed run (default 5)")
    ap.add_argument("--speed-only", action="store_true",
                    help="only (re)time the recipe, the chosen bases and the selection's grid into an existing output file")
    args = ap.parse_args(argv)
    if args.speed_only and args.grid not in ("small", "full"):
        ap.error("--speed-only re-times nested_cv.json; the sparse grid's supports are fitted from the data "
                 "(run it with --data-dir)")
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
        out = Path(args.out) if args.out else MODELS / f"zuo-{el}" / nested_file_name(args.grid, args.seed)
        run(el, data_dir, args.grid, out, args.threads, args.seed)


if __name__ == "__main__":
    main()
