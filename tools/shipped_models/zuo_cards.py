"""Cards and study plots of the zuo-<El> models from their stored results (no fitting).

    python -m tools.shipped_models.zuo_cards [Si Cu ...]     # default: all six, and the tables of models/README.md

Reads models/zuo-<El>/{fit.yaml, report.json, <model>.json, selection.json, study.json, nested_cv.json}
and writes README.md (the card) and, where study.json exists, plots/cv_basis_size.png and
plots/cv_learning_curve.png, and where nested_cv.json holds a speed run, plots/cv_accuracy_speed.png
(with the sparse candidates of sparse_cv.json, ``zuo_sparse``, where there is one);
then fills the CV summary and the study summary into models/README.md (between their markers).
A card describes the model its fit.yaml holds: the upstream recipe of nested_cv.json (fitted by
``zuo_ship``: why it was shipped, both nested-CV estimates, its 5-fold CV, the earlier selection as
history) or ``zuo_select``'s choice.
"""
from __future__ import annotations

import argparse
import hashlib
import json
import re
from pathlib import Path

import numpy as np
import yaml

from aceserver.fitting import selection
from aceserver.fitting.workflow import sha256_file
from aceserver.loading import load_model

from .common import MODELS, active_set_line, error_rows, same
from .zuo_breakdown import card_section as breakdown_section
from .zuo_nested import deciding_file, fresh_runs
from .zuo_recipe import TARGETS, parse_basis, rcut_of, score
from .zuo_variants import card_section as variants_section
from .zuo_variants import designed_after
from .zuo_weights import card_section as weights_section


def _score(r, targets):
    """Score against the targets stored in selection.json (``{"E": eV/atom, "F": eV/Å}``)."""
    return score(r, (targets["E"], targets["F"]))


def prior_name(pr: dict) -> str:
    """A prior spec in a few characters: 'alg p 4', 'exp wl 2 wn 3'."""
    short = {"algebraic": "alg", "exponential": "exp", "gaussian": "gauss"}
    return " ".join([short.get(pr["name"], pr["name"])] + [f"{k} {v:g}" for k, v in pr.items() if k != "name"])


def _cand_row(r, targets, mark=""):
    c = r["candidate"]
    m, se = _score(r, targets)
    return (f"| {r['n_basis']}{mark} | {c['basis'].replace('order ', '').replace(', totaldegree ', ' ')} | "
            f"{c.get('rcut_bond_lengths', 2.5):g} | "
            f"{prior_name(c['prior'])} | {c['weights']['default']['E']:g} | {list(c['E0'].values())[0]:g} | "
            f"{r['mae_mean']['E'] * 1e3:.3f} ± {r['mae_std']['E'] * 1e3:.3f} | "
            f"{r['mae_mean']['F']:.4f} ± {r['mae_std']['F']:.4f} | {m:.3f} ± {se:.3f} |")


HEAD = ("| basis functions | order, totaldegree | rcut (bond lengths) | prior | w_E | E0 (eV) | CV E MAE (meV/atom) | "
        "CV F MAE (eV/Å) | score ± SE |", "|---|---|---|---|---|---|---|---|---|")


def basis_curve(sel: dict, study: dict) -> list[dict]:
    """CV results of the study's prior and weights with the chosen E0, one per basis (smallest first)."""
    E0 = sel["chosen"]["E0"]
    rows = [r for r in sel["results"] + sel.get("extra_results", []) if same(r["candidate"]["prior"], study["basis_curve"]["prior"])
            and same(r["candidate"]["weights"], study["basis_curve"]["weights"]) and same(r["candidate"]["E0"], E0)]
    return sorted(rows, key=lambda r: r["n_basis"])


def study_plots(el: str, sel: dict, study: dict) -> list[str]:
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    d = MODELS / f"zuo-{el}" / "plots"
    d.mkdir(exist_ok=True)
    t = sel["targets"]
    out = []
    for name, rows, x, xlabel in (
            ("cv_basis_size.png", basis_curve(sel, study), lambda r: r["n_basis"], "basis functions"),
            ("cv_learning_curve.png", study["learning_curve"], lambda r: r["n_train_configs"],
             "training configurations (mean over folds)")):
        fig, axes = plt.subplots(1, 2, figsize=(9, 3.6))
        for ax, k, scale, unit, tgt in ((axes[0], "E", 1e3, "meV/atom", t["E"] * 1e3), (axes[1], "F", 1.0, "eV/Å", t["F"])):
            xs = [x(r) for r in rows]
            ax.errorbar(xs, [r["mae_mean"][k] * scale for r in rows], yerr=[r["mae_std"][k] * scale for r in rows],
                        marker="o", capsize=3, label="5-fold CV MAE (mean ± sd over folds)")
            ax.axhline(tgt, color="k", ls="--", lw=1, label="target (best published test MAE)")
            ax.set_xscale("log")
            ax.set_xlabel(xlabel)
            ax.set_ylabel(f"{k} MAE ({unit})")
        axes[0].legend(fontsize=7)
        fig.suptitle(f"zuo-{el}: " + ("CV error against basis size" if "basis" in name else "learning curve"))
        fig.tight_layout()
        fig.savefig(d / name, dpi=110)
        plt.close(fig)
        out.append(f"plots/{name}")
    return out


def is_recipe(el: str, raw: dict, nst: dict | None) -> bool:
    """Whether fit.yaml holds the upstream recipe of nested_cv.json (the model ``zuo_ship`` fits)."""
    if nst is None:
        return False
    rec = nst["recipe"]
    o, td = parse_basis(rec["basis"])
    m = raw["model"]
    return (m["order"] == o and list(m["totaldegree"]) == td and abs(m["rcut"] - rcut_of(el, rec["rcut_bond_lengths"])) < 1e-9
            and same(raw["prior"], rec["prior"]) and same(raw["weights"], rec["weights"]) and same(raw["E0"], rec["E0"])
            and raw["solver"]["name"] == "blr")


def is_sparse_choice(el: str, raw: dict, nsp: dict | None) -> bool:
    """Whether fit.yaml holds the final choice of a further grid's procedure (nested_cv_<grid>.json:
    its basis, cutoff, basis keywords, prior, weights, E0 and solver)."""
    if nsp is None or "final_selection" not in nsp:
        return False
    c = nsp["final_selection"]["chosen"]
    o, td = parse_basis(c["basis"])
    m = raw["model"]
    kw = {k: v for k, v in m.items() if k not in ("elements", "order", "totaldegree", "rcut")}
    sol = {k: v for k, v in raw["solver"].items() if k != "committee_size"}
    return (m["order"] == o and list(m["totaldegree"]) == td and same(raw["prior"], c["prior"])
            and abs(m["rcut"] - rcut_of(el, c.get("rcut_bond_lengths", 2.5))) < 1e-9 and same(kw, c.get("basis_kw", {}))
            and same(raw["weights"], c["weights"]) and same(raw["E0"], c["E0"])
            and same(sol, c["solver"] if c["solver"]["name"] != "blr" else {"name": "blr"}))


GRID_WORDS = {"sparse": "sparse (ASP) and larger candidates",
              "fast": "the sparse and larger candidates no slower than the recipe",
              "transform_large_weighted": "the force screen's lead family (many-body transform Agnesi (2, 6), rcut "
                                          "2.25 bond lengths, order-4 bases) with force-magnitude weights",
              "transform_smooth": "the force screen's lead (order 4, 2140 functions, many-body transform Agnesi "
                                  "(2, 6), rcut 2.25 bond lengths, force-magnitude weights β 0.5) with smoother priors"}
LEAD_GRIDS = ("transform_large_weighted", "transform_smooth")     # nested CVs of the screens' leads (their sections: the screens')


def _grid_verdict(x: dict) -> str:
    """A sentence on a further nested CV (``sparse`` or ``fast`` grid) where the recipe ships."""
    c, fs = x["comparison"], x.get("final_selection", {})
    gain = (f"paired gain E {c['E']['mean_gain'] * 1e3:.3f} ± {c['E']['se'] * 1e3:.3f} meV/atom, "
            f"F {c['F']['mean_gain']:.5f} ± {c['F']['se']:.5f} eV/Å")
    head = (f" The selection over {GRID_WORDS[x['grid']]} (`{x['grid']}` grid, section below"
            + (f"; judged on fresh outer folds, seed {x['seed']}" if x.get("seed", 0) else "") + ")")
    if not c["procedure_wins"]:
        return f"{head} did not beat the recipe on both either ({gain})."
    if fs.get("refused"):
        return (f"{head} did beat the recipe ({gain}), but its choice on the whole training split is "
                f"{fs['refused']}, and shipped models are no slower than the recipe, so the recipe stays.")
    return f"{head} did beat the recipe ({gain}); its model has not been fitted and shipped yet."


def sparse_choice_head(el: str, nst: dict, nsp: dict, t: dict) -> list[str]:
    """The card's opening where the sparse grid's procedure is shipped: why, both nested estimates,
    the final 5-fold CV of the choice and its speed against the recipe it replaced."""
    c, fs = nsp["comparison"], nsp["final_selection"]
    seed = nsp.get("seed", 0)
    f_first = MODELS / f"zuo-{el}" / f"nested_cv_{nsp['grid']}.json"
    first = json.loads(f_first.read_text()) if seed and f_first.is_file() else None
    fresh = (f" on fresh outer folds (seed {seed}; {designed_after(el, nsp['grid'])}, so, as fixed before this "
             "run, these folds decide)" if seed else " on the same outer folds")
    ch = fs["chosen"]
    res = next(r for r in fs["results"] if same(r["candidate"], ch))
    sp = nsp["ship_speed"]
    extra = (f", rcut {ch['rcut_bond_lengths']:g} bond lengths"
             + (f", many-body transform {tuple(ch['basis_kw']['transform'])}" if "transform" in ch.get("basis_kw", {}) else "")
             + (", force rows weighted per RMS-force quartile (β 0.5, `data.force_groups: 4`)" if "rms0" in ch["weights"]
                else ""))
    return [f"## Why this model: nested-CV-validated selection over {GRID_WORDS[nsp['grid']]}", "",
            f"This model is the choice of the selection over the `{nsp['grid']}` grid of `zuo_nested` ({nsp['n_candidates']} "
            f"candidates, section below) run on the whole training split: {ch['basis']}{extra}, {_solver_name(ch)}, "
            f"{prior_name(ch['prior'])}, w_E {ch['weights']['default']['E']:g}, E0 {ch['E0'][el]:g} eV. Nested "
            "cross-validation estimated the error of that procedure and compared it, fold by fold, with the "
            f"upstream recipe{fresh}: it beat the recipe by more than the folds' noise on both "
            f"energy and forces (paired gain E {c['E']['mean_gain'] * 1e3:.3f} ± {c['E']['se'] * 1e3:.3f} meV/atom, "
            f"F {c['F']['mean_gain']:.5f} ± {c['F']['se']:.5f} eV/Å, mean ± standard error; the rule asks for a "
            "gain above one standard error on both), so it is shipped." + other_fresh_runs(el, nsp), "",
            "| nested CV, outer folds | E MAE (meV/atom, mean ± sd) | F MAE (eV/Å, mean ± sd) |", "|---|---|---|",
            *[f"| {name} | {x['mae_mean']['E'] * 1e3:.3f} ± {x['mae_std']['E'] * 1e3:.3f} | "
              f"{x['mae_mean']['F']:.4f} ± {x['mae_std']['F']:.4f} |"
              for name, x in ((f"selection procedure, `{nsp['grid']}` grid (this model's)" + (f", seed {seed} folds" if seed else ""),
                               nsp["procedure"]),
                              ("upstream recipe" + (f", seed {seed} folds" if seed else ""), nsp["recipe_estimate"]))
              + (((f"selection procedure, `{nsp['grid']}` grid, seed 0 folds", first["procedure"]),
                  ("upstream recipe, seed 0 folds", first["recipe_estimate"])) if first else ())
              + ((f"selection procedure, small grid{', seed 0 folds' if seed else ''}", nst["procedure"]),)],
            f"| target (best published test MAE) | {t['E'] * 1e3:g} | {t['F']:g} |", "",
            f"Speed: {sp['us_per_atom']['shipped']:.1f} µs/atom against {sp['us_per_atom']['recipe']:.1f} for the "
            f"recipe model it replaced ({sp['ratio_to_recipe']:.2f} ×; {sp['n_active']} nonzero parameters; energy + "
            f"forces + virial on {sp['structure']}, one thread, both fitted models timed alternately in one run, "
            f"medians of {sp['rounds']} rounds).", "",
            "## Cross-validated error against the targets", "",
            "5-fold CV of this model's settings on the folds of `zuo_select` (the final selection's own score, "
            "optimistic as any score that chooses; the nested estimate above is the one to trust):", "",
            *cv_table(res, t),
            "These are estimates from the training split; the Zuo test split was not read.", ""]


def _family(chosen: dict) -> str:
    """What a chosen candidate's model is, apart from w_E and E0 (basis, cutoff, transform, prior, weights kind)."""
    return json.dumps([chosen["basis"], chosen["rcut_bond_lengths"], chosen.get("basis_kw", {}), chosen["prior"],
                       "rms0" in chosen["weights"]], sort_keys=True)


def other_fresh_runs(el: str, nsp: dict) -> str:
    """Sentences on the other lead grids' runs on fresh outer folds, where there are any: their
    verdicts, and where every outer fold of them and of ``nsp`` chose the same family of model
    (`_family`), the paired gains over all their outer folds together."""
    d = MODELS / f"zuo-{el}"
    runs = [x for g in LEAD_GRIDS if g != nsp["grid"] for x in (json.loads(f.read_text()) for f in fresh_runs(d, g))]
    if not runs:
        return ""
    out = " Other lead grids judged on other fresh folds: " + "; ".join(
        f"`{x['grid']}` (seed {x['seed']}): " + ("beat" if x["comparison"]["procedure_wins"] else "did not beat")
        + f" the recipe on both (E {x['comparison']['E']['mean_gain'] * 1e3:.3f} ± {x['comparison']['E']['se'] * 1e3:.3f} "
        f"meV/atom, F {x['comparison']['F']['mean_gain']:.5f} ± {x['comparison']['F']['se']:.5f} eV/Å)" for x in runs) + "."
    every = runs + [nsp]
    if len({_family(o["chosen"]) for x in every for o in x["outer"]}) == 1:
        gains = {k: np.concatenate([x["comparison"][k]["per_fold_gain"] for x in every]) for k in ("E", "F")}
        se = {k: v.std(ddof=1) / np.sqrt(len(v)) for k, v in gains.items()}
        out += (f" Every outer fold of those runs and of this one chose the same model family (w_E and E0 apart), so "
                f"their {len(gains['E'])} outer folds together measure it once more: paired gain E "
                f"{gains['E'].mean() * 1e3:.3f} ± {se['E'] * 1e3:.3f} meV/atom, F {gains['F'].mean():.5f} ± "
                f"{se['F']:.5f} eV/Å (mean ± standard error), "
                + ("above" if all(gains[k].mean() > se[k] for k in se) else "not above")
                + " one standard error on both.")
    return out


def cv_table(r: dict, t: dict) -> list[str]:
    """CV MAE (mean ± sd over folds) against the targets, and the per-fold MAE."""
    verdict = lambda x, tg: "at or below" if x <= tg else "above"  # noqa: E731
    E, F = r["mae_mean"]["E"], r["mae_mean"]["F"]
    return ["| | CV MAE (mean ± sd over folds) | target (best published test MAE) | |", "|---|---|---|---|",
            f"| energy | {E * 1e3:.3f} ± {r['mae_std']['E'] * 1e3:.3f} meV/atom | {t['E'] * 1e3:g} meV/atom | "
            f"{verdict(E, t['E'])} |",
            f"| forces | {F:.4f} ± {r['mae_std']['F']:.4f} eV/Å | {t['F']:g} eV/Å | {verdict(F, t['F'])} |", "",
            "Per fold (E meV/atom, F eV/Å): " + ", ".join(
                f"({f['mae']['E'] * 1e3:.3f}, {f['mae']['F']:.4f})" for f in r["folds"]) + "."]


def cand_desc(c: dict, el: str) -> str:
    return (f"{c['basis']}, rcut {c['rcut_bond_lengths']:g} bond lengths, {prior_name(c['prior'])}, "
            f"w_E {c['weights']['default']['E']:g}, E0 {c['E0'][el]:g}")


def further_grids(d: Path) -> list[dict]:
    """The finished nested CVs that decide the further grids (sparse, fast and the screens' lead grids:
    a run on fresh outer folds where there is one, `zuo_nested.deciding_file`)."""
    files = (deciding_file(d, g) for g in ("sparse", "fast") + LEAD_GRIDS)
    return [x for x in (json.loads(f.read_text()) for f in files if f.exists()) if "procedure" in x]


def write_card(el: str):
    d = MODELS / f"zuo-{el}"
    raw = yaml.safe_load((d / "fit.yaml").read_text())
    report = json.loads((d / "report.json").read_text())
    sel = json.loads((d / "selection.json").read_text())
    nst = json.loads((d / "nested_cv.json").read_text()) if (d / "nested_cv.json").exists() else None
    nsps = [json.loads((d / f"nested_cv_{g}.json").read_text()) for g in ("sparse", "fast")
            if (d / f"nested_cv_{g}.json").exists()]
    nsp = nsps[-1] if nsps else None       # the last grid run (fast: the sparse grid's candidates that may ship)
    recipe = is_recipe(el, raw, nst)
    leads = [x for x in further_grids(d) if x["grid"] in LEAD_GRIDS]     # their sections: the screens'
    model_file = d / raw["output"]["model"]
    meta = load_model(model_file).metadata.get("fit", {})
    t = sel["targets"]
    res = sel["results"]
    chosen = next(r for r in res if same(r["candidate"], sel["chosen"]))
    best = next(r for r in res if same(r["candidate"], sel["best"]))
    cm, cse = _score(chosen, t)
    bm, bse = _score(best, t)
    tm = sel["timings_s"]
    folds_line = (f"5-fold cross-validation over the {sum(sel['fold_sizes'])} configurations of the training split "
                  f"(folds of {sel['fold_sizes']} configurations, seed {sel['seed']})")
    L = [f"# zuo-{el}", "", raw.get("description", ""), ""]
    sparse_choice = any(is_sparse_choice(el, raw, x) for x in further_grids(d))
    nsp = next((x for x in further_grids(d) if is_sparse_choice(el, raw, x)), nsp)
    if sparse_choice:
        L += sparse_choice_head(el, nst, nsp, t)
    elif recipe:
        c = nst["comparison"]
        L += ["## Why this model: the upstream recipe", "",
              "This model is the upstream recipe (ACEpotentials.jl `examples/zuobench/error_table.jl`, \"lge\": "
              "order 3, totaldegree [25,21,17], rcut 2.5 bond lengths, E0 0, weights E 30 / F 1, algebraic prior "
              "p 4, BLR), not a model chosen by this project's selection. Nested cross-validation (section below) "
              "estimated the error of the procedure \"run the selection, ship its winner\" and compared it, fold "
              "by fold, with the recipe on the same outer folds: the procedure did not beat the recipe by more "
              "than the folds' noise on both energy and forces (paired gain of the procedure "
              f"E {c['E']['mean_gain'] * 1e3:.3f} ± {c['E']['se'] * 1e3:.3f} meV/atom, F {c['F']['mean_gain']:.5f} "
              f"± {c['F']['se']:.5f} eV/Å, mean ± standard error; the rule asks for a gain above one standard "
              "error on both), so the recipe is shipped."
              + "".join(_grid_verdict(x) for x in nsps + leads), "",
              "| nested CV, outer folds | E MAE (meV/atom, mean ± sd) | F MAE (eV/Å, mean ± sd) |", "|---|---|---|",
              *[f"| {name} | {s['mae_mean']['E'] * 1e3:.3f} ± {s['mae_std']['E'] * 1e3:.3f} | "
                f"{s['mae_mean']['F']:.4f} ± {s['mae_std']['F']:.4f} |"
                for name, s in (("selection procedure", nst["procedure"]),)
                + tuple((f"selection procedure, `{x['grid']}` grid", x["procedure"]) for x in nsps)
                + (("upstream recipe (this model)", nst["recipe_estimate"]),)
                + tuple(r for x in leads for r in (
                    (f"selection procedure, `{x['grid']}` grid" + (f", seed {x['seed']} folds" if x.get("seed", 0) else ""),
                     x["procedure"]),
                    ("upstream recipe (this model)" + (f", seed {x['seed']} folds" if x.get("seed", 0) else ""),
                     x["recipe_estimate"])))],
              f"| target (best published test MAE) | {t['E'] * 1e3:g} | {t['F']:g} |", "",
              "## Cross-validated error against the targets", "",
              f"{folds_line}, this model's settings. These are the nested CV's outer folds (the folds of "
              "`zuo_select`): the recipe makes no choice on them, so its outer estimate above is its plain "
              "5-fold CV:", "", *cv_table(nst["recipe_estimate"], t),
              "These are estimates from the training split; the Zuo test split was not read. Reproduce them with "
              f"`python -m tools.shipped_models.zuo_nested --data-dir DIR {el}` from the repository root.", ""]
    else:
        L += ["## Cross-validated error against the targets", "", f"{folds_line}, this model's settings:", "",
              *cv_table(chosen, t),
              "These are estimates from the training split; the Zuo test split was not read. Reproduce them "
              f"(and this model) with `python -m tools.shipped_models.zuo_select --data-dir DIR {el}` from the repository root.", ""]
    breakdown = d / "cv_breakdown.json"
    bd = json.loads(breakdown.read_text()) if breakdown.is_file() else None
    if bd is not None and bd["fit_yaml_sha256"] != sha256_file(d / "fit.yaml"):    # of other settings: left out
        bd = None
    if bd is not None:
        L += breakdown_section(bd) + [""]
    if nst is not None and "models" in nst.get("speed", {}) and not sparse_choice:
        L += speed_section(el, sel, nst, recipe)
    L += ["## Files", "",
          f"- model: `{model_file.name}` (sha256 of the file `{hashlib.sha256(model_file.read_bytes()).hexdigest()}`; "
          f"model identity `{report.get('sha256')}`)",
          *filter(None, [active_set_line(model_file)]),
          "- settings: `fit.yaml`; fit report: `report.json`"
          + ("; nested CV and speed: `nested_cv.json`" if nst is not None else "")
          + ("; history, the earlier selection of `zuo_select` that this recipe replaced: its CV results "
             "`selection.json`" if recipe else "; CV results of `zuo_select`: `selection.json`")
          + ("; its study: `study.json`" if (d / "study.json").exists() else "")
          + ("; CV error by kind of structure: `cv_breakdown.json`" if bd is not None else "") + "; plots: `plots/`", "",
          "## Data", ""]
    for x in meta.get("provenance", {}).get("data", []):
        L.append(f"- `{Path(x['file']).name}` sha256 `{x['sha256']}`")
    L += ["", "Origin: ACEData repository (github.com/ACEsuit/ACEData), `minibenchmarks/ZuoEtAl2020.tar.gz`, "
          "converted from Y. Zuo et al., J. Phys. Chem. A 124, 731 (2020), data of materialsvirtuallab/mlearn "
          "(BSD-3-Clause); training split only. Place it as `DIR/ZuoEtAl2020/"
          f"{el}_train.xyz` (see models/README.md).", "", "## Settings", "", "```yaml"]
    L += yaml.safe_dump({k: raw[k] for k in ("model", "E0", "weights", "prior", "solver", "seed") if k in raw},
                        sort_keys=False).rstrip().splitlines()
    s = report["solver"]
    if s.get("refit") == "blr":       # ASP, support refitted by BLR: the BLR numbers are the refit's
        s = dict(s["refit_info"], solver=f"asp ({s['n_active']} of {report['shape'][1]} functions) + blr",
                 committee_size=s.get("committee_size"))
    L += ["```", "", "## Fit on the whole training split", "",
          f"`{s.get('solver')}` on {report['shape'][0]} observations x {report['shape'][1]} parameters; "
          f"sigma0_sq {s.get('sigma0_sq', 0):.4g}, sigmae_sq {s.get('sigmae_sq', 0):.4g}, effective parameters "
          f"{s.get('effective_parameters', 0):.0f}, committee of {s.get('committee_size')}."
          + (f" Fitted by `zuo_ship` in {report['timings_s']['total_s'] / 60:.1f} min on the shared 2-core build "
             f"machine (assembly {report['timings_s']['assembly_s']:.0f} s, solve {report['timings_s']['solve_s']:.0f} s; "
             "the rest: error tables, the active set and the parity plots)." if recipe or sparse_choice else ""), "",
          "Training errors (in-sample; the CV numbers above are the estimate of generalisation):", ""]
    L += error_rows(report["errors"]["train"])
    if nst is not None:
        L += nested_section(el, nst, recipe, note=(
            f" This card's model is the choice of the selection over {GRID_WORDS[nsp['grid']]} ("
            + ("the screen of basis variants, below)." if nsp["grid"] in LEAD_GRIDS else "next section).")
            if sparse_choice else None))
    for x in nsps:
        L += sparse_nested_section(el, x)
    if (d / "variants_cv.json").exists():
        L += variants_section(el, json.loads((d / "variants_cv.json").read_text()))
    if (d / "weights_cv.json").exists():
        L += weights_section(el, json.loads((d / "weights_cv.json").read_text()))
    L += selection_section(el, d, sel, res, chosen, best, (cm, cse), (bm, bse), tm, t, recipe or sparse_choice,
                           "model" if sparse_choice else "recipe")
    L += ["", "## Reproduce", "", "From the repository root, with the data placed under DIR (or $ACESERVER_DATA):",
          "", "```bash", f"aceserver fit models/zuo-{el}/fit.yaml --data-dir DIR             # this model"]
    if sparse_choice:
        L += [f"python -m tools.shipped_models.zuo_nested --data-dir DIR {el} --grid {nsp['grid']}"
              + (f" --seed {nsp['seed']}" if nsp.get("seed", 0) else "") + "   # nested CV, the verdict",
              f"python -m tools.shipped_models.zuo_ship --data-dir DIR {el}     # final selection, fit.yaml, this model, speed",
              f"python -m tools.shipped_models.zuo_nested --data-dir DIR {el}   # the small grid's nested CV",
              f"python -m tools.shipped_models.zuo_select --data-dir DIR {el}   # the earlier selection (history)", "```", "",
              "`zuo_ship` writes `fit.yaml` and fits it with `aceserver fit`'s code path (model file, report, "
              "parity plots, active set).", ""]
    elif recipe:
        L += [f"python -m tools.shipped_models.zuo_nested --data-dir DIR {el}   # nested CV, the verdict and the speed",
              f"python -m tools.shipped_models.zuo_ship --data-dir DIR {el}     # fit.yaml and this model, on the verdict",
              f"python -m tools.shipped_models.zuo_select --data-dir DIR {el}   # the earlier selection (history)", "```", "",
              "`zuo_ship` writes `fit.yaml` and fits it with `aceserver fit`'s code path (model file, report, "
              "parity plots, active set).", ""]
    else:
        L += [f"python -m tools.shipped_models.zuo_select --data-dir DIR {el}   # the CV numbers, the selection and the model",
              "```", "",
              "`zuo_select` fits the final model from the selection's assembled columns (the chosen basis is a "
              "column subset of the largest one); `aceserver fit` assembles the chosen basis itself."
              + (" This model file was written by `aceserver fit` from `fit.yaml`: the selection run of "
                 "2026-12-03 mapped the columns of the largest basis of the chain (the one chosen here) to the "
                 "model in the wrong order (fixed in `selection.prefix_order`; `zuo_select` now checks the "
                 "written model against training energies). The CV numbers were not affected."
                 if chosen["n_basis"] == max(sel["bases"].values()) else ""), ""]
    (d / "README.md").write_text("\n".join(L))


def selection_section(el, d, sel, res, chosen, best, cs, bs, tm, t, recipe, replaced_by="recipe") -> list[str]:
    """The card's section on ``zuo_select``'s selection (selection.json, study.json): the model's own
    where it chose it, history where the recipe replaced it."""
    (cm, cse), (bm, bse) = cs, bs
    cuts = sel.get("cutoff_results", [])
    cut_rows = []
    for f in sel.get("cutoffs_bond_lengths", []):
        rs = [r for r in cuts if r["candidate"]["rcut_bond_lengths"] == f]
        if rs:
            b = min(rs, key=lambda r: _score(r, t)[0])
            m, se = _score(b, t)
            cut_rows.append(f"| {f:g}{' *' if f == sel['rcut_bond_lengths'] else ''} | {f * float(sel['rcut']) / sel['rcut_bond_lengths']:.3f} | "
                            f"{prior_name(b['candidate']['prior'])}, w_E {b['candidate']['weights']['default']['E']:g} | "
                            f"{b['mae_mean']['E'] * 1e3:.3f} ± {b['mae_std']['E'] * 1e3:.3f} | "
                            f"{b['mae_mean']['F']:.4f} ± {b['mae_std']['F']:.4f} | {m:.3f} ± {se:.3f} |")
    secs = {"assembly": sum(v for k, v in tm.items() if k.endswith("assembly_s")),
            "block factors": sum(v for k, v in tm.items() if k.endswith("block_qr_s"))}
    if recipe:
        L = ["", f"## History: the selection this {replaced_by} replaced", "",
             "Until the nested-CV verdict, this card's model was the choice of `zuo_select` (5-fold CV over "
             f"the grid below): {cand_desc(chosen['candidate'], el)} ({chosen['n_basis']} functions), CV E MAE "
             f"{chosen['mae_mean']['E'] * 1e3:.3f} ± {chosen['mae_std']['E'] * 1e3:.3f} meV/atom, F MAE "
             f"{chosen['mae_mean']['F']:.4f} ± {chosen['mae_std']['F']:.4f} eV/Å on the same 5 folds. Such a number "
             "is the best of many noisy scores on the folds that chose it, so it is optimistic; the nested CV "
             "above is the fair comparison. `selection.json` (and `study.json`) keep that selection's results; "
             "they no longer describe the shipped model.", ""]
    else:
        L = ["", "## Selection", ""]
    L += ["One recipe for all six Zuo elements (`tools/shipped_models/zuo_select.py`, details in its docstring and in "
          "models/README.md):", "",
          "- stage 0, cutoff: rcut ∈ {2.25, 2.5, 2.75} bond lengths (ace1 default 2.5), each on the order-3 "
          "totaldegree [24,20,16] basis with the whole stage-1 grid; the cutoff with the best mean score is kept;",
          "- at that cutoff, nested ace1 bases: order 3 with totaldegree [12,10,8], [16,12,10], [20,16,12], "
          "[24,20,16] and order 4 [24,20,16,12], [26,22,18,14]; the largest assembled once, smaller ones as "
          "leading column blocks;",
          "- stage 1 on the order-3 bases: prior (algebraic p ∈ {2, 4, 6}; exponential wl 2, wn 3) × energy "
          "weight w_E ∈ {3, 10, 30, 100, 300} (force weight 1) × E0 ∈ {0, mean energy per atom};",
          "- stage 2: the three best (prior, w_E) pairs of stage 1 (on the 827-function basis), both E0, on "
          "the order-4 bases. BLR throughout.", "",
          "Score: the worse of the two mean ratios, max(CV E MAE/E target, CV F MAE/F target), at most 1 "
          "exactly when both mean CV errors meet their targets (± its fold standard error). Rule (paired one "
          "standard error): the fewest basis functions among the kept cutoff's candidates whose mean excess "
          "over the best candidate, fold by fold, is within one standard error of that excess, for the "
          "energy ratio and for the force ratio; then the lowest "
          f"score. Best: {best['n_basis']} functions, score {bm:.3f} ± {bse:.3f}; chosen: "
          f"{chosen['n_basis']} functions, score {cm:.3f} ± {cse:.3f} (marked *).", ""]
    if cut_rows:
        L += ["Stage 0, the best candidate per cutoff (order 3 [24,20,16]; * kept):", "",
              "| rcut (bond lengths) | rcut (Å) | prior, w_E | CV E MAE (meV/atom) | CV F MAE (eV/Å) | score ± SE |",
              "|---|---|---|---|---|---|", *cut_rows, ""]
    L += [f"Time on this 2-core box, one element at a time: assembly {secs['assembly']:.0f} s (four assemblies), "
          f"block factors {secs['block factors']:.0f} s, stage 0 CV and assemblies {tm.get('stage0_s', 0):.0f} s, "
          f"stage 1 {tm.get('stage1_s', 0):.0f} s, stage 2 {tm.get('stage2_s', 0):.0f} s"
          + (f", study {tm['study_s']:.0f} s" if "study_s" in tm else "")
          + (f", final fit {tm['final_fit_s']:.0f} s; total {tm['total_s'] / 60:.1f} min" if "total_s" in tm else "")
          + f" ({len(res) + len([r for r in cuts if r['candidate']['rcut_bond_lengths'] != sel.get('rcut_bond_lengths')])} candidates).",
          "", "The 15 best candidates of the kept cutoff by mean score:", "", *HEAD]
    top = sorted(res, key=lambda r: _score(r, t)[0])[:15]
    if chosen not in top:
        top.append(chosen)
    L += [_cand_row(r, t, "*" if r is chosen else "") for r in top]
    if (d / "study.json").exists():
        study = json.loads((d / "study.json").read_text())
        plots = study_plots(el, sel, study)
        bc = study["basis_curve"]
        L += ["", "## Generalisation study" + (" (of the earlier selection)" if recipe else ""), "",
              f"CV error against basis size (prior {prior_name(bc['prior'])}, w_E {bc['weights']['default']['E']:g}: "
              f"the best pair of stage 1; E0 as chosen) — `{plots[0]}`:", "", *HEAD]
        L += [_cand_row(r, t) for r in basis_curve(sel, study)]
        L += ["", f"Learning curve (the chosen candidate; each fold's model fitted on 1/5 .. 5/5 of each "
              f"training fold, scored on the held-out fold) — `{plots[1]}`:", "",
              "| training configurations | CV E MAE (meV/atom) | CV F MAE (eV/Å) |", "|---|---|---|"]
        L += [f"| {r['n_train_configs']:.0f} | {r['mae_mean']['E'] * 1e3:.3f} ± {r['mae_std']['E'] * 1e3:.3f} | "
              f"{r['mae_mean']['F']:.4f} ± {r['mae_std']['F']:.4f} |" for r in study["learning_curve"]]
    return L


def _speed_key(basis: str, factor) -> tuple:
    return basis, round(float(factor), 6)


def _grid_results(sel: dict) -> list[dict]:
    """Every CV result of ``zuo_select`` once (the kept cutoff's stage-0 results are also in "results")."""
    kept = sel.get("rcut_bond_lengths")
    return sel["results"] + [r for r in sel.get("cutoff_results", []) if r["candidate"]["rcut_bond_lengths"] != kept]


def sparse_points(nst: dict, sparse: dict | None) -> list[tuple[str, dict, float]]:
    """(kind, CV result, µs/atom) of the sparse candidates of sparse_cv.json (``zuo_sparse``), their
    time the recipe's µs/atom of the speed run times their ratio to the dense recipe in their own run."""
    if not sparse:
        return []
    rec = next(m for m in nst["speed"]["models"] if "recipe" in m["roles"])
    ratio = sparse["speed"]["ratio_to_dense"]
    return [(r["candidate"]["solver"]["name"], r, rec["us_per_atom"] * ratio[str(r["candidate"]["solver"]["max_active"])])
            for r in sparse["results"] if str(r["candidate"]["solver"]["max_active"]) in ratio]


def nested_grid_points(nst: dict, nsps: list[dict]) -> list[tuple[str, dict, float]]:
    """("dense" or "asp", {"mae_mean": ...}, µs/atom) of each candidate of the nested sparse/fast grids
    (nested_cv_sparse.json, nested_cv_fast.json) other than the recipe's own basis with BLR: its inner-CV
    MAE averaged over the outer folds, its time the recipe's µs/atom of nested_cv.json's speed run times
    its ratio to the recipe in its grid's own run; a candidate in several grids once."""
    rec_us = next(m for m in nst["speed"]["models"] if "recipe" in m["roles"])["us_per_atom"]
    out, seen = [], set()
    for x in nsps:
        ratio = {}
        for m in x["speed"]["models"]:
            sol = m["solver"] if m["solver"] != "blr" else {"name": "blr"}
            ratio[(m["basis"], json.dumps(sol, sort_keys=True))] = m["ratio_to_recipe"]
        for i, c in enumerate(x["candidates"]):
            sol = c.get("solver") or {"name": "blr"}
            key = (c["basis"], json.dumps(sol if sol["name"] != "blr" else {"name": "blr"}, sort_keys=True))
            tag = json.dumps(c, sort_keys=True)
            if key not in ratio or tag in seen or (sol["name"] == "blr" and ratio[key] == 1.0):
                continue
            seen.add(tag)
            inner = [f["inner"][i]["mae_mean"] for f in x["outer"]]
            mae = {k: sum(v[k] for v in inner) / len(inner) for k in ("E", "F")}
            out.append(("asp" if sol["name"] == "asp" else "dense", {"mae_mean": mae}, rec_us * ratio[key]))
    return out


def accuracy_speed_plot(el: str, sel: dict, nst: dict, sparse: dict | None = None, nsps: list | None = None) -> str:
    """plots/cv_accuracy_speed.png: 5-fold CV MAE (E, F) of every candidate of the selection grid and of
    the recipe against the µs/atom of its basis and cutoff (nested_cv.json's speed run); the sparse
    candidates of sparse_cv.json and the candidates of the nested sparse/fast grids (``nsps``, their
    inner-CV MAE), each kind with its own marker."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    us = {_speed_key(m["basis"], m["rcut_bond_lengths"]): m["us_per_atom"] for m in nst["speed"]["models"]}
    t = sel["targets"]
    grid = [r for r in _grid_results(sel) if _speed_key(r["candidate"]["basis"], r["candidate"]["rcut_bond_lengths"]) in us]
    x = lambda r: us[_speed_key(r["candidate"]["basis"], r["candidate"]["rcut_bond_lengths"])]  # noqa: E731
    chosen = next(r for r in sel["results"] if same(r["candidate"], sel["chosen"]))
    rec = nst["recipe_estimate"]
    xr = us[_speed_key(nst["recipe"]["basis"], nst["recipe"]["rcut_bond_lengths"])]
    fig, axes = plt.subplots(1, 2, figsize=(9, 5.2))
    for ax, k, scale, unit, tgt in ((axes[0], "E", 1e3, "meV/atom", t["E"] * 1e3), (axes[1], "F", 1.0, "eV/Å", t["F"])):
        ax.scatter([x(r) for r in grid], [r["mae_mean"][k] * scale for r in grid], s=8, c="0.6",
                   label=f"zuo_select grid ({len(grid)} dense BLR candidates)")
        ax.errorbar([x(chosen)], [chosen["mae_mean"][k] * scale], yerr=[chosen["mae_std"][k] * scale], fmt="o",
                    color="tab:red", capsize=3, label="zuo_select's choice")
        ax.errorbar([xr], [rec["mae_mean"][k] * scale], yerr=[rec["mae_std"][k] * scale], fmt="s", color="k",
                    capsize=3, label="upstream recipe")
        for kind, mark, color in (("asp", "v", "tab:blue"), ("asp+blr", "^", "tab:green")):
            pts = [(x_, r) for k_, r, x_ in sparse_points(nst, sparse) if k_ == kind]
            if pts:
                ax.scatter([p[0] for p in pts], [p[1]["mae_mean"][k] * scale for p in pts], marker=mark, color=color,
                           label=f"sparse on the recipe basis: {'ASP' if kind == 'asp' else 'ASP support + BLR'}")
        for kind, mark, color, what in (("dense", "D", "tab:purple", "larger dense bases, BLR"),
                                        ("asp", "P", "tab:orange", "ASP support + BLR")):
            pts = [(x_, r) for k_, r, x_ in nested_grid_points(nst, nsps or []) if k_ == kind]
            if pts:
                ax.scatter([p[0] for p in pts], [p[1]["mae_mean"][k] * scale for p in pts], marker=mark, color=color,
                           s=22, label=f"nested grids: {what} (inner CV, mean over outer folds)")
        ax.axhline(tgt, color="k", ls="--", lw=1, label="target (best published test MAE)")
        ax.set_yscale("log")
        ax.set_xlabel(f"µs/atom (E+F+virial, {nst['speed']['structure']}, 1 thread)")
        ax.set_ylabel(f"5-fold CV {k} MAE ({unit})")
    fig.legend(*axes[0].get_legend_handles_labels(), loc="lower center", ncol=2, fontsize=7)   # below both panels
    fig.suptitle(f"zuo-{el}: cross-validated error against evaluation speed")
    fig.tight_layout(rect=(0, 0.22, 1, 1))
    d = MODELS / f"zuo-{el}" / "plots"
    d.mkdir(exist_ok=True)
    fig.savefig(d / "cv_accuracy_speed.png", dpi=110, bbox_inches="tight")
    plt.close(fig)
    return "plots/cv_accuracy_speed.png"


def speed_section(el: str, sel: dict, nst: dict, recipe: bool) -> list[str]:
    """The card's sections on speed: this model against the recipe (or against ``zuo_select``'s choice
    where the recipe is shipped), timed in one run, and the accuracy-versus-speed plot and table."""
    sp = nst["speed"]
    by_role = lambda role: [m for m in sp["models"] if role in m["roles"]]  # noqa: E731
    rec, sel_m = by_role("recipe")[0], by_role("selected")
    short = lambda m: f"{m['basis'].replace(', totaldegree', '')}, rcut {m['rcut_bond_lengths']:g} bl"  # noqa: E731
    rows = [("this model (the upstream recipe)" if recipe else "upstream recipe", rec)]
    if sel_m:
        rows.append(("`zuo_select`'s choice (the earlier model)" if recipe else "this model (`zuo_select`'s choice)", sel_m[0]))
    rows += [("chosen in a nested-CV outer fold", m) for m in by_role("nested") if "recipe" not in m["roles"]
             and "selected" not in m["roles"]]
    if not recipe:
        rows = rows[1:2] + rows[:1] + rows[2:]
    L = ["## Speed", "",
         f"Energy + forces + virial on {sp['structure']} (rattled), one numba thread, all parameters nonzero (as in a "
         f"BLR fit); every basis below and in the next table timed alternately in one run (medians of {sp['rounds']} "
         f"rounds of {sp['calls']} calls) on the shared 2-core build machine, so the ratios carry over better than "
         "the absolute times:", "",
         "| model | basis | functions | µs/atom | × recipe |", "|---|---|---|---|---|",
         *[f"| {name} | {short(m)} | {m['n_basis']} | {m['us_per_atom']:.1f} | {m['ratio_to_recipe']:.2f} |"
           for name, m in rows], ""]
    sp_file = MODELS / f"zuo-{el}" / "sparse_cv.json"
    sparse = json.loads(sp_file.read_text()) if sp_file.exists() else None
    nsps = [json.loads(f.read_text()) for f in (MODELS / f"zuo-{el}" / f"nested_cv_{g}.json" for g in ("sparse", "fast"))
            if f.exists()]
    plot = accuracy_speed_plot(el, sel, nst, sparse, nsps)
    t = sel["targets"]
    us = {_speed_key(m["basis"], m["rcut_bond_lengths"]): m for m in sp["models"]}
    groups: dict = {}
    for r in _grid_results(sel):
        groups.setdefault(_speed_key(r["candidate"]["basis"], r["candidate"]["rcut_bond_lengths"]), []).append(r)
    nsp_files = ", ".join(f"nested_cv_{x['grid']}.json" for x in nsps)
    L += ["## Accuracy against speed", "",
          f"`{plot}`: the 5-fold CV MAE of every candidate of `zuo_select`'s grid (selection.json) and of the "
          "upstream recipe (nested_cv.json) against the µs/atom of its basis and cutoff (the run above)"
          + (", and the sparse candidates on the recipe's basis (sparse_cv.json, next table)" if sparse else "")
          + (f"; and, with their own markers, the candidates of the nested {' and '.join(x['grid'] for x in nsps)} "
             f"grid{'s' if len(nsps) > 1 else ''} other than the recipe (ASP + BLR supports and larger dense bases; their inner-CV MAE averaged "
             "over the outer folds, their time the recipe's above times their ratio to the recipe in that grid's "
             f"own speed run; {nsp_files}, "
             "sections below)." if nsps else "." if sparse else
             ". All are dense BLR models; no sparse (ASP/ARD) candidate has been cross-validated for this element.")
          + " Per basis and cutoff, the best candidate by score:", "",
          "| basis | rcut (bl) | functions | µs/atom | × recipe | CV E MAE (meV/atom) | CV F MAE (eV/Å) | score ± SE |",
          "|---|---|---|---|---|---|---|---|"]
    for key in sorted(groups, key=lambda k: us[k]["us_per_atom"] if k in us else 0.0):
        if key not in us:
            continue
        b = min(groups[key], key=lambda r: _score(r, t)[0])
        m, se = _score(b, t)
        L.append(f"| {key[0].replace('order ', '').replace(', totaldegree ', ' ')} | {key[1]:g} | {us[key]['n_basis']} | "
                 f"{us[key]['us_per_atom']:.1f} | {us[key]['ratio_to_recipe']:.2f} | "
                 f"{b['mae_mean']['E'] * 1e3:.3f} ± {b['mae_std']['E'] * 1e3:.3f} | "
                 f"{b['mae_mean']['F']:.4f} ± {b['mae_std']['F']:.4f} | {m:.3f} ± {se:.3f} |")
    r = nst["recipe_estimate"]
    m, se = _score(r, t)
    L += [f"| recipe: {rec['basis'].replace('order ', '').replace(', totaldegree ', ' ')} | {rec['rcut_bond_lengths']:g} | "
          f"{rec['n_basis']} | {rec['us_per_atom']:.1f} | 1.00 | {r['mae_mean']['E'] * 1e3:.3f} ± {r['mae_std']['E'] * 1e3:.3f} | "
          f"{r['mae_mean']['F']:.4f} ± {r['mae_std']['F']:.4f} | {m:.3f} ± {se:.3f} |", ""]
    if sparse:
        sps = sparse["speed"]
        d = sparse["dense"]
        L += [f"Sparse candidates on the recipe's basis (`python -m tools.shipped_models.zuo_sparse --data-dir DIR {el}`): "
              "one lasso homotopy (ACEfit's ASP path) per fold on the recipe's prior-scaled system, the last knot with "
              "at most n active functions scored with its lasso coefficients (ASP) and with its support refitted by "
              "BLR (ASP + BLR); speed: the support of each n on the whole training split, timed against the dense "
              f"recipe alternately in one run ({sps['structure']}, one thread; the evaluator skips zero functions). "
              f"Dense recipe in that run: CV E {d['mae_mean']['E'] * 1e3:.3f} ± {d['mae_std']['E'] * 1e3:.3f} meV/atom, "
              f"F {d['mae_mean']['F']:.4f} ± {d['mae_std']['F']:.4f} eV/Å, {sps['us_per_atom']['dense']:.1f} µs/atom.", "",
              "| solver | at most n active | active (mean over folds) | × dense recipe time | CV E MAE (meV/atom) | "
              "CV F MAE (eV/Å) | paired gain over the dense recipe, E (meV/atom) / F (eV/Å) | score ± SE |",
              "|---|---|---|---|---|---|---|---|"]
        for kind, r, _ in sparse_points(nst, sparse):
            n = r["candidate"]["solver"]["max_active"]
            m, se = _score(r, t)
            g = selection.beats(r, d)
            L.append(f"| {'ASP' if kind == 'asp' else 'ASP + BLR'} | {n} | {r['n_active_mean']:.0f} | "
                     f"{sps['ratio_to_dense'][str(n)]:.2f} | {r['mae_mean']['E'] * 1e3:.3f} ± {r['mae_std']['E'] * 1e3:.3f} | "
                     f"{r['mae_mean']['F']:.4f} ± {r['mae_std']['F']:.4f} | {g['E']['mean_gain'] * 1e3:.3f} ± "
                     f"{g['E']['se'] * 1e3:.3f} / {g['F']['mean_gain']:.5f} ± {g['F']['se']:.5f} | {m:.3f} ± {se:.3f} |")
        L += ["", "Paired gain: the dense recipe's MAE minus the candidate's, fold by fold (mean ± standard error; "
              "positive: the sparse model is better). These candidates were scored on the folds that would choose "
              "among them, so the best of them is an optimistic pick; shipping one would take the nested CV "
              "(`zuo_nested`) with sparse candidates in its grid (`selection.BlockFactors` takes ASP and ARD "
              "candidates), which has not been run.", ""]
    return L


def nested_section(el: str, nst: dict, recipe: bool = False, note: str | None = None) -> list[str]:
    """The card's section on nested cross-validation (``zuo_nested``): the procedure's and the upstream
    recipe's outer-fold errors (mean ± sd), per fold, the paired comparison and the verdict."""
    p, r, c = nst["procedure"], nst["recipe_estimate"], nst["comparison"]
    row = lambda name, s: (f"| {name} | {s['mae_mean']['E'] * 1e3:.3f} ± {s['mae_std']['E'] * 1e3:.3f} | "  # noqa: E731
                           f"{s['mae_mean']['F']:.4f} ± {s['mae_std']['F']:.4f} |")
    L = ["", "## Nested cross-validation of the procedure", "",
         f"Outer folds: the same {nst['outer_folds']} folds; in each, a selection over the {nst['n_candidates']}-candidate "
         f"`{nst['grid']}` grid of `zuo_nested` (4-fold CV on the other folds, this card's rule) picks a model, "
         "refitted on the other folds and scored on the held-out one; the upstream recipe (order 3, "
         "totaldegree [25,21,17], rcut 2.5 bond lengths, E0 0, w_E 30, algebraic p 4, BLR) on the same folds. "
         "This grid is smaller than the selection of `zuo_select` (no cutoff stage).", "",
         "| | outer E MAE (meV/atom) | outer F MAE (eV/Å) |", "|---|---|---|",
         row("selection procedure", p), row("upstream recipe", r), "",
         "Per outer fold (procedure; recipe), E meV/atom, F eV/Å: " + "; ".join(
             f"({a['mae']['E'] * 1e3:.3f}, {a['mae']['F']:.4f}; {b['mae']['E'] * 1e3:.3f}, {b['mae']['F']:.4f})"
             for a, b in zip(p["folds"], r["folds"])) + ".",
         f"Paired gain of the procedure over the recipe: E {c['E']['mean_gain'] * 1e3:.3f} ± {c['E']['se'] * 1e3:.3f} "
         f"meV/atom, F {c['F']['mean_gain']:.5f} ± {c['F']['se']:.5f} eV/Å (mean ± standard error). Verdict by the "
         f"rule (gain above one standard error on both): ship the {'selected model' if c['procedure_wins'] else 'recipe'}."
         + (note if note else " This card's model is the recipe." if recipe else " This card's model is the one the full selection of "
            "`zuo_select` (with its cutoff stage) chose." if c["procedure_wins"] else
            " The model on this card is still the one the full selection (with its cutoff stage) chose; it has not "
            "been replaced by the recipe yet (`python -m tools.shipped_models.zuo_ship` does that)."),
         "Chosen per outer fold: " + "; ".join(
             f"{f['chosen']['basis']}, {prior_name(f['chosen']['prior'])}, w_E {f['chosen']['weights']['default']['E']:g}, "
             f"E0 {f['chosen']['E0'][el]:g}" for f in nst["outer"]) + ".",
         f"Run: `python -m tools.shipped_models.zuo_nested --data-dir DIR {el} --grid {nst['grid']}` "
         f"({nst['timings_s']['total_s'] / 60:.0f} min wall-clock, one thread, on the shared 2-core build machine)."]
    return L


def _solver_name(c: dict) -> str:
    sol = c.get("solver") or {"name": "blr"}
    if sol["name"] == "asp":
        return f"ASP ≤ {sol['max_active']} + BLR" if sol.get("refit") == "blr" else f"ASP ≤ {sol['max_active']}"
    return sol["name"].upper()


def sparse_nested_section(el: str, nsp: dict) -> list[str]:
    """The card's section on the nested CV with sparse and larger candidates (``zuo_nested --grid
    sparse``, nested_cv_sparse.json): both estimates, the verdict, each candidate's inner-CV error
    (mean over the outer folds) and its speed against the recipe, timed in one run."""
    p, r, c = nsp["procedure"], nsp["recipe_estimate"], nsp["comparison"]
    row = lambda name, s: (f"| {name} | {s['mae_mean']['E'] * 1e3:.3f} ± {s['mae_std']['E'] * 1e3:.3f} | "  # noqa: E731
                           f"{s['mae_mean']['F']:.4f} ± {s['mae_std']['F']:.4f} |")
    short = lambda b: b.replace("order ", "").replace(", totaldegree ", " ")  # noqa: E731
    sp = nsp["speed"]
    speed_of = {}
    for m in sp["models"]:
        key = (m["basis"], json.dumps(m["solver"] if m["solver"] != "blr" else {"name": "blr"}, sort_keys=True))
        speed_of[key] = m
    cands = nsp["candidates"]
    inner = [[f["inner"][i] for f in nsp["outer"]] for i in range(len(cands))]
    what = ("dense BLR on the recipe's basis and on two larger order-4 bases, with the recipe's settings and with "
            "the small grid's most chosen ones; and ASP (the lasso path on the fold's prior-scaled factors to at most "
            "n functions, ACEfit's active-set pursuit) with its support refitted by BLR, on the recipe's basis and on "
            "the largest one" if nsp["grid"] == "sparse" else
            "the candidates of the `sparse` grid that were no slower than the recipe in its speed run for Mo (so "
            "that the winner may ship; this element's own times are in the table below): dense BLR on the recipe's "
            "basis, ASP + BLR on it and on the 2140-function basis")
    L = ["", f"## Nested cross-validation with {GRID_WORDS[nsp['grid']]}", "",
         f"The same {nsp['outer_folds']} outer folds; in each, the selection runs over the {nsp['n_candidates']} "
         f"candidates of `zuo_nested`'s `{nsp['grid']}` grid (4-fold CV on the other folds, the same rule; the "
         f"simplest candidate is the one with the fewest nonzero functions): {what}.", "",
         "| | outer E MAE (meV/atom) | outer F MAE (eV/Å) |", "|---|---|---|",
         row(f"selection procedure (`{nsp['grid']}` grid)", p), row("upstream recipe", r), "",
         f"Paired gain of the procedure over the recipe: E {c['E']['mean_gain'] * 1e3:.3f} ± {c['E']['se'] * 1e3:.3f} "
         f"meV/atom, F {c['F']['mean_gain']:.5f} ± {c['F']['se']:.5f} eV/Å (mean ± standard error). Verdict by the "
         f"rule: ship the {'selected model' if c['procedure_wins'] else 'recipe'}.",
         "Chosen per outer fold: " + "; ".join(
             f"{short(f['chosen']['basis'])}, {_solver_name(f['chosen'])}, {prior_name(f['chosen']['prior'])}, "
             f"w_E {f['chosen']['weights']['default']['E']:g}, E0 {f['chosen']['E0'][el]:g}" for f in nsp["outer"]) + ".",
         "", "Each candidate: its inner-CV MAE averaged over the 5 outer folds (each inner CV on 4 folds; "
         "optimistic for the best of them, as any score that chooses), and its speed: energy + forces + virial on "
         f"{sp['structure']}, one thread, timed alternately with the recipe in one run (an ASP candidate: its "
         "support fitted on the whole training split, the evaluator skipping the zero functions).", "",
         "| basis | solver | prior | w_E | E0 (eV) | functions | × recipe time | inner-CV E MAE (meV/atom) | "
         "inner-CV F MAE (eV/Å) |", "|---|---|---|---|---|---|---|---|---|"]
    for cand, inn in zip(cands, inner):
        sol = cand.get("solver") or {"name": "blr"}
        m = speed_of.get((cand["basis"], json.dumps(sol if sol["name"] != "blr" else {"name": "blr"}, sort_keys=True)))
        E = sum(x["mae_mean"]["E"] for x in inn) / len(inn)
        F = sum(x["mae_mean"]["F"] for x in inn) / len(inn)
        speed = f"{m['n_active']} | {m['ratio_to_recipe']:.2f}" if m else "– | –"
        L.append(f"| {short(cand['basis'])} | {_solver_name(cand)} | {prior_name(cand['prior'])} | "
                 f"{cand['weights']['default']['E']:g} | {cand['E0'][el]:g} | {speed} | {E * 1e3:.3f} | {F:.4f} |")
    fs = nsp.get("final_selection")
    if fs:
        ch = fs["chosen"]
        r0 = next(x for x in fs["results"] if same(x["candidate"], ch))
        L += ["", f"The procedure on the whole training split (5-fold CV of the same candidates, `zuo_ship`) chose "
              f"{short(ch['basis'])}, {_solver_name(ch)}, {prior_name(ch['prior'])}, w_E {ch['weights']['default']['E']:g}, "
              f"E0 {ch['E0'][el]:g}: CV E {r0['mae_mean']['E'] * 1e3:.3f} ± {r0['mae_std']['E'] * 1e3:.3f} meV/atom, "
              f"F {r0['mae_mean']['F']:.4f} ± {r0['mae_std']['F']:.4f} eV/Å."
              + (f" It is {fs['refused']} (table above), so it is not shipped: shipped models are no slower than "
                 "the recipe." if fs.get("refused") else "")]
    L += ["", f"Run: `python -m tools.shipped_models.zuo_nested --data-dir DIR {el} --grid {nsp['grid']}` "
          f"({nsp['timings_s']['total_s'] / 60:.0f} min wall-clock, one thread"
          + (f", peak memory {nsp['peak_rss_mib'] / 1024:.1f} GiB" if nsp.get("peak_rss_mib") else "")
          + f", on the shared 2-core build machine); results in `nested_cv_{nsp['grid']}.json`."]
    return L


def readme_tables():
    """Fill the CV summary and the study summary into models/README.md (between their markers)."""
    rows = ["| model | shipped | basis | rcut (Å) | prior | w_E | E0 (eV) | CV E MAE (meV/atom) | E target | "
            "CV F MAE (eV/Å) | F target | targets met | time |", "|---|---|---|---|---|---|---|---|---|---|---|---|---|"]
    study = []
    total = 0.0
    for el in ("Ni", "Cu", "Li", "Mo", "Si", "Ge"):
        d = MODELS / f"zuo-{el}"
        if not (d / "selection.json").exists() or not (d / "report.json").exists():
            rows.append(f"| zuo-{el} | not refitted in this run | | | | | | | | | | | |")
            continue
        sel = json.loads((d / "selection.json").read_text())
        if "chosen" not in sel or "rcut" not in sel:
            rows.append(f"| zuo-{el} | selection incomplete | | | | | | | | | | | |")
            continue
        t = sel["targets"]
        r = sel_r = next(x for x in sel["results"] if same(x["candidate"], sel["chosen"]))
        raw = yaml.safe_load((d / "fit.yaml").read_text())
        nst = json.loads((d / "nested_cv.json").read_text()) if (d / "nested_cv.json").exists() else None
        secs = sel["timings_s"].get("total_s", 0.0)
        total += secs
        how, rcut, fb, secs_ship = "`zuo_select`", f"{sel['rcut']:.3g} ({sel['rcut_bond_lengths']:g} bl)", r["n_basis"], secs
        further = next((x for x in further_grids(d) if is_sparse_choice(el, raw, x)), None)
        if further is not None:      # a further grid's choice: the nested estimate of its procedure
            rep = json.loads((d / "report.json").read_text())
            ch = further["final_selection"]["chosen"]
            r, fb = dict(further["procedure"], candidate=ch), rep["length_basis"]
            rcut = f"{raw['model']['rcut']:.3g} ({ch['rcut_bond_lengths']:g} bl)"
            how = f"nested-CV selection (`{further['grid']}` grid)"
            secs_ship = further["timings_s"]["total_s"] + further["timings_s"].get("ship_s", 0.0)
        elif is_recipe(el, raw, nst):
            rep = json.loads((d / "report.json").read_text())
            r = dict(nst["recipe_estimate"], candidate=nst["recipe"])
            fb = rep["length_basis"]
            rcut = f"{raw['model']['rcut']:.3g} ({nst['recipe']['rcut_bond_lengths']:g} bl)"
            how = "upstream recipe (nested CV)"
            secs_ship = nst["timings_s"]["total_s"] + rep["timings_s"]["total_s"]
        c = r["candidate"]
        E, F = r["mae_mean"]["E"], r["mae_mean"]["F"]
        met = int(E <= t["E"]) + int(F <= t["F"])
        rows.append(f"| zuo-{el} | {how} | {fb} ({c['basis'].replace('order ', 'o').replace(', totaldegree ', ' ')}) | "
                    f"{rcut} | {prior_name(c['prior'])} | "
                    f"{c['weights']['default']['E']:g} | {list(c['E0'].values())[0]:g} | "
                    f"{E * 1e3:.3f} ± {r['mae_std']['E'] * 1e3:.3f} | {t['E'] * 1e3:g} | "
                    f"{F:.4f} ± {r['mae_std']['F']:.4f} | {t['F']:g} | {met} of 2 | {secs_ship / 60:.0f} min |")
        if (d / "study.json").exists():
            st = json.loads((d / "study.json").read_text())
            bc = basis_curve(sel, st)
            lc = st["learning_curve"]
            study.append(f"- **{el}**: CV E / F MAE from {bc[0]['n_basis']} to {bc[-1]['n_basis']} functions: "
                         + ", ".join(f"{x['n_basis']}: {x['mae_mean']['E'] * 1e3:.2f} / {x['mae_mean']['F']:.4f}"
                                     for x in bc)
                         + f" (meV/atom / eV/Å). Learning curve (`zuo_select`'s choice, {sel_r['n_basis']} functions), "
                         + ", ".join(f"{x['n_train_configs']:.0f} configs: {x['mae_mean']['E'] * 1e3:.2f} / "
                                     f"{x['mae_mean']['F']:.4f}" for x in lc) + ".")
    rows += ["", "CV MAE: mean ± standard deviation over the same 5 folds (for the recipe: its outer-fold "
             "estimate of the nested CV, which is its plain 5-fold CV; for a further grid's choice: the nested CV's "
             "estimate of that grid's selection procedure). Targets: the best published test-set MAE "
             "(GAP, MTP, ACEpotentials.jl). rcut in Å and in bond lengths (bl). Shipped: `zuo_select`'s choice "
             "where the nested CV found the selection procedure better than the recipe on both E and F, or a "
             "further grid's choice where its nested CV did, else the upstream recipe. Time on a 2-core machine: "
             "the selection (`zuo_select`), or the nested CV (`zuo_nested`) and the fit (`zuo_ship`); the six "
             f"selections alone sum to {total / 60:.0f} min."]
    text = (MODELS / "README.md").read_text()
    for tag, body in (("zuo-table", rows), ("study-summary", study)):
        text = re.sub(f"<!-- {tag} -->.*?<!-- /{tag} -->", f"<!-- {tag} -->\n" + "\n".join(body) + f"\n<!-- /{tag} -->",
                      text, flags=re.S)
    (MODELS / "README.md").write_text(text)


def main(argv=None):
    ap = argparse.ArgumentParser(prog="python -m tools.shipped_models.zuo_cards",
                                 description=__doc__.split("\n\n")[0])
    ap.add_argument("elements", nargs="*", metavar="El", help=f"one of {sorted(TARGETS)} (default: all six)")
    args = ap.parse_args(argv)
    unknown = sorted(set(args.elements) - set(TARGETS))
    if unknown:
        ap.error(f"no zuo model for {unknown}; choose from {sorted(TARGETS)}")
    for el in args.elements or sorted(TARGETS):
        write_card(el)
    readme_tables()


if __name__ == "__main__":
    main()
