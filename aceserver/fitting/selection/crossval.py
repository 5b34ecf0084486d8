"""K-fold cross-validation and learning curves of candidates on :class:`BlockFactors` (one assembly).

A candidate is ``{"basis": name, "prior": spec, "weights": {...}, "E0": {el: eV}, "solver": spec}``;
its result holds the per-fold errors (E eV/atom, F eV/Å, V eV/atom) and their mean and spread
(:func:`scoring.summarise`).
"""
from __future__ import annotations

import json

import numpy as np

from .. import priors
from ..data import normalise_weights
from .block_factors import BlockFactors
from .scoring import summarise


def cross_validate(factors: BlockFactors, folds: list[int], train_always: list[int], candidates: list[dict],
                   labels, sizes: dict, log=print, on_result=None) -> list[dict]:
    """K-fold CV of ``candidates`` ``{"basis": name, "prior": spec, "weights": {...}, "E0": {el: eV},
    "solver": spec}`` on ``factors``: fold k (a block) is held out, the other folds and
    ``train_always`` are fitted. ``sizes[name]``: the basis's number of leading columns; ``labels``:
    basis labels of the columns in ``factors`` order (for the prior). Candidates that differ only in
    E0 share each fold's SVD. Returns per candidate its per-fold errors and their mean and spread."""
    groups: dict = {}
    for i, c in enumerate(candidates):
        tag = json.dumps([c["basis"], c.get("prior"), c.get("weights"), c.get("solver")], sort_keys=True, default=str)
        groups.setdefault(tag, []).append(i)
    combined = {}
    results = [None] * len(candidates)
    for tag, idx in groups.items():
        c0 = candidates[idx[0]]
        ncols = int(sizes[c0["basis"]])
        gamma = priors.make_prior(labels[:ncols], c0.get("prior"))
        per = [[] for _ in idx]
        for k in folds:
            if k not in combined:
                combined[k] = factors.combine([b for b in folds if b != k] + list(train_always))
            fits = factors.solve(combined[k], ncols, gamma, normalise_weights(c0.get("weights")),
                                 [candidates[i].get("E0") for i in idx], c0.get("solver"))
            for j, (theta, _, info) in enumerate(fits):
                e = factors.block_errors([k], theta, candidates[idx[j]].get("E0"))
                e["solver_info"] = {a: v for a, v in info.items() if isinstance(v, (int, float, str))}
                per[j].append(e)
        for j, i in enumerate(idx):
            results[i] = summarise(candidates[i], per[j], ncols)
            if on_result:
                on_result(results[i])
            if log:
                s = results[i]
                log(f"  {candidates[i]}: CV MAE E {s['mae_mean']['E'] * 1e3:.3f} ± {s['mae_std']['E'] * 1e3:.3f} "
                    f"meV/atom, F {s['mae_mean']['F']:.4f} ± {s['mae_std']['F']:.4f} eV/Å")
    return results


def learning_curve(factors: BlockFactors, parts: list[list[int]], train_always: list[int], candidate: dict,
                   labels, ncols: int, log=print) -> list[dict]:
    """CV error against training-set size: ``parts[f]`` are the blocks of fold f, in a seeded order;
    with fold k held out, the model is fitted on the first j blocks of every other fold (and
    ``train_always``), j = 1..len(parts[f]). Returns [{"fraction", "n_train_configs", per-fold errors
    and their mean and spread}] (one SVD per fold and size; the factors grow incrementally)."""
    S = len(parts[0])
    gamma = priors.make_prior(labels[:ncols], candidate.get("prior"))
    curve = [[] for _ in range(S)]
    ntrain = [[] for _ in range(S)]
    for k in range(len(parts)):
        cur = factors.combine(list(train_always), ncols)
        for j in range(S):
            new = [parts[f][j] for f in range(len(parts)) if f != k]
            cur = factors.combine(new, ncols, base=cur)
            (theta, _, _), = factors.solve(cur, ncols, gamma, normalise_weights(candidate.get("weights")),
                                           [candidate.get("E0")], candidate.get("solver"))
            curve[j].append(factors.block_errors(parts[k], theta, candidate.get("E0")))
            ntrain[j].append(sum(len(factors.block_configs[b]) for f in range(len(parts)) if f != k
                                 for b in parts[f][:j + 1]) + sum(len(factors.block_configs[b]) for b in train_always))
    out = []
    for j in range(S):
        r = summarise(candidate, curve[j], ncols)
        r.update(fraction=(j + 1) / S, n_train_configs=float(np.mean(ntrain[j])))
        out.append(r)
        if log:
            log(f"  learning curve {(j + 1) / S:.2f} ({r['n_train_configs']:.0f} configs): CV MAE E "
                f"{r['mae_mean']['E'] * 1e3:.3f} meV/atom, F {r['mae_mean']['F']:.4f} eV/Å")
    return out


def nested_cross_validate(factors: BlockFactors, blocks: list[int], train_always: list[int], candidates: list[dict],
                          labels, sizes: dict, choose, reference: dict | None = None, log=print,
                          on_fold=None) -> dict:
    """Nested cross-validation of a selection PROCEDURE: outer fold o (a block) is held out; the
    procedure runs on the other blocks alone (:func:`cross_validate` with each of them held out in
    turn, ``choose(results) -> result`` picks a candidate), the winner is refitted on all the other
    blocks (and ``train_always``) and scored on o. The held-out block enters neither the inner
    fits, nor the inner scores, nor the choice. ``reference``: a fixed candidate (e.g. an upstream
    recipe) fitted and scored on the same outer folds, for a paired comparison.

    Returns {"outer": [{"fold", "chosen", "inner": inner CV means and spreads per candidate,
    "procedure": errors, "reference": errors}],
    "procedure": summary, "reference": summary} (summaries as :func:`scoring.summarise`: per-fold
    errors, their mean and spread)."""
    outer, per_proc, per_ref = [], [], []
    for o in blocks:
        inner = [b for b in blocks if b != o]
        if log:
            log(f" outer fold {o}: inner cross-validation over blocks {inner}")
        results = cross_validate(factors, inner, train_always, candidates, labels, sizes, log=None)
        chosen = choose(results)["candidate"]
        combined = factors.combine(inner + list(train_always))
        fold = {"fold": int(o), "chosen": chosen,
                "inner": [{"mae_mean": r["mae_mean"], "mae_std": r["mae_std"]} for r in results]}
        for what, cand, sink in (("procedure", chosen, per_proc), ("reference", reference, per_ref)):
            if cand is None:
                continue
            ncols = int(sizes[cand["basis"]])
            gamma = priors.make_prior(labels[:ncols], cand.get("prior"))
            (theta, _, _), = factors.solve(combined, ncols, gamma, normalise_weights(cand.get("weights")),
                                           [cand.get("E0")], cand.get("solver"))
            fold[what] = factors.block_errors([o], theta, cand.get("E0"))
            sink.append(fold[what])
        outer.append(fold)
        if on_fold:
            on_fold(fold)
        if log:
            msg = f"  chosen {chosen}: outer MAE E {fold['procedure']['mae']['E'] * 1e3:.3f} meV/atom, " \
                  f"F {fold['procedure']['mae']['F']:.4f} eV/Å"
            if reference is not None:
                msg += f"; reference E {fold['reference']['mae']['E'] * 1e3:.3f}, F {fold['reference']['mae']['F']:.4f}"
            log(msg)
    out = {"outer": outer, "procedure": summarise({"procedure": "inner selection"}, per_proc, 0)}
    if reference is not None:
        out["reference"] = summarise(reference, per_ref, int(sizes[reference["basis"]]))
    return out


def beats(procedure: dict, reference: dict, z: float = 1.0, kinds=("E", "F")) -> dict:
    """Paired comparison over the same outer folds: per kind the mean of (reference MAE − procedure
    MAE) and its standard error; the procedure beats the reference when that mean exceeds ``z``
    standard errors for every kind in ``kinds`` (more than the outer folds' noise)."""
    out, ok = {}, True
    for k in kinds:
        d = np.array([r["mae"][k] - p["mae"][k] for p, r in zip(procedure["folds"], reference["folds"])])
        se = float(d.std(ddof=1) / np.sqrt(len(d))) if len(d) > 1 else float("inf")
        out[k] = {"mean_gain": float(d.mean()), "se": se, "per_fold_gain": d.tolist()}
        ok &= bool(d.mean() > z * se)
    out["z"], out["procedure_wins"] = float(z), ok
    return out
