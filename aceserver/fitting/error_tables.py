"""Error tables (ace-spec §4.5): RMSE and MAE per config_type and for the whole set.

The full model (E0 included) is evaluated with ``model.evaluate``. Energy errors are per atom (E/N),
force errors per Cartesian component, virial errors per atom over the 6 Voigt components (W/N).
Stored values are in eV/atom, eV/Å, eV/atom; printed tables show E and V in meV/atom.

:func:`rmse_mae` is the one RMSE/MAE computation of fitting: :func:`error_table` (predictions of
the full model), :func:`kind_errors` (residuals of assembled design rows, as selection and
cross-validation score candidates) and everything built on them use it.
"""
from __future__ import annotations

import math
import os
from concurrent.futures import ThreadPoolExecutor

import numpy as np

from aceserver.evaluation.postprocess import VOIGT
from aceserver.evaluation.site_potential import SitePotential

from .assembly import KIND_E, KIND_F, KIND_V
from .data import Config

SET = "set"


def rmse_mae(r: np.ndarray) -> tuple[float, float]:
    """(RMSE, MAE) of the residuals ``r`` (non-empty)."""
    return float(np.sqrt(np.mean(r ** 2))), float(np.mean(np.abs(r)))


def kind_errors(r: np.ndarray, kind: np.ndarray, natoms: np.ndarray) -> dict:
    """``{"rmse": {"E", "F", "V"}, "mae": {...}}`` of design-row residuals ``r`` (model − target),
    given each row's kind (``assembly.KIND_*``) and its configuration's atom count: E and V rows
    divided by N (eV/atom), F rows as they are (eV/Å). ``None`` where a kind has no rows."""
    out = {"rmse": {}, "mae": {}}
    for k, code in (("E", KIND_E), ("F", KIND_F), ("V", KIND_V)):
        sel = kind == code
        if not sel.any():
            out["rmse"][k] = out["mae"][k] = None
            continue
        rk = r[sel] if code == KIND_F else r[sel] / natoms[sel]
        out["rmse"][k], out["mae"][k] = rmse_mae(rk)
    return out


def predict(model, configs: list[Config], threads: int | None = None):
    """[(energy eV, forces (N,3), virial (3,3))] for each configuration. A `SitePotential`: one
    `evaluate_many` call (small configurations packed into one kernel pass, threads across
    configurations; `evaluate`'s numbers bit for bit; a bad configuration raises `BatchError`
    naming it); any other model of the fitting contract: `evaluate` per configuration, in threads."""
    if isinstance(model, SitePotential):
        results = model.evaluate_many([(c.numbers, c.positions, c.cell, c.pbc) for c in configs],
                                      threads=threads)
        return [(float(r.energy), np.asarray(r.forces, float), np.asarray(r.virial, float))
                for r in results]

    def one(c):
        r = model.evaluate(c.numbers, c.positions, c.cell, c.pbc)
        return float(r.energy), np.asarray(r.forces, float), np.asarray(r.virial, float)

    nthreads = threads or os.cpu_count() or 1
    if nthreads == 1 or len(configs) < 2:
        return [one(c) for c in configs]
    with ThreadPoolExecutor(max_workers=nthreads) as ex:
        return list(ex.map(one, configs))


def error_table(configs: list[Config], predictions) -> dict:
    """``{"rmse": {ct or "set": {"E", "F", "V"}}, "mae": {...}, "count": {...}}`` (eV/atom, eV/Å, eV/atom).

    An entry is ``None`` where the group has no observation of that kind.
    """
    groups: dict[str, dict[str, list]] = {}
    order: list[str] = []
    for c, (E, F, W) in zip(configs, predictions):
        for g in (c.config_type, SET):
            if g not in groups:
                groups[g] = {"E": [], "F": [], "V": [], "n": 0}
                if g != SET:
                    order.append(g)
            d = groups[g]
            d["n"] += 1
            if c.energy is not None:
                d["E"].append(np.array([(E - c.energy) / c.natoms]))
            if c.forces is not None:
                d["F"].append((F - c.forces).ravel())
            if c.virial is not None:
                d["V"].append(np.array([(W[a, b] - c.virial[a, b]) / c.natoms for a, b in VOIGT]))
    out = {"rmse": {}, "mae": {}, "count": {}}
    for g in order + ([SET] if SET in groups else []):
        d = groups[g]
        out["rmse"][g], out["mae"][g] = {}, {}
        out["count"][g] = d["n"]
        for k in ("E", "F", "V"):
            if d[k]:
                out["rmse"][g][k], out["mae"][g][k] = rmse_mae(np.concatenate(d[k]))
            else:
                out["rmse"][g][k] = None
                out["mae"][g][k] = None
    return out


def compute_errors(model, configs: list[Config], threads: int | None = None) -> dict:
    """:func:`error_table` of the model's predictions on ``configs``."""
    return error_table(configs, predict(model, configs, threads))


def format_table(errors: dict, title: str = "") -> str:
    """Fixed-width table: E and V in meV/atom, F in eV/Å."""
    def cell(v, scale):
        return f"{v * scale:10.4f}" if v is not None and math.isfinite(v) else f"{'-':>10}"

    head = (f"{'config_type':<16}{'n':>5} | {'E rmse':>10}{'F rmse':>10}{'V rmse':>10} | "
            f"{'E mae':>10}{'F mae':>10}{'V mae':>10}")
    units = (f"{'':<16}{'':>5} | {'meV/atom':>10}{'eV/Å':>10}{'meV/atom':>10} | "
             f"{'meV/atom':>10}{'eV/Å':>10}{'meV/atom':>10}")
    lines = [title] if title else []
    lines += [head, units, "-" * len(head)]
    for g, r in errors["rmse"].items():
        m = errors["mae"][g]
        if g == SET:
            lines.append("-" * len(head))
        lines.append(f"{g[:16]:<16}{errors.get('count', {}).get(g, ''):>5} | "
                     f"{cell(r['E'], 1e3)}{cell(r['F'], 1)}{cell(r['V'], 1e3)} | "
                     f"{cell(m['E'], 1e3)}{cell(m['F'], 1)}{cell(m['V'], 1e3)}")
    return "\n".join(lines)


def public(errors: dict) -> dict:
    """The documented JSON shape: ``{"rmse": ..., "mae": ...}`` (counts dropped)."""
    return {"rmse": errors["rmse"], "mae": errors["mae"]}
