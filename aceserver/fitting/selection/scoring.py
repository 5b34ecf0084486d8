"""Scoring rules for cross-validated candidates: fold statistics, scores against targets, and the
one-standard-error rule.

A candidate's result (from :func:`crossval.cross_validate`) holds its per-fold errors ``folds`` (E
in eV/atom, F in eV/Å, V in eV/atom); targets are (E MAE eV/atom, F MAE eV/Å).
"""
from __future__ import annotations

import math

import numpy as np


def summarise(candidate: dict, per_fold: list[dict], n_basis: int) -> dict:
    """Mean and standard deviation over folds of each error (None where a kind has no rows)."""
    out = {"candidate": candidate, "n_basis": int(n_basis), "folds": per_fold}
    for stat in ("mae", "rmse"):
        mean, std = {}, {}
        for k in ("E", "F", "V"):
            v = [f[stat][k] for f in per_fold if f[stat][k] is not None]
            mean[k] = float(np.mean(v)) if v else None
            std[k] = float(np.std(v, ddof=1)) if len(v) > 1 else None
        out[f"{stat}_mean"], out[f"{stat}_std"] = mean, std
    return out


def fold_ratios(result: dict, targets: tuple[float, float]) -> np.ndarray:
    """Per fold (E MAE_k / E target, F MAE_k / F target), shape (folds, 2)."""
    et, ft = targets
    return np.array([(f["mae"]["E"] / et, f["mae"]["F"] / ft) for f in result["folds"]])


def fold_scores(result: dict, targets: tuple[float, float], combine: str = "sum") -> np.ndarray:
    """Per fold s_k = E MAE_k / E target + F MAE_k / F target (``combine="sum"``), or the larger of
    the two ratios (``"max"``)."""
    ratios = fold_ratios(result, targets)
    if combine == "sum":
        return ratios.sum(axis=1)
    if combine == "max":
        return ratios.max(axis=1)
    raise ValueError(f"combine must be 'sum' or 'max', not {combine!r}")


def target_score(result: dict, targets: tuple[float, float], combine: str = "sum") -> tuple[float, float]:
    """Mean of :func:`fold_scores` and its standard error; ``combine="worse"``: the larger of the
    two mean ratios (mean E MAE / E target, mean F MAE / F target), which is at most 1 exactly when
    both mean CV errors meet their targets, with that ratio's standard error."""
    if combine == "worse":
        r = fold_ratios(result, targets)
        k = int(np.argmax(r.mean(axis=0)))
        s = r[:, k]
    else:
        s = fold_scores(result, targets, combine)
    return float(s.mean()), float(s.std(ddof=1) / math.sqrt(len(s))) if len(s) > 1 else 0.0


def one_standard_error(results: list[dict], score, fold_score=None) -> dict:
    """The one-standard-error rule: among candidates whose mean score is within one standard error
    of the best mean score, the one with the fewest basis functions, then the lowest mean score.
    ``score(result) -> (mean, standard error)``, smaller is better.

    With ``fold_score(result) -> per-fold scores`` (shape (folds,) or (folds, m)) the rule is
    paired: a candidate qualifies when its mean excess over the best, fold by fold, is within one
    standard error of that excess, for every one of the m columns (e.g. energy and force ratios).
    All candidates are scored on the same folds, and fold-to-fold differences (an easy fold is
    easy for every candidate) would otherwise widen the band and admit clearly worse models."""
    scored = [(score(r), r) for r in results]
    (best_mean, best_se), best = min(scored, key=lambda t: t[0][0])
    if fold_score is None:
        ok = [(r["n_basis"], m, r) for (m, _), r in scored if m <= best_mean + best_se]
    else:
        ref = np.asarray(fold_score(best))
        ok = []
        for (m, _), r in scored:
            d = (np.asarray(fold_score(r)) - ref).reshape(len(ref), -1)
            se = d.std(axis=0, ddof=1) / math.sqrt(len(d)) if len(d) > 1 else np.zeros(d.shape[1])
            if np.all(d.mean(axis=0) <= se):
                ok.append((r["n_basis"], m, r))
    return min(ok, key=lambda t: (t[0], t[1]))[2]
