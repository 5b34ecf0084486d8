"""Sparse (ASP) candidates on the upstream recipe's basis, cross-validated on the zuo folds.

    python -m tools.shipped_models.zuo_sparse --data-dir DIR Mo [--sizes 100 200 400 600 800]

(from the repository root; DIR holds ZuoEtAl2020/<El>_train.xyz, default $ACESERVER_DATA; the Zuo test
splits are never read). The recipe's basis (order 3, totaldegree [25,21,17], rcut 2.5 bond lengths),
prior (algebraic p = 4) and weights (E 30 / F 1), assembled once and reduced per fold
(:class:`aceserver.fitting.selection.BlockFactors`, the 5 seeded folds of ``zuo_select``). Per fold,
on the other folds' prior-scaled system (its triangular factor R and Qᵀy), one lasso homotopy
(:func:`aceserver.fitting.sparse.lasso_homotopy`, ACEfit's ASP path); for each size n, the last knot
with at most n active functions (the least shrunk one) is scored on the held-out fold twice:

* ``asp``: its lasso coefficients;
* ``asp+blr``: its support refitted by BLR (evidence maximisation on those columns only, a
  "relaxed lasso": the support chosen by the path, the shrinkage removed).

The support of each size on the whole training split is timed against the dense recipe
(µs/atom, energy + forces + virial, one thread, the evaluator skipping zero functions; timed
alternately in one run). Writes models/zuo-<El>/sparse_cv.json; ``zuo_cards`` plots it on the
accuracy-versus-speed plot. (``selection.cross_validate`` also takes ``{"name": "asp", ...}``
candidates, one path per candidate and fold; this tool runs one path per fold for all sizes.)
"""
from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import numpy as np
import scipy.linalg

import aceserver
from aceserver.fitting import assembly, priors, solvers
from aceserver.fitting.data import normalise_weights
from aceserver.fitting.fit_model import jsonable
from aceserver.fitting.selection.scoring import summarise
from aceserver.fitting.sparse import lasso_homotopy
from aceserver.fitting.workflow import sha256_file

from .common import MODELS, time_alternating
from .zuo_nested import RECIPE_BASIS, RECIPE_FACTOR, recipe_candidate
from .zuo_recipe import K, SEED, TARGETS, add_data_dir, data_dir_of, rcut_of, training_split
from .zuo_select import Assembled, log


def scaled_system(factors, combined: dict, ncols: int, gamma: np.ndarray, weights: dict, E0: dict):
    """The weighted, prior-scaled system of ``combined`` blocks reduced to (R, Qᵀỹ, ‖ỹ‖², rows): the
    stack that :meth:`BlockFactors.solve` decomposes by SVD, here by QR (the lasso path needs R)."""
    c = {g: assembly.group_factor(*factors.groups[g], weights) for g in combined}
    stack = np.vstack([c[g] * combined[g][0][:ncols, :ncols] for g in combined]) / gamma[None, :ncols]
    wv = factors.rhs_weights(E0)
    bs = np.concatenate([c[g] * (wv @ combined[g][1][:, :ncols]) for g in combined])
    yy = float(sum(c[g] ** 2 * (wv @ combined[g][2] @ wv) for g in combined))
    qty, R = scipy.linalg.qr_multiply(np.asfortranarray(stack), bs, mode="right", overwrite_a=True)
    return R, qty, yy, int(sum(combined[g][3] for g in combined))


def path_supports(R, qty, sizes) -> dict:
    """{n: (indices, lasso coefficients)} at the last knot with at most n active functions."""
    sizes = sorted(sizes)
    out: dict = {}
    last: dict = {}

    def on_knot(i, lam, idx, val):
        k = len(idx)
        for n in sizes:
            if k <= n:
                last[n] = (np.array(idx, dtype=np.int64), np.array(val, dtype=float))

    lasso_homotopy(R, qty, max_active=max(sizes) + 1, store=set(), on_knot=on_knot)
    for n in sizes:
        if n in last:
            out[n] = last[n]
    return out


def run(el: str, data_dir: Path, sizes: list[int], threads: int | None = 1) -> dict:
    t_all = time.perf_counter()
    timings: dict = {}
    path, train, folds, always = training_split(el, data_dir)
    rec = recipe_candidate(el)
    a = Assembled(el, train, [RECIPE_BASIS], RECIPE_FACTOR, folds, always, threads, timings, "sparse")
    m = a.sizes[rec["basis"]]
    gamma = priors.make_prior(a.labels[:m], rec["prior"])
    w = normalise_weights(rec["weights"])
    per: dict = {(kind, n): [] for kind in ("asp", "asp+blr") for n in sizes}
    dense = []
    t0 = time.perf_counter()
    for k in range(K):
        comb = a.factors.combine([b for b in range(K) if b != k] + [K])
        R, qty, yy, n_obs = scaled_system(a.factors, comb, m, gamma, w, rec["E0"])
        theta = a.factors.solve(comb, m, gamma, w, [rec["E0"]], rec["solver"])[0][0]
        dense.append(a.factors.block_errors([k], theta, rec["E0"]))
        resid = max(yy - float(qty @ qty), 0.0)
        for n, (idx, val) in path_supports(R, qty, sizes).items():
            for kind, v in (("asp", val), ("asp+blr", solvers.blr_on_support(R, qty, resid, n_obs, idx).coef[idx])):
                c = np.zeros(m)
                c[idx] = v
                e = a.factors.block_errors([k], c / gamma[:m], rec["E0"])
                e["n_active"] = int(len(idx))
                per[kind, n].append(e)
        log(f"  fold {k}: dense E {dense[-1]['mae']['E'] * 1e3:.3f} meV/atom; " + ", ".join(
            f"{kind} {n}: E {per[kind, n][-1]['mae']['E'] * 1e3:.3f} F {per[kind, n][-1]['mae']['F']:.4f}"
            for kind in ("asp", "asp+blr") for n in sizes if len(per[kind, n]) == k + 1))
    timings["cv_s"] = time.perf_counter() - t0
    results = [summarise(dict(rec, solver={"name": kind, "max_active": n}), per[kind, n], m)
               for kind in ("asp", "asp+blr") for n in sizes if len(per[kind, n]) == K]
    for r in results:
        r["n_active_mean"] = float(np.mean([f["n_active"] for f in per[r["candidate"]["solver"]["name"],
                                                                         r["candidate"]["solver"]["max_active"]]]))
    # supports on the whole training split, timed against the dense recipe
    comb = a.factors.combine(list(range(K + 1)))
    R, qty, *_ = scaled_system(a.factors, comb, m, gamma, w, rec["E0"])
    whole = path_supports(R, qty, sizes)
    res = {"element": el, "data": {"file": path.name, "sha256": sha256_file(path)}, "folds": K, "seed": SEED,
           "recipe": rec, "sizes": sizes, "dense": summarise(rec, dense, m), "results": results,
           "speed": speed(el, a, whole), "timings_s": timings, "units": {"E": "eV/atom", "F": "eV/Å"}}
    timings["total_s"] = time.perf_counter() - t_all
    return res


def speed(el: str, a, supports: dict, rounds: int = 5, calls: int = 10) -> dict:
    """µs/atom of the recipe model with all parameters nonzero and with only each support's, timed
    alternately (forward, then reversed) in one run; medians over rounds."""
    model = a.models[-1]
    rng = np.random.default_rng(0)
    full = rng.standard_normal(model.length_basis) / model.length_basis
    variants = {"dense": full}
    for n, (idx, _) in supports.items():
        p = np.zeros(model.length_basis)
        cols = a.order[idx]                       # BlockFactors column order -> model parameter index
        p[cols] = full[cols]
        variants[n] = p
    models = {}
    for key, p in variants.items():
        mm = aceserver.ace1_model(elements=[el], order=RECIPE_BASIS[0], totaldegree=RECIPE_BASIS[1],
                                  rcut=rcut_of(el, RECIPE_FACTOR), E0={el: 0.0})
        mm.parameters = p
        models[key] = mm
    name, t = time_alternating(el, list(models.values()), rounds, calls)
    med = dict(zip(models, t))
    return {"structure": name, "rounds": rounds, "calls": calls, "threads": 1,
            "us_per_atom": {str(key): v for key, v in med.items()},
            "n_active": {str(n): int(len(supports[n][0])) for n in supports},
            "ratio_to_dense": {str(key): v / med["dense"] for key, v in med.items()}}


def main(argv=None):
    ap = argparse.ArgumentParser(prog="python -m tools.shipped_models.zuo_sparse", description=__doc__.split("\n\n")[0])
    ap.add_argument("elements", nargs="+", choices=sorted(TARGETS))
    add_data_dir(ap)
    ap.add_argument("--sizes", type=int, nargs="+", default=[100, 200, 400, 600, 800],
                    help="numbers of active functions (default 100 200 400 600 800)")
    ap.add_argument("--threads", type=int, default=1, help="assembly threads (default 1)")
    args = ap.parse_args(argv)
    data_dir = data_dir_of(ap, args)
    for el in args.elements:
        res = run(el, data_dir, sorted(args.sizes), args.threads)
        (MODELS / f"zuo-{el}" / "sparse_cv.json").write_text(json.dumps(jsonable(res), indent=1))
        log(f"zuo-{el}: sparse CV done in {res['timings_s']['total_s']:.0f} s")


if __name__ == "__main__":
    main()
