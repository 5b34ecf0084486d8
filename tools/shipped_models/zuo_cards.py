"""Cards and study plots of the zuo-<El> models from their stored results (no fitting).

    python -m tools.shipped_models.zuo_cards [Si Cu ...]     # default: all six, and the tables of models/README.md

Reads models/zuo-<El>/{fit.yaml, report.json, <model>.json, selection.json, study.json} and writes
README.md (the card) and, where study.json exists, plots/cv_basis_size.png and plots/cv_learning_curve.png;
then fills the CV summary and the study summary into models/README.md (between their markers).
"""
from __future__ import annotations

import argparse
import hashlib
import json
import re
from pathlib import Path

import yaml

from aceserver.loading import load_model

from .common import MODELS, active_set_line, error_rows, same
from .zuo_recipe import TARGETS, score


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


def write_card(el: str):
    d = MODELS / f"zuo-{el}"
    raw = yaml.safe_load((d / "fit.yaml").read_text())
    report = json.loads((d / "report.json").read_text())
    sel = json.loads((d / "selection.json").read_text())
    model_file = d / raw["output"]["model"]
    meta = load_model(model_file).metadata.get("fit", {})
    t = sel["targets"]
    res = sel["results"]
    chosen = next(r for r in res if same(r["candidate"], sel["chosen"]))
    best = next(r for r in res if same(r["candidate"], sel["best"]))
    cm, cse = _score(chosen, t)
    bm, bse = _score(best, t)
    verdict = lambda x, tg: "at or below" if x <= tg else "above"
    E, F = chosen["mae_mean"]["E"], chosen["mae_mean"]["F"]
    tm = sel["timings_s"]
    L = [f"# zuo-{el}", "", raw.get("description", ""), "",
         "## Cross-validated error against the targets", "",
         f"5-fold cross-validation over the {sum(sel['fold_sizes'])} configurations of the training split "
         f"(folds of {sel['fold_sizes']} configurations, seed {sel['seed']}), this model's settings:", "",
         "| | CV MAE (mean ± sd over folds) | target (best published test MAE) | |", "|---|---|---|---|",
         f"| energy | {E * 1e3:.3f} ± {chosen['mae_std']['E'] * 1e3:.3f} meV/atom | {t['E'] * 1e3:g} meV/atom | "
         f"{verdict(E, t['E'])} |",
         f"| forces | {F:.4f} ± {chosen['mae_std']['F']:.4f} eV/Å | {t['F']:g} eV/Å | {verdict(F, t['F'])} |", "",
         "Per fold (E meV/atom, F eV/Å): " + ", ".join(
             f"({f['mae']['E'] * 1e3:.3f}, {f['mae']['F']:.4f})" for f in chosen["folds"]) + ".",
         "These are estimates from the training split; the Zuo test split was not read. Reproduce them "
         f"(and this model) with `python -m tools.shipped_models.zuo_select --data-dir DIR {el}` from the repository root.", "",
         "## Files", "",
         f"- model: `{model_file.name}` (sha256 of the file `{hashlib.sha256(model_file.read_bytes()).hexdigest()}`; "
         f"model identity `{report.get('sha256')}`)",
         *filter(None, [active_set_line(model_file)]),
         "- settings: `fit.yaml`; fit report: `report.json`; CV results: `selection.json`"
         + ("; study: `study.json`" if (d / "study.json").exists() else "")
         + ("; nested CV: `nested_cv.json`" if (d / "nested_cv.json").exists() else "") + "; plots: `plots/`", "",
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
    L += ["```", "", "## Fit on the whole training split", "",
          f"`{s.get('solver')}` on {report['shape'][0]} observations x {report['shape'][1]} parameters; "
          f"sigma0_sq {s.get('sigma0_sq', 0):.4g}, sigmae_sq {s.get('sigmae_sq', 0):.4g}, effective parameters "
          f"{s.get('effective_parameters', 0):.0f}, committee of {s.get('committee_size')}.", "",
          "Training errors (in-sample; the CV numbers above are the estimate of generalisation):", ""]
    L += error_rows(report["errors"]["train"])
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
    L += ["", "## Selection", "",
          "One recipe for all six Zuo elements (`tools/shipped_models/zuo_select.py`, details in its docstring and in "
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
        L += ["", "## Generalisation study", "",
              f"CV error against basis size (prior {prior_name(bc['prior'])}, w_E {bc['weights']['default']['E']:g}: "
              f"the best pair of stage 1; E0 as chosen) — `{plots[0]}`:", "", *HEAD]
        L += [_cand_row(r, t) for r in basis_curve(sel, study)]
        L += ["", f"Learning curve (the chosen candidate; each fold's model fitted on 1/5 .. 5/5 of each "
              f"training fold, scored on the held-out fold) — `{plots[1]}`:", "",
              "| training configurations | CV E MAE (meV/atom) | CV F MAE (eV/Å) |", "|---|---|---|"]
        L += [f"| {r['n_train_configs']:.0f} | {r['mae_mean']['E'] * 1e3:.3f} ± {r['mae_std']['E'] * 1e3:.3f} | "
              f"{r['mae_mean']['F']:.4f} ± {r['mae_std']['F']:.4f} |" for r in study["learning_curve"]]
    if (d / "nested_cv.json").exists():
        L += nested_section(el, json.loads((d / "nested_cv.json").read_text()))
    L += ["", "## Reproduce", "", "From the repository root, with the data placed under DIR (or $ACESERVER_DATA):",
          "", "```bash", f"aceserver fit models/zuo-{el}/fit.yaml --data-dir DIR             # this model",
          f"python -m tools.shipped_models.zuo_select --data-dir DIR {el}   # the CV numbers, the selection and the model",
          "```", "",
          "`zuo_select` fits the final model from the selection's assembled columns (the chosen basis is a "
          "column subset of the largest one); `aceserver fit` assembles the chosen basis itself."
          + (" This model file was written by `aceserver fit` from `fit.yaml`: the selection run of "
             "2026-12-03 mapped the columns of the largest basis of the chain (the one chosen here) to the "
             "model in the wrong order (fixed in `selection.prefix_order`; `zuo_select` now checks the "
             "written model against training energies). The CV numbers were not affected."
             if chosen["n_basis"] == max(sel["bases"].values()) else ""), ""]
    (d / "README.md").write_text("\n".join(L))


def nested_section(el: str, nst: dict) -> list[str]:
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
         "This grid is smaller than the selection that chose this model (no cutoff stage).", "",
         "| | outer E MAE (meV/atom) | outer F MAE (eV/Å) |", "|---|---|---|",
         row("selection procedure", p), row("upstream recipe", r), "",
         "Per outer fold (procedure; recipe), E meV/atom, F eV/Å: " + "; ".join(
             f"({a['mae']['E'] * 1e3:.3f}, {a['mae']['F']:.4f}; {b['mae']['E'] * 1e3:.3f}, {b['mae']['F']:.4f})"
             for a, b in zip(p["folds"], r["folds"])) + ".",
         f"Paired gain of the procedure over the recipe: E {c['E']['mean_gain'] * 1e3:.3f} ± {c['E']['se'] * 1e3:.3f} "
         f"meV/atom, F {c['F']['mean_gain']:.5f} ± {c['F']['se']:.5f} eV/Å (mean ± standard error). Verdict by the "
         f"rule (gain above one standard error on both): ship the {'selected model' if c['procedure_wins'] else 'recipe'}."
         + ("" if c["procedure_wins"] else " The model on this card is still the one the full selection (with its "
            "cutoff stage) chose; it has not been replaced by the recipe yet."),
         "Chosen per outer fold: " + "; ".join(
             f"{f['chosen']['basis']}, {prior_name(f['chosen']['prior'])}, w_E {f['chosen']['weights']['default']['E']:g}, "
             f"E0 {f['chosen']['E0'][el]:g}" for f in nst["outer"]) + ".",
         *([] if "speed" not in nst else [
             f"Speed (energy + forces + virial, {nst['speed']['structure']}, one thread, all parameters nonzero, "
             "timed alternately in one run on the shared build machine, so the ratio is what carries over): " + "; ".join(
                 f"{b}: {us:.1f} µs/atom ({nst['speed']['ratio_to_recipe'][b]:.2f}x the recipe's)"
                 for b, us in nst["speed"]["us_per_atom"].items()) + "."]),
         f"Run: `python -m tools.shipped_models.zuo_nested --data-dir DIR {el} --grid {nst['grid']}` "
         f"({nst['timings_s']['total_s'] / 60:.0f} min wall-clock, one thread, on the shared 2-core build machine)."]
    return L


def readme_tables():
    """Fill the CV summary and the study summary into models/README.md (between their markers)."""
    rows = ["| model | chosen basis | rcut (Å) | prior | w_E | E0 (eV) | CV E MAE (meV/atom) | E target | "
            "CV F MAE (eV/Å) | F target | targets met | time |", "|---|---|---|---|---|---|---|---|---|---|---|---|"]
    study = []
    total = 0.0
    for el in ("Ni", "Cu", "Li", "Mo", "Si", "Ge"):
        d = MODELS / f"zuo-{el}"
        if not (d / "selection.json").exists() or not (d / "report.json").exists():
            rows.append(f"| zuo-{el} | not refitted in this run | | | | | | | | | | |")
            continue
        sel = json.loads((d / "selection.json").read_text())
        if "chosen" not in sel or "rcut" not in sel:
            rows.append(f"| zuo-{el} | selection incomplete | | | | | | | | | | |")
            continue
        t = sel["targets"]
        r = next(x for x in sel["results"] if same(x["candidate"], sel["chosen"]))
        c = r["candidate"]
        E, F = r["mae_mean"]["E"], r["mae_mean"]["F"]
        met = int(E <= t["E"]) + int(F <= t["F"])
        secs = sel["timings_s"].get("total_s", 0.0)
        total += secs
        rows.append(f"| zuo-{el} | {r['n_basis']} ({c['basis'].replace('order ', 'o').replace(', totaldegree ', ' ')}) | "
                    f"{sel['rcut']:.3g} ({sel['rcut_bond_lengths']:g} bl) | {prior_name(c['prior'])} | "
                    f"{c['weights']['default']['E']:g} | {list(c['E0'].values())[0]:g} | "
                    f"{E * 1e3:.3f} ± {r['mae_std']['E'] * 1e3:.3f} | {t['E'] * 1e3:g} | "
                    f"{F:.4f} ± {r['mae_std']['F']:.4f} | {t['F']:g} | {met} of 2 | {secs / 60:.0f} min |")
        if (d / "study.json").exists():
            st = json.loads((d / "study.json").read_text())
            bc = basis_curve(sel, st)
            lc = st["learning_curve"]
            study.append(f"- **{el}**: CV E / F MAE from {bc[0]['n_basis']} to {bc[-1]['n_basis']} functions: "
                         + ", ".join(f"{x['n_basis']}: {x['mae_mean']['E'] * 1e3:.2f} / {x['mae_mean']['F']:.4f}"
                                     for x in bc)
                         + f" (meV/atom / eV/Å). Learning curve ({r['n_basis']} functions), "
                         + ", ".join(f"{x['n_train_configs']:.0f} configs: {x['mae_mean']['E'] * 1e3:.2f} / "
                                     f"{x['mae_mean']['F']:.4f}" for x in lc) + ".")
    rows += ["", "CV MAE: mean ± standard deviation over the 5 folds. Targets: the best published test-set MAE "
             f"(GAP, MTP, ACEpotentials.jl). rcut in Å and in bond lengths (bl). Time: the six selections ran one "
             f"after the other on a 2-core machine; their wall times sum to {total / 60:.0f} min."]
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
