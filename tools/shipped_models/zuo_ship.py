"""Ship what the nested cross-validation says: the upstream recipe where the selection procedure does
not beat it; a further grid's choice where its nested CV (nested_cv_<grid>.json: the force screen's
weighted lead family, the fast or the sparse grid, in that order) beats the recipe.

    python -m tools.shipped_models.zuo_ship --data-dir DIR Cu [Mo ...]

(from the repository root; DIR holds ZuoEtAl2020/<El>_train.xyz, default $ACESERVER_DATA; the Zuo test
splits are never read). Reads the verdict of models/zuo-<El>/nested_cv.json (``zuo_nested``). Where it
is "recipe", writes models/zuo-<El>/fit.yaml with the upstream recipe stored there (ACEpotentials.jl
``examples/zuobench/error_table.jl``, "lge": order 3, totaldegree [25,21,17], rcut 2.5 bond lengths,
E0 = 0, weights E 30 / F 1 / V 1, algebraic prior p = 4, BLR) with a 10-member committee and seed 0,
and fits it on the whole training split with `aceserver fit`'s code path: the model file, report.json,
the parity plots and the active set (`<name>.activeset.npz`); then rewrites the card
(``zuo_cards``). Where the verdict is "selected", the model of ``zuo_select`` stays and nothing is
written. The earlier selection's selection.json and study.json stay as history: the card cites them.
"""
from __future__ import annotations

import io
import json
import time
from contextlib import redirect_stdout
from pathlib import Path

import numpy as np
import yaml

from aceserver.fitting import config as fconfig
from aceserver.fitting import selection
from aceserver.fitting.fit_model import jsonable
from aceserver.fitting.workflow import run_fit
from aceserver.loading import load_model

from .common import MODELS, same, time_alternating
from .zuo_cards import GRID_WORDS, LEAD_GRIDS, write_card
from .zuo_nested import GRIDS, RECIPE_FACTOR, chooser, deciding_file
from .zuo_recipe import elements_parser, K, TARGETS, data_dir_of, force_groups, parse_basis, rcut_of, training_split
from .zuo_select import Assembled, log, write_fit_yaml


# further nested grids whose winner ships where their verdict is "selected", in the order they are looked at
FURTHER_GRIDS = LEAD_GRIDS + ("fast", "sparse")


def final_selection(el: str, data_dir: Path, nsp: dict) -> dict:
    """A further grid's procedure on the whole training split: 5-fold CV of every candidate of its
    nested_cv_<grid>.json on the same folds (its cutoff, basis keywords and force groups), the same
    rule; returns {"chosen", "results", "timings_s"}."""
    _, train, folds, always = training_split(el, data_dir)
    grid = GRIDS[nsp["grid"]]
    if "force_betas" in grid:
        force_groups(train)
    timings: dict = {}
    a = Assembled(el, train, grid["chain"], grid.get("rcut", RECIPE_FACTOR), folds, always, 1, timings, "final",
                  basis_kw=grid.get("basis_kw"))
    t0 = time.perf_counter()
    results = selection.cross_validate(a.factors, list(range(K)), [K], nsp["candidates"], a.labels, a.sizes, log=log)
    timings["cv_s"] = time.perf_counter() - t0
    return {"chosen": chooser(TARGETS[el])(results)["candidate"], "results": results, "timings_s": timings}


def ship_further(el: str, data_dir: Path, f_nsp: Path, threads: int | None = None) -> dict | None:
    """Where a further grid's verdict (nested_cv_<grid>.json) is "selected": run its procedure on the
    whole training split (:func:`final_selection`), fit the winner with a 10-member committee (an ASP
    winner: its support refitted by BLR) through `aceserver fit`'s code path, and time the new model
    against the recipe model it replaces, alternately in one run. A winner slower than the grid's
    ``max_time_ratio`` to the recipe (default 1: the sparse grids; the grid's speed run) is not shipped."""
    d = MODELS / f"zuo-{el}"
    nsp = json.loads(f_nsp.read_text())
    t0 = time.perf_counter()
    if "final_selection" not in nsp:     # (a stopped ship run's is kept: zuo_nested rewrites the file without it)
        nsp["final_selection"] = final_selection(el, data_dir, nsp)
        f_nsp.write_text(json.dumps(jsonable(nsp), indent=1))
    chosen = nsp["final_selection"]["chosen"]
    log(f"zuo-{el}: the {nsp['grid']} grid's procedure on the whole training split chose {chosen}")
    sol = chosen["solver"]
    speed = next(m for m in nsp["speed"]["models"] if m["basis"] == chosen["basis"]
                 and same(m["solver"], sol if sol["name"] != "blr" else "blr"))
    if speed["ratio_to_recipe"] > GRIDS[nsp["grid"]].get("max_time_ratio", 1.0):
        nsp["final_selection"]["refused"] = f"{speed['ratio_to_recipe']:.2f} x the recipe's time"
        f_nsp.write_text(json.dumps(jsonable(nsp), indent=1))
        log(f"zuo-{el}: not shipped: {speed['ratio_to_recipe']:.2f} x the recipe's time; the recipe stays")
        return None
    old_raw = yaml.safe_load((d / "fit.yaml").read_text())
    previous = load_model(d / old_raw["output"]["model"], active_set=False)
    solver = dict(sol, committee_size=10) if sol["name"] == "asp" else {"name": "blr", "committee_size": 10}
    words = GRID_WORDS[nsp["grid"]]
    write_fit_yaml(el, parse_basis(chosen["basis"]), rcut_of(el, chosen["rcut_bond_lengths"]), chosen, solver=solver,
                   why=[f"chosen by the selection over {words}, shipped because nested",
                        "cross-validation found that procedure better than the upstream recipe on both E and F",
                        f"(`python -m tools.shipped_models.zuo_nested --data-dir DIR {el} --grid {nsp['grid']}"
                        + (f" --seed {nsp['seed']}" if nsp.get("seed", 0) else "") + "`; verdict",
                        f"and the final selection in {f_nsp.name}; "
                        f"`python -m tools.shipped_models.zuo_ship --data-dir DIR {el}` writes this file and the model)."],
                   chosen_by=f"chosen by nested-CV-validated selection over {words}")
    report = _fit(el, d, data_dir, threads)
    model = load_model(d / old_raw["output"]["model"], active_set=False)
    structure, (t_new, t_old) = time_alternating(el, [model, previous], rounds=9)
    nsp["ship_speed"] = {"structure": structure, "rounds": 9, "calls": 10, "threads": 1,
                         "us_per_atom": {"shipped": t_new, "recipe": t_old}, "ratio_to_recipe": t_new / t_old,
                         "n_active": int(np.count_nonzero(model.parameters))}
    nsp["timings_s"]["ship_s"] = time.perf_counter() - t0
    f_nsp.write_text(json.dumps(jsonable(nsp), indent=1))
    log(f"zuo-{el}: shipped model {t_new:.1f} µs/atom, recipe {t_old:.1f} ({t_new / t_old:.2f} x)")
    write_card(el)
    return report


def _fit(el: str, d: Path, data_dir: Path, threads) -> dict:
    """Fit models/zuo-<El>/fit.yaml with `aceserver fit`'s code path; write report.json."""
    cfg = fconfig.load_config(d / "fit.yaml", data_dir=data_dir)
    t0 = time.perf_counter()
    buf = io.StringIO()
    with redirect_stdout(buf):
        model, report = run_fit(cfg, threads=threads, progress=False)
    print(buf.getvalue(), flush=True)
    cfg.output_report.write_text(json.dumps(report, indent=2))
    log(f"zuo-{el}: fitted ({model.length_basis} functions) in {time.perf_counter() - t0:.0f} s")
    return report


def ship(el: str, data_dir: Path, threads: int | None = None) -> dict | None:
    d = MODELS / f"zuo-{el}"
    for f_nsp in (deciding_file(d, g) for g in FURTHER_GRIDS):
        nsp = json.loads(f_nsp.read_text()) if f_nsp.is_file() else {}
        if nsp.get("ship") == "selected" and not nsp.get("final_selection", {}).get("refused"):
            return ship_further(el, data_dir, f_nsp, threads)
    nst = json.loads((d / "nested_cv.json").read_text())
    if nst["ship"] != "recipe":
        log(f"zuo-{el}: nested CV verdict {nst['ship']!r}; the zuo_select model stays")
        return None
    rec = nst["recipe"]
    basis = parse_basis(rec["basis"])
    write_fit_yaml(el, basis, rcut_of(el, rec["rcut_bond_lengths"]), rec,
                   why=["the upstream recipe (ACEpotentials.jl examples/zuobench/error_table.jl, \"lge\"),",
                        "shipped because nested cross-validation did not find the selection procedure better",
                        f"(`python -m tools.shipped_models.zuo_nested --data-dir DIR {el}`; verdict in nested_cv.json;",
                        f"`python -m tools.shipped_models.zuo_ship --data-dir DIR {el}` writes this file and the model)."],
                   chosen_by="the upstream recipe (ACEpotentials.jl zuobench), shipped on the nested-CV verdict")
    report = _fit(el, d, data_dir, threads)
    write_card(el)
    return report


def main(argv=None):
    ap = elements_parser("zuo_ship", __doc__)
    args = ap.parse_args(argv)
    data_dir = data_dir_of(ap, args)
    for el in args.elements:
        ship(el, data_dir, args.threads)


if __name__ == "__main__":
    main()
