"""The screen behind ``zuo_nested --grid transform_smooth``: smoother priors on the force screen's lead.

    python -m tools.shipped_models.zuo_smooth_screen --data-dir DIR [Mo]

(from the repository root; the Zuo test splits are never read). Plain 5-fold CV on the folds of
``zuo_select`` (seed 0) of the upstream recipe and of the lead's largest basis (order 4
[27,23,19,15], 2140 functions, many-body transform Agnesi (2, 6), rcut 2.25 bond lengths) under
algebraic p ∈ {4, 6, 8} × w_E ∈ {20, 30} × force-magnitude weights β ∈ {0, 0.5} (``zuo_weights``'
groups), E0 0, BLR; each setting's CV E MAE of the surface slabs and of the rest (``zuo_breakdown``'s
classes) and its paired gain over the recipe, fold by fold. A screen: the best of its 12 noisy scores
on the folds that chose it is optimistic, which is why its family is judged by nested CV on fresh
outer folds. Writes models/zuo-<El>/smooth_screen.json.
"""
from __future__ import annotations

import itertools
import json
import time

import numpy as np

import aceserver
from aceserver.fitting import assembly
from aceserver.fitting.fit_model import jsonable

from .common import MODELS
from .zuo_breakdown import CLASSES, cv_errors, structure_class
from .zuo_nested import RECIPE_BASIS, RECIPE_FACTOR, recipe_candidate
from .zuo_recipe import elements_parser, TARGETS, data_dir_of, force_groups, rcut_of, training_split, weights_of
from .zuo_select import log

LEAD = dict(order=4, totaldegree=[27, 23, 19, 15], factor=2.25, transform=["agnesi", 2, 6])
SETTINGS = list(itertools.product((4, 6, 8), (20.0, 30.0), (0.0, 0.5)))     # (p, w_E, β)


def fold_maes(e_err, f_mae, natoms, folds):
    """Per fold: E MAE (eV/atom) and F MAE (eV/Å, over components) of its held-out configurations."""
    E = np.array([np.nanmean(np.abs(e_err[f])) for f in folds])
    F = np.array([np.nansum((f_mae * natoms)[f]) / natoms[f][~np.isnan(f_mae[f])].sum() for f in folds])
    return E, F


def run(el: str, data_dir, threads, out) -> dict:
    t0 = time.perf_counter()
    _, train, folds, always = training_split(el, data_dir)
    _, medians, overall = force_groups(train)
    natoms = np.array([c.natoms for c in train], dtype=float)
    rec = recipe_candidate(el)
    m = aceserver.ace1_model(elements=[el], order=RECIPE_BASIS[0], totaldegree=RECIPE_BASIS[1],
                             rcut=rcut_of(el, RECIPE_FACTOR), E0={el: 0.0})
    slab = np.array([structure_class(c, rcut_of(el, RECIPE_FACTOR)) == CLASSES[0] for c in train])
    e0, f0, _ = cv_errors(m, train, rec["weights"], rec["prior"], always, folds, threads)
    rE, rF = fold_maes(e0, f0, natoms, folds)

    def row(name, e, f):
        E, F = fold_maes(e, f, natoms, folds)
        gE, gF = rE - E, rF - F
        return {"setting": name, "E_mae": float(E.mean()), "F_mae": float(F.mean()),
                "E_mae_slabs": float(np.nanmean(np.abs(e[slab]))), "E_mae_rest": float(np.nanmean(np.abs(e[~slab]))),
                "gain_E": [float(gE.mean()), float(gE.std(ddof=1) / np.sqrt(len(gE)))], "gain_E_folds": gE.tolist(),
                "gain_F": [float(gF.mean()), float(gF.std(ddof=1) / np.sqrt(len(gF)))]}
    rows = [row("recipe", e0, f0)]
    lead = aceserver.ace1_model(elements=[el], order=LEAD["order"], totaldegree=LEAD["totaldegree"],
                                rcut=rcut_of(el, LEAD["factor"]), E0={el: 0.0}, transform=LEAD["transform"])
    S = assembly.assemble(lead, train, None, threads=threads, progress=False)
    for p, we, beta in SETTINGS:
        w = {"default": {"E": we, "F": 1.0, "V": 1.0}} if beta == 0.0 else weights_of(beta, we, medians, overall)
        e, f, _ = cv_errors(lead, train, w, {"name": "algebraic", "p": p}, always, folds, system=S)
        rows.append(row({"p": p, "w_E": we, "beta": beta}, e, f))
        r = rows[-1]
        log(f"  p {p} w_E {we:g} β {beta:g}: E {r['E_mae'] * 1e3:.3f} (slabs {r['E_mae_slabs'] * 1e3:.2f}, rest "
            f"{r['E_mae_rest'] * 1e3:.3f}) F {r['F_mae']:.4f}; gain E {r['gain_E'][0] * 1e3:.3f} ± "
            f"{r['gain_E'][1] * 1e3:.3f}, F {r['gain_F'][0]:.4f} ± {r['gain_F'][1]:.4f}")
    res = {"element": el, "folds": "zuo_select's (seed 0)", "lead": LEAD, "slabs": int(slab.sum()),
           "targets": {"E": TARGETS[el][0], "F": TARGETS[el][1]}, "rows": rows,
           "units": {"E": "eV/atom", "F": "eV/Å"}, "timings_s": {"total_s": time.perf_counter() - t0}}
    out.write_text(json.dumps(jsonable(res), indent=1))
    return res


def main(argv=None):
    ap = elements_parser("zuo_smooth_screen", __doc__, nargs="*", default=["Mo"])
    args = ap.parse_args(argv)
    data_dir = data_dir_of(ap, args)
    for el in args.elements:
        run(el, data_dir, args.threads, MODELS / f"zuo-{el}" / "smooth_screen.json")


if __name__ == "__main__":
    main()
