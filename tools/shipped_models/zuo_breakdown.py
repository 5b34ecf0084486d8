"""Where the cross-validation error of a shipped zuo-<El> model comes from, by kind of structure.

    python -m tools.shipped_models.zuo_breakdown --data-dir DIR Mo [Ge ...]

(from the repository root; DIR holds ZuoEtAl2020/<El>_train.xyz, default $ACESERVER_DATA; the test
splits are never read). The shipped settings (models/zuo-<El>/fit.yaml: basis, E0, weights and
force groups, prior; BLR) are cross-validated on the 5 folds of ``zuo_select`` (seed 0; isolated atoms
always in training), from one assembly of the training split, and each held-out configuration's
energy error (eV/atom) and force MAE (eV/Å) is kept. The Zuo files have no config_type, so each
configuration is put in one class by its geometry and forces:

* surface slab: a gap free of atoms, wider than the model's cutoff, across the cell along one of its
  lattice vectors (the slab's two faces do not see each other through the periodic boundary; the
  Zuo slabs have 11-22 Å of vacuum);
* bulk at rest: the other cells with RMS force below 0.05 eV/Å (ground state, strained cells);
* bulk, thermal: the rest (molecular-dynamics snapshots, vacancies).

Writes models/zuo-<El>/cv_breakdown.json (per class: configurations, atoms, CV E MAE and its share
of the total, CV F MAE and its share; per configuration: class, atoms, errors);
``zuo_cards`` puts its table on the card.
"""
from __future__ import annotations

import json
import time
from pathlib import Path

import numpy as np

from aceserver.fitting import assembly, data, priors, solvers
from aceserver.fitting.active_set_build import build_active_set
from aceserver.fitting import config as fconfig
from aceserver.fitting.assembly import KIND_E, KIND_F
from aceserver.fitting.fit_model import jsonable
from aceserver.fitting.workflow import load_data, sha256_file

from .common import MODELS
from .zuo_recipe import elements_parser, K, SEED, TARGETS, data_dir_of, training_split
from .zuo_select import log

REST_RMS_FORCE = 0.05     # eV/Å: below it a bulk cell counts as at rest
CLASSES = ("surface slab", "bulk at rest", "bulk, thermal")


def vacuum_gap(cell: np.ndarray, positions: np.ndarray, pbc) -> float:
    """The widest gap free of atoms across a periodic cell along one of its lattice vectors (Å):
    per periodic direction, the largest spacing of the atoms' fractional coordinates (with the wrap)
    times the distance between the lattice planes of that direction."""
    frac = np.linalg.solve(cell.T, positions.T).T % 1.0
    recip = np.linalg.inv(cell).T             # rows: reciprocal vectors / 2π; plane spacing 1/|row|
    widest = 0.0
    for k in range(3):
        if not pbc[k]:
            continue
        s = np.sort(frac[:, k])
        gaps = np.diff(np.concatenate([s, [s[0] + 1.0]]))
        widest = max(widest, float(gaps.max()) / float(np.linalg.norm(recip[k])))
    return widest


def structure_class(cfg, rcut: float) -> str:
    """The class of one configuration (module docstring)."""
    if vacuum_gap(cfg.cell, cfg.positions, cfg.pbc) > rcut:
        return CLASSES[0]
    return CLASSES[1] if data.rms_force(cfg) < REST_RMS_FORCE else CLASSES[2]


def held_out_gamma(model, train, held: np.ndarray) -> dict[int, float]:
    """Max extrapolation grade γ over the atoms of each held-out configuration, against the active set
    (MaxVol, `build_active_set`) of the fold's training configurations: what a user of a model fitted
    without them would see."""
    build = build_active_set(model, [c for c, h in zip(train, held) if not h])
    model.attach_active_set(build.inverses())
    idx = np.flatnonzero(held)
    evs = model.evaluate_many([(train[i].numbers, train[i].positions, train[i].cell, train[i].pbc) for i in idx],
                              forces=False, gamma=True)
    return {int(i): float(np.max(ev.gamma)) for i, ev in zip(idx, evs)}


def cv_errors(model, train, weights: dict, prior, always: np.ndarray, folds, threads=None, gamma_too=False,
              system: assembly.LsqSystem | None = None):
    """Per configuration, its held-out energy error (eV/atom, signed), force MAE (eV/Å, nan
    without forces) and, with ``gamma_too``, max γ (`held_out_gamma`; else nan): BLR with ``prior``
    and ``weights`` on the other folds, from one assembly of all configurations (``system``: one
    already assembled for this model, reused under any weights)."""
    S = assembly.assemble(model, train, weights, threads=threads, progress=False) if system is None else system
    w = assembly.row_weights(S, train, weights)
    gamma = priors.make_prior(model.basis_labels, prior)
    natoms = np.array([c.natoms for c in train], dtype=float)
    e_err = np.full(len(train), np.nan)
    f_mae = np.full(len(train), np.nan)
    max_gamma = np.full(len(train), np.nan)
    for f in folds:
        held = np.zeros(len(train), bool)
        held[f] = True
        held[always] = False
        if gamma_too:
            for i, g in held_out_gamma(model, train, held).items():
                max_gamma[i] = g
        rows = ~held[S.config]
        sol = solvers.solve_blr(S.A[rows] * (w[rows, None] / gamma[None, :]), S.y[rows] * w[rows])
        theta = sol.coef / gamma
        r = S.A[~rows] @ theta - S.y[~rows]
        cfg, kind = S.config[~rows], S.kind[~rows]
        e = kind == KIND_E
        e_err[cfg[e]] = r[e] / natoms[cfg[e]]
        fr = kind == KIND_F
        sums = np.bincount(cfg[fr], weights=np.abs(r[fr]), minlength=len(train))
        counts = np.bincount(cfg[fr], minlength=len(train))
        has = held & (counts > 0)
        f_mae[has] = sums[has] / counts[has]
    return e_err, f_mae, max_gamma


def summarise(classes: list[str], natoms: np.ndarray, e_err: np.ndarray, f_mae: np.ndarray,
              max_gamma: np.ndarray) -> list[dict]:
    """Per class: configurations, atoms, CV E MAE (eV/atom, each configuration counted once) and its
    share of the total E MAE, CV F MAE (eV/Å, over force components) and its share; where γ was
    computed, the median over configurations of their max γ and how many exceed 1 (extrapolation)."""
    cls = np.array(classes)
    held = ~np.isnan(e_err)
    n_f = 3 * natoms
    has_f = ~np.isnan(f_mae)
    e_total = np.abs(e_err[held]).sum()
    f_total = (f_mae * n_f)[has_f].sum()
    out = []
    for c in CLASSES:
        m = (cls == c) & held
        mf = (cls == c) & has_f
        if not m.any():
            continue
        out.append({"class": c, "configurations": int(m.sum()), "atoms": int(natoms[m].sum()),
                    "E_mae": float(np.abs(e_err[m]).mean()), "E_share": float(np.abs(e_err[m]).sum() / e_total),
                    "F_mae": float((f_mae * n_f)[mf].sum() / n_f[mf].sum()) if mf.any() else None,
                    "F_share": float((f_mae * n_f)[mf].sum() / f_total) if mf.any() else None,
                    "median_max_gamma": None if np.isnan(max_gamma[m]).any() else float(np.median(max_gamma[m])),
                    "above_1": None if np.isnan(max_gamma[m]).any() else int((max_gamma[m] > 1.0).sum())})
    return out


GAMMA_SPLITS = (1.0, 2.0, 5.0)     # γ ≤ 1 interpolates, 1-5 mild extrapolation, > 5 unreliable (pacemaker's reading)


def by_gamma(e_err: np.ndarray, max_gamma: np.ndarray) -> list[dict] | None:
    """CV E MAE (eV/atom) of the held-out configurations above and at or below each of GAMMA_SPLITS
    of their max γ (None where γ was not computed)."""
    m = ~np.isnan(e_err)
    if np.isnan(max_gamma[m]).any():
        return None
    e, g = np.abs(e_err[m]), max_gamma[m]
    return [{"gamma": t, "above": int((g > t).sum()), "E_mae_above": float(e[g > t].mean()) if (g > t).any() else None,
             "E_mae_rest": float(e[g <= t].mean()) if (g <= t).any() else None} for t in GAMMA_SPLITS]


def run(el: str, data_dir: Path, threads: int | None, out: Path, gamma_too: bool = False) -> dict:
    t0 = time.perf_counter()
    d = MODELS / f"zuo-{el}"
    cfg = fconfig.load_config(d / "fit.yaml", data_dir=data_dir)
    train, _, E0 = load_data(cfg)
    model = fconfig.build_model(cfg.model, E0)
    # zuo_select's folds, drawn before any force-group labels (kfold stratifies by config_type, and
    # load_data has already labelled the configurations rms0.. where fit.yaml has force_groups)
    _, plain, folds, always = training_split(el, data_dir)
    if [c.energy for c in plain] != [c.energy for c in train]:
        raise SystemExit(f"zuo-{el}: fit.yaml's training data are not the Zuo training split in its order")
    rcut = float(cfg.model["rcut"])
    classes = [structure_class(c, rcut) for c in train]
    log(f"zuo-{el}: {len(train)} configurations; classes " + ", ".join(
        f"{c} {classes.count(c)}" for c in CLASSES))
    e_err, f_mae, max_gamma = cv_errors(model, train, cfg.weights, cfg.prior, always, folds, threads, gamma_too)
    natoms = np.array([c.natoms for c in train], dtype=float)
    held = ~np.isnan(e_err)
    res = {"element": el, "data": {"file": cfg.train[0].name, "sha256": sha256_file(cfg.train[0])},
           "settings": "fit.yaml", "fit_yaml_sha256": sha256_file(d / "fit.yaml"), "folds": K, "seed": SEED,
           "rcut": rcut, "rest_rms_force": REST_RMS_FORCE, "targets": {"E": TARGETS[el][0], "F": TARGETS[el][1]},
           "total": {"E_mae": float(np.abs(e_err[held]).mean()),
                     "F_mae": float(np.nansum(f_mae * 3 * natoms) / (3 * natoms[~np.isnan(f_mae)]).sum())},
           "classes": summarise(classes, natoms, e_err, f_mae, max_gamma),
           "by_gamma": by_gamma(e_err, max_gamma),
           "configurations": [{"index": i, "class": classes[i], "natoms": int(natoms[i]),
                               "vacuum_gap": vacuum_gap(c.cell, c.positions, c.pbc),
                               "E_error": None if np.isnan(e_err[i]) else float(e_err[i]),
                               "F_mae": None if np.isnan(f_mae[i]) else float(f_mae[i]),
                               "max_gamma": None if np.isnan(max_gamma[i]) else float(max_gamma[i])}
                              for i, c in enumerate(train)],
           "units": {"E": "eV/atom", "F": "eV/Å", "vacuum_gap": "Å", "rcut": "Å", "rest_rms_force": "eV/Å",
                     "max_gamma": "dimensionless (extrapolation grade; > 1 extrapolates)"},
           "timings_s": {"total_s": time.perf_counter() - t0}}
    out.write_text(json.dumps(jsonable(res), indent=1))
    log(f"zuo-{el}: CV E MAE {res['total']['E_mae'] * 1e3:.3f} meV/atom, F {res['total']['F_mae']:.4f} eV/Å; "
        + "; ".join(f"{c['class']}: {c['configurations']} configs, E {c['E_mae'] * 1e3:.2f} ({c['E_share']:.0%})"
                    for c in res["classes"]) + f" ({res['timings_s']['total_s']:.0f} s)")
    return res


def card_section(res: dict) -> list[str]:
    """The card's lines: CV error by kind of structure."""
    t = res["total"]
    L = ["## Where the cross-validation error comes from", "",
         f"`cv_breakdown.json` (`python -m tools.shipped_models.zuo_breakdown --data-dir DIR {res['element']}`): this "
         "card's settings (fit.yaml), 5-fold CV on the folds of `zuo_select`, every configuration held out once, "
         "grouped by kind (the Zuo data have no labels): surface slabs (a gap free of atoms wider than the cutoff, "
         f"{res['rcut']:g} Å, across the cell), bulk at rest (RMS force below {res['rest_rms_force']:g} eV/Å) and "
         "thermal bulk (the rest). E MAE counts each configuration once; F MAE is over force components. A held-out "
         "slab is predicted by a model fitted without it (the other folds' slabs, other facets or thicknesses, "
         "are in its training data).", "",
         "| kind | configurations | atoms | CV E MAE (meV/atom) | share of E MAE | CV F MAE (eV/Å) | share of F MAE |",
         "|---|---|---|---|---|---|---|"]
    g = res.get("by_gamma") is not None
    if g:
        L[-2] += " median max γ | configurations with max γ > 1 |"
        L[-1] += "---|---|"
    for c in res["classes"]:
        f = "–" if c["F_mae"] is None else f"{c['F_mae']:.4f}"
        fs = "–" if c["F_share"] is None else f"{c['F_share']:.0%}"
        L.append(f"| {c['class']} | {c['configurations']} | {c['atoms']} | {c['E_mae'] * 1e3:.2f} | "
                 f"{c['E_share']:.0%} | {f} | {fs} |"
                 + (f" {c['median_max_gamma']:.2f} | {c['above_1']} |" if g else ""))
    L.append(f"| all | {sum(c['configurations'] for c in res['classes'])} | {sum(c['atoms'] for c in res['classes'])} | "
             f"{t['E_mae'] * 1e3:.3f} | 100% | {t['F_mae']:.4f} | 100% |"
             + (f" – | {sum(c['above_1'] for c in res['classes'])} |" if g else ""))
    if g:
        L += ["", "Max γ: the largest extrapolation grade of a held-out configuration's atoms against the active set "
              "(MaxVol) of its fold's training atoms, what a user of a model fitted without it would see (γ ≤ 1 "
              "interpolates, 1-5 mild extrapolation, > 5 unreliable). CV E MAE of the held-out configurations by "
              "their max γ: " + "; ".join(
                  f"above {b['gamma']:g}: {b['above']}" + (f", {b['E_mae_above'] * 1e3:.2f} meV/atom" if b["above"] else "")
                  + (f" (the rest {b['E_mae_rest'] * 1e3:.2f})" if b["E_mae_rest"] is not None else "")
                  for b in res["by_gamma"]) + "."]
    L += ["", f"Targets (best published test MAE): E {res['targets']['E'] * 1e3:g} meV/atom, F {res['targets']['F']:g} "
          "eV/Å. The totals differ slightly from the card's fold means (here every configuration counts once)."]
    return L


def main(argv=None):
    ap = elements_parser("zuo_breakdown", __doc__)
    ap.add_argument("--gamma", action="store_true",
                    help="also each held-out configuration's max γ against its fold's active set (MaxVol over "
                         "the other folds' atoms: minutes per fold)")
    args = ap.parse_args(argv)
    data_dir = data_dir_of(ap, args)
    for el in args.elements:
        run(el, data_dir, args.threads, MODELS / f"zuo-{el}" / "cv_breakdown.json", args.gamma)


if __name__ == "__main__":
    main()
