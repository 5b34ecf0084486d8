"""Screen basis variants of the upstream recipe by plain 5-fold CV on the zuo folds, aimed at forces.

    python -m tools.shipped_models.zuo_variants --data-dir DIR Mo [--only NAME ...] [--threads 1]

(from the repository root; DIR holds ZuoEtAl2020/<El>_train.xyz, default $ACESERVER_DATA; the Zuo test
splits are never read). Each variant of :data:`VARIANTS` changes one to three things of the recipe's
basis (order 3, totaldegree [25,21,17], rcut 2.5 bond lengths, ace1 defaults): the pair basis degree, the
many-body radial transform (Agnesi p, q), the per-order degrees, the cutoff. Each is assembled once
and cross-validated on the 5 seeded folds of ``zuo_select`` (the nested CV's outer folds) with BLR
over a small settings grid: algebraic prior p ∈ {2, 4} × w_E ∈ {10, 20, 30} (F 1) × E0 ∈ {0, mean
energy per atom}. Every variant's basis (all parameters nonzero, as a BLR fit) is timed alternately
with the recipe's in one run (:func:`common.time_alternating`: energy + forces + virial on fcc108 or
diamond64, one thread; medians). Per variant, the candidate with the lowest mean CV force MAE is
compared, fold by fold, with the recipe (:func:`aceserver.fitting.selection.beats`). This is a
screen: the best of several noisy scores on the folds that chose it is optimistic, so a family that
looks better goes to the nested CV (``zuo_nested``) before anything ships.

Writes models/zuo-<El>/variants_cv.json after each variant; a later run keeps the variants already
there (same data, settings grid and variant spec) and runs the others, so a stopped run resumes.
"""
from __future__ import annotations

import argparse
import json
import resource
import time

import numpy as np

import aceserver
from aceserver.fitting import selection
from aceserver.fitting.fit_model import jsonable
from aceserver.fitting.workflow import sha256_file

from .common import MODELS, same, time_alternating
from .zuo_nested import RECIPE_BASIS, RECIPE_FACTOR, fresh_runs, nested_file_name, recipe_candidate
from .zuo_recipe import K, SEED, TARGETS, add_data_dir, basis_name, data_dir_of, rcut_of, training_split
from .zuo_select import Assembled, log

# name: (order, totaldegree, rcut in bond lengths, further ace1_model keywords)
VARIANTS = {
    "recipe": (3, [25, 21, 17], 2.5, {}),
    "pair degree 35": (3, [25, 21, 17], 2.5, {"pair_degree": 35}),
    "transform agnesi 2 3": (3, [25, 21, 17], 2.5, {"transform": ["agnesi", 2, 3]}),
    "transform agnesi 2 6": (3, [25, 21, 17], 2.5, {"transform": ["agnesi", 2, 6]}),
    "transform agnesi 2 8": (3, [25, 21, 17], 2.5, {"transform": ["agnesi", 2, 8]}),
    "rcut 2.25, transform agnesi 2 6": (3, [25, 21, 17], 2.25, {"transform": ["agnesi", 2, 6]}),
    "rcut 2.25": (3, [25, 21, 17], 2.25, {}),
    "degrees 3 [28, 22, 15]": (3, [28, 22, 15], 2.5, {}),
    "degrees 4 [25, 21, 17, 10]": (4, [25, 21, 17, 10], 2.5, {}),
    "rcut 2.75": (3, [25, 21, 17], 2.75, {}),
    "transform agnesi 1 4": (3, [25, 21, 17], 2.5, {"transform": ["agnesi", 1, 4]}),
    "rcut 2.25, 4 [26, 22, 18, 14]": (4, [26, 22, 18, 14], 2.25, {}),
    "degrees 3 [27, 22, 16], pair 35": (3, [27, 22, 16], 2.5, {"pair_degree": 35}),
    "transform agnesi 2 10": (3, [25, 21, 17], 2.5, {"transform": ["agnesi", 2, 10]}),
    # the two leads combined, and larger order-4 bases with them (2140: 1.45 x the recipe's time, 2806: 3.3 x)
    "rcut 2.25, transform agnesi 2 6, 4 [26, 22, 18, 14]": (4, [26, 22, 18, 14], 2.25, {"transform": ["agnesi", 2, 6]}),
    "rcut 2.25, transform agnesi 2 6, 4 [27, 23, 19, 15]": (4, [27, 23, 19, 15], 2.25, {"transform": ["agnesi", 2, 6]}),
    "rcut 2.25, transform agnesi 2 6, 4 [28, 24, 20, 16]": (4, [28, 24, 20, 16], 2.25, {"transform": ["agnesi", 2, 6]}),
}
PRIORS = ({"name": "algebraic", "p": 2}, {"name": "algebraic", "p": 4})
E_WEIGHTS = (10.0, 20.0, 30.0)


def candidates(el: str, basis: str, factor: float, e_mean: float) -> list[dict]:
    return [{"basis": basis, "rcut_bond_lengths": factor, "prior": pr,
             "weights": {"default": {"E": we, "F": 1.0, "V": 1.0}}, "E0": E0, "solver": {"name": "blr"}}
            for pr in PRIORS for we in E_WEIGHTS for E0 in ({el: 0.0}, {el: e_mean})]


def best_by_forces(results: list[dict], recipe: dict | None = None) -> dict:
    """The candidate with the lowest mean CV force MAE among those whose mean energy MAE is no higher
    than ``recipe``'s (a screen for forces without losing energy); the lowest force MAE of all where
    none is (or where there is no recipe result yet)."""
    ok = [r for r in results if recipe is None or r["mae_mean"]["E"] <= recipe["mae_mean"]["E"]]
    return min(ok or results, key=lambda r: r["mae_mean"]["F"])


def _settings(c: dict) -> str:
    pr = c["prior"]
    return f"alg p {pr['p']}, w_E {c['weights']['default']['E']:g}, E0 {list(c['E0'].values())[0]:g}"


def card_section(el: str, res: dict) -> list[str]:
    """The card's section on this screen (variants_cv.json): per variant its size and speed against the
    recipe, its CV error with the recipe's settings, and its best candidate for forces without losing
    energy, with the paired gain over the recipe (recipe MAE − variant MAE, fold by fold)."""
    rec_v = next(v for v in res["variants"] if v["name"] == "recipe")
    rec = next(r for r in rec_v["results"] if same({k: r["candidate"][k] for k in ("prior", "weights", "E0")},
                                                   {k: res["recipe"][k] for k in ("prior", "weights", "E0")}))
    sp = res.get("speed", {})
    ratio = sp.get("ratio_to_recipe", {})
    mae = lambda r, k: (f"{r['mae_mean'][k] * 1e3:.3f} ± {r['mae_std'][k] * 1e3:.3f}" if k == "E"  # noqa: E731
                        else f"{r['mae_mean'][k]:.4f} ± {r['mae_std'][k]:.4f}")
    L = ["", "## Screen of basis variants for forces", "",
         "Plain 5-fold CV on the outer folds (`python -m tools.shipped_models.zuo_variants --data-dir DIR "
         f"{el}`): each variant changes one to three things of the recipe's basis (order 3, totaldegree "
         "[25,21,17], rcut 2.5 bond lengths, ace1 defaults: pair degree = the first totaldegree, many-body "
         "transform Agnesi (2, 4)), is "
         "assembled once and fitted by BLR over algebraic p ∈ {2, 4} × w_E ∈ {10, 20, 30} × E0 ∈ {0, mean}; "
         "speed: every variant's basis, all parameters nonzero, timed alternately with the recipe's in one run "
         f"({sp.get('structure', '–')}, one thread, medians of {sp.get('rounds', '–')} rounds). 'Best': the "
         "lowest mean CV F MAE among the variant's candidates whose mean E MAE is no higher than the recipe's; "
         "gain: the recipe's MAE minus the candidate's, fold by fold (mean ± standard error; positive: better). "
         "A screen: the best of 12 noisy scores on the folds that chose it is optimistic.", "",
         "| variant | functions | × recipe time | recipe settings: CV E (meV/atom) | recipe settings: CV F (eV/Å) | "
         "best: settings | best: CV E (meV/atom) | best: CV F (eV/Å) | gain E (meV/atom) | gain F (eV/Å) |",
         "|---|---|---|---|---|---|---|---|---|---|"]
    for v in res["variants"]:
        same_settings = next(r for r in v["results"] if same({k: r["candidate"][k] for k in ("prior", "weights")},
                                                             {k: res["recipe"][k] for k in ("prior", "weights")})
                             and list(r["candidate"]["E0"].values())[0] == 0.0)
        b = best_by_forces(v["results"], rec)
        g = selection.beats(b, rec)
        t = ratio.get(v["name"])
        L.append(f"| {v['name']} | {v['n_basis']} | {'–' if t is None else f'{t:.2f}'} | {mae(same_settings, 'E')} | "
                 f"{mae(same_settings, 'F')} | {_settings(b['candidate'])} | {mae(b, 'E')} | {mae(b, 'F')} | "
                 f"{g['E']['mean_gain'] * 1e3:.3f} ± {g['E']['se'] * 1e3:.3f} | {g['F']['mean_gain']:.5f} ± "
                 f"{g['F']['se']:.5f} |")
    tm = res.get("timings_s", {}).get("total_s")
    L += ["", f"Recipe in this run: CV E {mae(rec, 'E')} meV/atom, F {mae(rec, 'F')} eV/Å"
          + (f", {sp['us_per_atom']['recipe (reference)']:.1f} µs/atom" if sp else "") + "."
          + (f" Time: {sum(sum(v['timings_s'].values()) for v in res['variants']) / 60:.0f} min for the variants' "
             "assemblies, block factors and CV (per variant in `variants_cv.json`), one thread, on the shared 2-core "
             f"build machine; peak memory {res['peak_rss_mib'] / 1024:.1f} GiB (the last of the resumed runs). "
             "The recipe is timed twice (the reference and its own row): their ratio shows the timing noise."
             if tm else "")]
    d = MODELS / f"zuo-{el}"
    for g in NESTED_GRIDS:            # each grid's run on zuo_select's folds, then any on fresh folds
        first = d / nested_file_name(g)
        runs = [json.loads(f.read_text()) for f in [first] * first.is_file() + fresh_runs(d, g)]
        runs = [x for x in runs if "procedure" in x]     # finished (a running one writes its outer folds as it goes)
        for i, x in enumerate(runs):                     # the last one decides (zuo_nested.deciding_file)
            L += nested_lines(el, x, decides=i == len(runs) - 1)
    return L


# the nested CVs (``zuo_nested --grid``) of the screen's leads, in the order they were run
NESTED_GRIDS = ("transform", "transform_large", "transform_large_weighted", "transform_smooth")


def designed_after(el: str, grid: str, where: str = "") -> str:
    """Why a grid is judged on fresh outer folds: what it was designed after (its own run on the folds of
    ``zuo_select``, followed by ``where``, or screens on them)."""
    if (MODELS / f"zuo-{el}" / nested_file_name(grid)).is_file():
        return f"this grid was designed after its run on the folds of `zuo_select`{where}"
    return "this grid was designed after screens on the folds of `zuo_select`"


def nested_lines(el: str, x: dict, decides: bool = True) -> list[str]:
    """The card's lines on the nested CV of the screen's lead family (``zuo_nested --grid transform``);
    ``decides``: False where a later run of the grid on fresh outer folds decides instead."""
    p, r, c, t = x["procedure"], x["recipe_estimate"], x["comparison"], x["targets"]
    def row(name, s):
        return (f"| {name} | {s['mae_mean']['E'] * 1e3:.3f} ± {s['mae_std']['E'] * 1e3:.3f} | "
                f"{s['mae_mean']['F']:.4f} ± {s['mae_std']['F']:.4f} |")

    meets = p["mae_mean"]["E"] <= t["E"] and p["mae_mean"]["F"] <= t["F"]
    rec_sp = next(m for m in x["speed"]["models"] if "recipe" in m["roles"])
    cand_sp = [m for m in x["speed"]["models"] if "candidate" in m["roles"]]
    bases = list(dict.fromkeys(c["basis"] for c in x["candidates"]))
    one = len(bases) == 1
    tm = x["timings_s"]    # a resumed run: its total is the stopped run's parts plus the resumption's
    run_s = tm["total_s"] + (sum(v for k, v in tm.items() if k.startswith(("nested_", "outer_"))) if tm.get("resumed") else 0)
    c0 = x["candidates"][0]
    weighted = any("rms0" in c["weights"] for c in x["candidates"])
    what = ", ".join([f"the many-body transform Agnesi {tuple(c0['basis_kw']['transform'][1:])}"]
                     * ("transform" in c0.get("basis_kw", {})) + [f"rcut {c0['rcut_bond_lengths']:g} bond lengths"])
    on = ("the recipe's basis" if one and bases[0] == basis_name(*RECIPE_BASIS) else "the bases " + " and ".join(
        f"{b.replace('order ', '').replace(', totaldegree', '')} ({m['n_active']} functions)"
        for b, m in zip(bases, cand_sp)))
    seed = x.get("seed", 0)
    run = f"--grid {x['grid']}" + (f" --seed {seed}" if seed else "")
    name = f"nested_cv_{x['grid']}" + (f"_seed{seed}" if seed else "") + ".json"
    folds = (f"5 fresh outer folds (seed {seed}: {designed_after(el, x['grid'], ', above')}, so, as fixed before "
             "this run, these folds decide whether it ships)" if seed else "the same 5 outer folds")
    ps = sorted({c["prior"]["p"] for c in x["candidates"]})
    wes = sorted({c["weights"]["default"]["E"] for c in x["candidates"]})
    betas = sorted({0.5 if "rms0" in c["weights"] else 0.0 for c in x["candidates"]})
    settings = (f"algebraic p ∈ {{{', '.join(map(str, ps))}}} × w_E ∈ {{{', '.join(f'{w:g}' for w in wes)}}} "
                "× E0 ∈ {0, mean}" + (f" × force-magnitude weights β ∈ {{{', '.join(f'{b:g}' for b in betas)}}} "
                                      "(the screen below)" if len(betas) > 1 else
                                      ", force-magnitude weights β 0.5 (the screen below)" if weighted else ""))
    caveat = ("The screens that picked the family used all of the training split, so even on fresh folds this "
              "estimate is somewhat optimistic." if seed else
              "The family itself was picked by the screen above on all 5 folds, so this estimate is still "
              "somewhat optimistic.")
    return ["", f"Nested CV of a lead family (`python -m tools.shipped_models.zuo_nested --data-dir DIR {el} "
            f"{run}`, `{name}`): {on} with {what}, the selection over its "
            f"{x['n_candidates']} candidates (" + ("" if one else "each basis with ")
            + settings + "; "
            "4-fold CV on the other folds, the same rule" + ("" if one else ", the simplest candidate the one with "
                                                            "fewer functions")
            + f") run in each of {folds}; the recipe's outer folds from its own assembly. {caveat}", "",
            "| | outer E MAE (meV/atom) | outer F MAE (eV/Å) |", "|---|---|---|",
            row(f"selection procedure (`{x['grid']}` grid)", p), row("upstream recipe", r),
            f"| target (best published test MAE) | {t['E'] * 1e3:g} | {t['F']:g} |", "",
            f"Paired gain of the procedure over the recipe: E {c['E']['mean_gain'] * 1e3:.3f} ± "
            f"{c['E']['se'] * 1e3:.3f} meV/atom, F {c['F']['mean_gain']:.5f} ± {c['F']['se']:.5f} eV/Å (mean ± "
            "standard error). Verdict by the rule: the procedure "
            + ("beats the recipe on both" if c["procedure_wins"] else
               "does not beat the recipe on both (a gain above one standard error on E and on F)")
            + f"; its estimate {'meets' if meets else 'does not meet'} both targets. By the verdict, "
            + (("it ships." if c["procedure_wins"] else "the recipe stays.") if decides
               else "it would " + ("" if c["procedure_wins"] else "not ") + "ship; the run on fresh folds below decides.")
            + f" Speed ({x['speed']['structure']}, one thread, alternately in one run): "
            + ", ".join(f"{m['us_per_atom']:.1f} µs/atom" + ("" if one else f" for {m['n_active']} functions")
                        + f" ({m['ratio_to_recipe']:.2f} x)" for m in cand_sp)
            + f" against the recipe's {rec_sp['us_per_atom']:.1f}.",
            "Per outer fold (procedure; recipe), E meV/atom, F eV/Å: " + "; ".join(
                f"({a['E'] * 1e3:.3f}, {a['F']:.4f}; {b['E'] * 1e3:.3f}, {b['F']:.4f})"
                for a, b in zip((f["mae"] for f in p["folds"]), (f["mae"] for f in r["folds"]))) + ".",
            "Chosen per outer fold: " + "; ".join(
                ("" if one else f"{f['chosen']['basis'].replace('order ', '').replace(', totaldegree', '')}, ")
                + f"alg p {f['chosen']['prior']['p']}, w_E {f['chosen']['weights']['default']['E']:g}, "
                f"E0 {list(f['chosen']['E0'].values())[0]:g}"
                + ((", β 0.5" if "rms0" in f["chosen"]["weights"] else ", β 0") if len(betas) > 1 else "")
                for f in x["outer"]) + "."
            + f" Run: {run_s / 60:.0f} min wall-clock, one thread"
            + (f", peak memory {x['peak_rss_mib'] / 1024:.1f} GiB" if x.get("peak_rss_mib") else "")
            + ("; stopped after its outer folds by an error in the final comparison, fixed, and resumed from "
               "them (peak memory of the resumption)" if tm.get("resumed") else "")
            + ", on the shared 2-core build machine."]


def run(el: str, data_dir, names: list[str], threads: int | None, out) -> dict:
    t_all = time.perf_counter()
    path, train, folds, always = training_split(el, data_dir)
    e_mean = round(float(np.mean([c.energy / c.natoms for c in train])), 6)
    rec = recipe_candidate(el)
    res = {"element": el, "data": {"file": path.name, "sha256": sha256_file(path)}, "folds": K, "seed": SEED,
           "targets": {"E": TARGETS[el][0], "F": TARGETS[el][1]}, "recipe": rec,
           "settings_grid": {"priors": PRIORS, "e_weights": E_WEIGHTS, "E0": [0.0, e_mean]},
           "variants": [], "units": {"E": "eV/atom", "F": "eV/Å"}}

    def save():
        res["peak_rss_mib"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024   # Linux: KiB
        out.write_text(json.dumps(jsonable(res), indent=1))

    recipe_result = None
    done = {}
    if out.is_file():       # resume: keep the variants of an earlier run on the same data and settings grid
        old = json.loads(out.read_text())
        if (old["data"]["sha256"] == res["data"]["sha256"]
                and same(old["settings_grid"], jsonable(res["settings_grid"]))):
            done = {v["name"]: v for v in old["variants"] if v["name"] in names and same(
                [v["order"], v["totaldegree"], v["rcut_bond_lengths"], v["basis_kw"]], list(VARIANTS[v["name"]]))}
    for name in names:
        if name in done:
            res["variants"].append(done[name])
            if name == "recipe":
                recipe_result = next(r for r in done[name]["results"] if same(
                    {k: r["candidate"][k] for k in ("prior", "weights", "E0")},
                    {k: rec[k] for k in ("prior", "weights", "E0")}))
            log(f"  {name}: kept from the earlier run")
            continue
        o, td, factor, kw = VARIANTS[name]
        timings: dict = {}
        a = Assembled(el, train, [(o, td)], factor, folds, always, threads, timings, "variant", basis_kw=kw)
        t0 = time.perf_counter()
        cands = candidates(el, basis_name(o, td), factor, e_mean)
        results = selection.cross_validate(a.factors, list(range(K)), [K], cands, a.labels, a.sizes, log=None)
        timings["cv_s"] = time.perf_counter() - t0
        if name == "recipe":
            recipe_result = next(r for r in results if same({k: r["candidate"][k] for k in ("prior", "weights", "E0")},
                                                            {k: rec[k] for k in ("prior", "weights", "E0")}))
        best = best_by_forces(results, recipe_result)
        v = {"name": name, "order": o, "totaldegree": td, "rcut_bond_lengths": factor, "basis_kw": kw,
             "n_basis": a.models[-1].length_basis, "results": results, "best_F": best["candidate"],
             "timings_s": timings}
        if recipe_result is not None:
            v["best_F_vs_recipe"] = selection.beats(best, recipe_result)
        res["variants"].append(v)
        del a
        save()
        log(f"  {name} ({v['n_basis']} functions): best F {best['mae_mean']['F']:.4f} ± {best['mae_std']['F']:.4f} "
            f"eV/Å, E {best['mae_mean']['E'] * 1e3:.3f} meV/atom ({best['candidate']['prior']}, "
            f"w_E {best['candidate']['weights']['default']['E']}); {timings}")
    res["speed"] = speed(el, res["variants"])
    res["timings_s"] = {"total_s": time.perf_counter() - t_all}
    save()
    return res


def speed(el: str, variants: list[dict], rounds: int = 7, calls: int = 10) -> dict:
    """µs/atom of the recipe's basis and of each variant's (all parameters nonzero), timed alternately
    in one run; ratios to the recipe."""
    rng = np.random.default_rng(0)
    specs = [("recipe (reference)", *RECIPE_BASIS, RECIPE_FACTOR, {})] + [
        (v["name"], v["order"], v["totaldegree"], v["rcut_bond_lengths"], v["basis_kw"]) for v in variants]
    models = []
    for _, o, td, factor, kw in specs:
        m = aceserver.ace1_model(elements=[el], order=o, totaldegree=td, rcut=rcut_of(el, factor), E0={el: 0.0}, **kw)
        m.parameters = rng.standard_normal(m.length_basis) / m.length_basis
        models.append(m)
    structure, med = time_alternating(el, models, rounds, calls)
    return {"structure": structure, "rounds": rounds, "calls": calls, "threads": 1,
            "us_per_atom": {s[0]: t for s, t in zip(specs, med)},
            "ratio_to_recipe": {s[0]: t / med[0] for s, t in zip(specs, med)}}


def main(argv=None):
    ap = argparse.ArgumentParser(prog="python -m tools.shipped_models.zuo_variants",
                                 description=__doc__.split("\n\n")[0])
    ap.add_argument("element", choices=sorted(TARGETS))
    add_data_dir(ap)
    ap.add_argument("--only", nargs="+", choices=sorted(VARIANTS), default=None,
                    help="variants to run (default all; the recipe is always run first, as the reference)")
    ap.add_argument("--threads", type=int, default=1, help="assembly threads (default 1)")
    ap.add_argument("--speed-only", action="store_true",
                    help="only (re)time the variants already in variants_cv.json against the recipe")
    args = ap.parse_args(argv)
    out = MODELS / f"zuo-{args.element}" / "variants_cv.json"
    if args.speed_only:
        res = json.loads(out.read_text())
        res["speed"] = speed(args.element, res["variants"])
        out.write_text(json.dumps(jsonable(res), indent=1))
        log(f"zuo-{args.element}: speed {res['speed']['ratio_to_recipe']}")
        return
    data_dir = data_dir_of(ap, args)
    names = ["recipe"] + [n for n in (args.only or VARIANTS) if n != "recipe"]
    res = run(args.element, data_dir, names, args.threads, out)
    log(f"zuo-{args.element}: {len(names)} variants in {res['timings_s']['total_s']:.0f} s; "
        f"peak {res['peak_rss_mib']:.0f} MiB; speed {res['speed']['ratio_to_recipe']}")


if __name__ == "__main__":
    main()
