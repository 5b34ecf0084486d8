"""The extrapolation grade γ of a model over a data set (``aceserver eval`` with an active set).

    gamma_report(model, configs)  -> γ statistics per species and the most extrapolative frames
    format_gamma_report(report)   -> the table ``aceserver eval`` prints

γ (dimensionless) is read from ``model.evaluate_many(gamma=True)`` (`Evaluation.gamma`; small
configurations packed into one pass, `evaluation.many_uncertainty`); nothing is recomputed here. Thresholds as pacemaker's: γ ≤ 1 interpolates, 1-5 is
mild extrapolation, > 5 unreliable (`aceserver.evaluation.uncertainty`). Memory: one float per atom
of the data (the statistics are exact quantiles, not sketches).
"""
from __future__ import annotations

import numpy as np
from ase.data import chemical_symbols

from aceserver.evaluation.uncertainty import GAMMA_INTERPOLATION, GAMMA_RELIABLE_MAX

from .data import Config


CONFIGS_PER_CALL = 4096     # configurations per evaluate_many call: its other outputs are dropped after each


def _gammas(model, configs: list[Config], threads: int | None) -> list[np.ndarray]:
    """γ of every configuration, through `evaluate_many` (threads as its own; None: numba's),
    CONFIGS_PER_CALL at a time; each kept as a copy of its own, so only γ stays in memory."""
    out = []
    for k in range(0, len(configs), CONFIGS_PER_CALL):
        part = configs[k:k + CONFIGS_PER_CALL]
        results = model.evaluate_many([(c.numbers, c.positions, c.cell, c.pbc) for c in part], forces=False,
                                      gamma=True, threads=threads)
        out += [np.array(ev.gamma) for ev in results]
    return out


def gamma_report(model, configs: list[Config], threads: int | None = None, top: int = 10) -> dict:
    """``{"species": {symbol: {"atoms", "min", "median", "p95", "max", "above_1", "above_5"}},
    "frames": [{"index", "file", "frame", "config_type", "natoms", "max_gamma"}]}``.

    ``above_1``/``above_5``: the fraction of that species' atoms with γ > 1 (extrapolating) and
    γ > 5 (unreliable); ``p95`` the 95th percentile (numpy's linear interpolation). ``frames``: the
    ``top`` configurations with the largest γ, largest first; ``index`` counts the configurations
    of all files in order from 0, ``frame`` within its file.
    """
    if getattr(model, "active_set", None) is None:
        raise ValueError("the model has no active set: build one with `aceserver activeset MODEL DATA.xyz`")
    gammas = _gammas(model, configs, threads)
    species: dict[str, dict] = {}
    if configs:
        z = np.concatenate([c.numbers for c in configs])
        g = np.concatenate(gammas)
        for number in np.unique(z):
            values = g[z == number]
            species[chemical_symbols[int(number)]] = {
                "atoms": int(values.size), "min": float(values.min()), "median": float(np.median(values)),
                "p95": float(np.percentile(values, 95)), "max": float(values.max()),
                "above_1": float(np.mean(values > GAMMA_INTERPOLATION)),
                "above_5": float(np.mean(values > GAMMA_RELIABLE_MAX))}
    worst = np.array([gi.max() if gi.size else 0.0 for gi in gammas])
    order = np.argsort(-worst, kind="stable")[:max(0, top)]
    frames = [{"index": int(i), "file": configs[i].source, "frame": int(configs[i].frame),
               "config_type": configs[i].config_type, "natoms": configs[i].natoms, "max_gamma": float(worst[i])}
              for i in order]
    return {"species": species, "frames": frames}


def format_gamma_report(report: dict, title: str = "") -> str:
    """Fixed-width tables: γ per species, then the most extrapolative frames."""
    head = (f"{'species':<8}{'atoms':>9} | {'min':>8}{'median':>8}{'p95':>8}{'max':>9} | "
            f"{'γ > 1':>7}{'γ > 5':>7}")
    lines = [title] if title else []
    lines += [head, "-" * len(head)]
    for el, s in report["species"].items():
        lines.append(f"{el:<8}{s['atoms']:>9} | {s['min']:8.3f}{s['median']:8.3f}{s['p95']:8.3f}{s['max']:9.3f} | "
                     f"{100 * s['above_1']:6.1f}%{100 * s['above_5']:6.1f}%")
    if report["frames"]:
        lines += ["", "most extrapolative frames (γ ≤ 1 interpolation, 1-5 mild, > 5 unreliable):",
                  f"{'index':>7}  {'max γ':>9}  {'atoms':>6}  {'config_type':<16} file:frame"]
        for f in report["frames"]:
            lines.append(f"{f['index']:>7}  {f['max_gamma']:9.3f}  {f['natoms']:>6}  {f['config_type'][:16]:<16} "
                         f"{f['file']}:{f['frame']}")
    return "\n".join(lines)
