"""Screen force-magnitude weights (a heteroscedastic least-squares fit) by plain 5-fold CV on the zuo folds.

    python -m tools.shipped_models.zuo_weights --data-dir DIR Mo [--threads 1]

(from the repository root; DIR holds ZuoEtAl2020/<El>_train.xyz, default $ACESERVER_DATA; the Zuo test
splits are never read). Why: the CV force MAE of Mo is dominated by hot, compressed configurations (RMS
force up to ~2.7 eV/Å against ~0.1 near equilibrium), and least squares spends the basis on their large
residuals while the score is a mean absolute error. If a configuration's residuals grow with its
forces, weighting its force rows by (RMS force)^-β aligns the fit with the score (β = 1: residuals
proportional to the forces, as iteratively reweighted least squares for an absolute error would weight
them; β = 0: the recipe).

Configurations are grouped by their RMS force into quartiles of the training split (the Zuo files have
no config_type; the weights act per config_type group, so each group is one); group g's force weight is
(median RMS force of all configurations / median of group g)^β, its energy weight w_E as the
candidate's. The quartile edges use every configuration of the split, so a held-out fold's labels set
the groups' edges (not the weights' effect on it: scores are unweighted MAE). Bases: the recipe's
(order 3, [25,21,17], rcut 2.5 bond lengths) and the screen's force lead with the same functions (rcut
2.25 bond lengths, many-body transform Agnesi (2, 6); ``zuo_variants``); β ∈ {0, 0.25, 0.5, 0.75, 1} ×
the variants' settings (algebraic p ∈ {2, 4} × w_E ∈ {10, 20, 30} × E0 ∈ {0, mean}), BLR. A screen,
like ``zuo_variants``: the best of many noisy scores on the folds that chose it is optimistic.

Writes models/zuo-<El>/weights_cv.json (a section of the card, ``zuo_cards``).
"""
from __future__ import annotations

import argparse
import json
import resource
import time

import numpy as np

from aceserver.fitting import selection
from aceserver.fitting.fit_model import jsonable
from aceserver.fitting.workflow import sha256_file

from .common import MODELS, same
from .zuo_nested import RECIPE_BASIS, RECIPE_FACTOR, recipe_candidate
from .zuo_recipe import (K, N_GROUPS, SEED, TARGETS, add_data_dir, basis_name, data_dir_of, force_groups,
                         training_split, weights_of)
from .zuo_select import Assembled, log
from .zuo_variants import E_WEIGHTS, PRIORS, best_by_forces

BETAS = (0.0, 0.25, 0.5, 0.75, 1.0)
# name: (rcut in bond lengths, further ace1_model keywords), each on the recipe's functions
BASES = {"recipe": (RECIPE_FACTOR, {}),
         "rcut 2.25, transform agnesi 2 6": (2.25, {"transform": ["agnesi", 2, 6]})}


def candidates(el, factor, kw, e_mean, medians, overall) -> list[dict]:
    extra = {"basis_kw": kw} if kw else {}
    return [{"basis": basis_name(*RECIPE_BASIS), "rcut_bond_lengths": factor, **extra, "prior": pr,
             "weights": weights_of(beta, we, medians, overall), "E0": E0, "solver": {"name": "blr"}, "beta": beta}
            for beta in BETAS for pr in PRIORS for we in E_WEIGHTS for E0 in ({el: 0.0}, {el: e_mean})]


def run(el: str, data_dir, threads: int | None, out) -> dict:
    t_all = time.perf_counter()
    path, train, folds, always = training_split(el, data_dir)
    group, medians, overall = force_groups(train)
    e_mean = round(float(np.mean([c.energy / c.natoms for c in train])), 6)
    res = {"element": el, "data": {"file": path.name, "sha256": sha256_file(path)}, "folds": K, "seed": SEED,
           "targets": {"E": TARGETS[el][0], "F": TARGETS[el][1]}, "recipe": recipe_candidate(el),
           "groups": {"counts": np.bincount(group, minlength=N_GROUPS).tolist(), "median_rms_force": medians,
                      "median_rms_force_all": overall},
           "betas": BETAS, "settings_grid": {"priors": PRIORS, "e_weights": E_WEIGHTS, "E0": [0.0, e_mean]},
           "bases": [], "units": {"E": "eV/atom", "F": "eV/Å", "rms_force": "eV/Å"}}
    log(f"zuo-{el}: RMS force groups {res['groups']}")
    recipe = None
    for name, (factor, kw) in BASES.items():
        timings: dict = {}
        a = Assembled(el, train, [RECIPE_BASIS], factor, folds, always, threads, timings, "weights", basis_kw=kw)
        cands = candidates(el, factor, kw, e_mean, medians, overall)
        t0 = time.perf_counter()
        results = selection.cross_validate(a.factors, list(range(K)), [K], [{k: v for k, v in c.items() if k != "beta"}
                                                                          for c in cands], a.labels, a.sizes, log=None)
        timings["cv_s"] = time.perf_counter() - t0
        for c, r in zip(cands, results):
            r["beta"] = c["beta"]
        if recipe is None:     # β = 0 with the recipe's settings on its own basis
            recipe = next(r for r in results if r["beta"] == 0.0 and same(
                {k: r["candidate"][k] for k in ("prior", "E0")}, {k: res["recipe"][k] for k in ("prior", "E0")})
                and r["candidate"]["weights"]["default"] == res["recipe"]["weights"]["default"])
        per_beta = []
        for beta in BETAS:
            b = best_by_forces([r for r in results if r["beta"] == beta], recipe)
            per_beta.append({"beta": beta, "best": b, "vs_recipe": selection.beats(b, recipe)})
            log(f"  {name}, β {beta}: best F {b['mae_mean']['F']:.4f}, E {b['mae_mean']['E'] * 1e3:.3f} meV/atom")
        res["bases"].append({"name": name, "rcut_bond_lengths": factor, "basis_kw": kw, "per_beta": per_beta,
                             "timings_s": timings})
        del a
    res["recipe_result"] = recipe
    res["timings_s"] = {"total_s": time.perf_counter() - t_all}
    res["peak_rss_mib"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024   # Linux: KiB
    out.write_text(json.dumps(jsonable(res), indent=1))
    return res


def card_section(el: str, res: dict) -> list[str]:
    """The card's section on this screen (weights_cv.json)."""
    mae = lambda r, k: (f"{r['mae_mean'][k] * 1e3:.3f} ± {r['mae_std'][k] * 1e3:.3f}" if k == "E"  # noqa: E731
                        else f"{r['mae_mean'][k]:.4f} ± {r['mae_std'][k]:.4f}")
    g = res["groups"]
    L = ["", "## Screen of force-magnitude weights", "",
         f"Plain 5-fold CV on the outer folds (`python -m tools.shipped_models.zuo_weights --data-dir DIR {el}`): the "
         "configurations are grouped into quartiles of their RMS force (medians "
         + ", ".join(f"{m:.2f}" for m in g["median_rms_force"]) + " eV/Å; "
         + ", ".join(str(n) for n in g["counts"]) + " configurations) and each group's force rows are weighted by "
         "(median RMS force / the group's median)^β, so that β = 1 fits residuals proportional to the forces "
         "(the mean absolute error's weighting) and β = 0 is the recipe; per β the candidate with the lowest mean "
         "CV F MAE among those (algebraic p ∈ {2, 4} × w_E ∈ {10, 20, 30} × E0 ∈ {0, mean}) whose mean E MAE is "
         "no higher than the recipe's (of all of them where none is); gain: the recipe's MAE minus the candidate's, fold by fold (mean ± "
         "standard error). Both bases have the recipe's functions (the same time as the recipe, or less).", "",
         "| basis | β | settings | CV E (meV/atom) | CV F (eV/Å) | gain E (meV/atom) | gain F (eV/Å) |",
         "|---|---|---|---|---|---|---|"]
    for b in res["bases"]:
        for p in b["per_beta"]:
            c, v = p["best"]["candidate"], p["vs_recipe"]
            L.append(f"| {b['name']} | {p['beta']:g} | alg p {c['prior']['p']}, w_E {c['weights']['default']['E']:g}, "
                     f"E0 {list(c['E0'].values())[0]:g} | {mae(p['best'], 'E')} | {mae(p['best'], 'F')} | "
                     f"{v['E']['mean_gain'] * 1e3:.3f} ± {v['E']['se'] * 1e3:.3f} | {v['F']['mean_gain']:.5f} ± "
                     f"{v['F']['se']:.5f} |")
    L += ["", f"Recipe in this run: CV E {mae(res['recipe_result'], 'E')} meV/atom, F {mae(res['recipe_result'], 'F')} "
          f"eV/Å. Run: {res['timings_s']['total_s'] / 60:.0f} min wall-clock, one thread, peak memory "
          f"{res['peak_rss_mib'] / 1024:.1f} GiB, on the shared 2-core build machine."]
    return L


def main(argv=None):
    ap = argparse.ArgumentParser(prog="python -m tools.shipped_models.zuo_weights", description=__doc__.split("\n\n")[0])
    ap.add_argument("element", choices=sorted(TARGETS))
    add_data_dir(ap)
    ap.add_argument("--threads", type=int, default=1, help="assembly threads (default 1)")
    args = ap.parse_args(argv)
    res = run(args.element, data_dir_of(ap, args), args.threads, MODELS / f"zuo-{args.element}" / "weights_cv.json")
    log(f"zuo-{args.element}: {res['timings_s']['total_s']:.0f} s, peak {res['peak_rss_mib']:.0f} MiB")


if __name__ == "__main__":
    main()
