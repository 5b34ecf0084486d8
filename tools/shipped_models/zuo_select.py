"""Select and fit the Zuo et al. (2020) models by 5-fold cross-validation on their *training* splits.

    python -m tools.shipped_models.zuo_select --data-dir DIR Si [Cu ...]   # select, fit, write selection.json etc.
    python -m tools.shipped_models.zuo_cards Si [Cu ...]                  # rewrite cards and plots from stored results

(from the repository root). DIR holds ZuoEtAl2020/<El>_train.xyz (see README.md here; default
$ACESERVER_DATA). The Zuo test splits are never read. One recipe for all six elements (constants in
:mod:`.zuo_recipe`; ace1 defaults unless said):

* stage 0, cutoff: rcut in {2.25, 2.5, 2.75} bond lengths (ace1's default is 2.5), each on the
  order-3 totaldegree [24,20,16] basis (827 functions for one element) with the whole stage-1 grid;
  the cutoff of the best mean score is kept;
* at that cutoff a nested chain of bases: order 3 with totaldegree [12,10,8] (88), [16,12,10] (158),
  [20,16,12] (319), [24,20,16] (827), order 4 [24,20,16,12] (954) and [26,22,18,14] (1634). Each basis
  is a subset of the next, so only the largest is assembled and every smaller one is a leading block
  of its columns (aceserver.fitting.selection.prefix_order);
* stage 1, on the order-3 bases: prior (algebraic p in {2, 4, 6}; exponential with wl 2, wn 3) x
  energy weight w_E in {3, 10, 30, 100, 300} (force weight 1) x E0 in {0, mean energy per atom}
  (the 827-function results are those of stage 0);
* stage 2: the three best (prior, w_E) pairs of stage 1 (mean score on the 827-function basis), both
  E0, on the order-4 bases;
* BLR (evidence maximisation) throughout; the Zuo data have no config_type, so there are no
  per-type weights to choose.

Each candidate is scored by the worse of its two mean ratios, max(CV E MAE / E target, CV F MAE /
F target) (targets: the best published test-set MAE), which is at most 1 exactly when both mean CV
errors meet their targets. Rule (paired one standard error): among the kept cutoff's candidates
whose mean excess over the best candidate, fold by fold, is within one standard error of that
excess for the energy ratio and for the force ratio, the one with the fewest basis functions, then
the lowest score. The choice is written to models/zuo-<El>/fit.yaml and fitted on the whole training split
(`aceserver fit` code path, reusing the assembled columns) with a 10-member committee. For Si and Cu
also a study: CV error against basis size (the best stage-1 pair) and against training-set size (the
chosen candidate; 1/5 .. 5/5 of each training fold).
"""
from __future__ import annotations

import argparse
import io
import json
import time
from contextlib import redirect_stdout
from pathlib import Path

import numpy as np
import yaml

import aceserver
from aceserver.fitting import assembly, selection
from aceserver.fitting import config as fconfig
from aceserver.fitting.fit_model import jsonable
from aceserver.fitting.workflow import run_fit, sha256_file

from .common import MODELS, same
from .zuo_recipe import (CHAIN, COMBINE, CUTOFFS, E_WEIGHTS, K, LC_PARTS, N_GROUPS, N_STAGE2, PRIORS, SEED, SOURCE,
                         STAGE1, STUDY, TARGETS, add_data_dir, basis_name, data_dir_of, fold_score, rcut_of,
                         score, training_split)


def log(msg):
    print(f"[{time.strftime('%H:%M:%S')}] {msg}", flush=True)


class Assembled:
    """One cutoff's nested chain of bases: the largest assembled, block factors per fold."""

    def __init__(self, el, train, chain, factor, folds, always, threads, timings, tag, basis_kw=None):
        # basis_kw: further ace1_model keywords (pair_degree, transform, ...) shared by the chain
        self.models = [aceserver.ace1_model(elements=[el], order=o, totaldegree=td, rcut=rcut_of(el, factor),
                                            **(basis_kw or {})) for o, td in chain]
        self.names = [basis_name(o, td) for o, td in chain]
        top = self.models[-1]
        self.order, self.where = selection.prefix_order(self.models[:-1], top)
        self.sizes = {n: m.length_basis for n, m in zip(self.names, self.models)}
        self.labels = [top.basis_labels[j] for j in self.order]
        self.E0ref = {el: 0.0}
        top.E0 = self.E0ref
        t0 = time.perf_counter()
        self.system = assembly.assemble(top, train, None, threads=threads, progress=False)
        timings[f"{tag}_assembly_s"] = time.perf_counter() - t0
        t0 = time.perf_counter()
        self.factors = selection.BlockFactors(self.system, train, folds + [always], [el], self.E0ref,
                                              columns=self.order)
        timings[f"{tag}_block_qr_s"] = time.perf_counter() - t0
        log(f"  rcut {factor} bond lengths ({rcut_of(el, factor):.3f} Å): assembled {self.system.shape} in "
            f"{timings[f'{tag}_assembly_s']:.0f} s, block factors in {timings[f'{tag}_block_qr_s']:.0f} s")

    def cv(self, candidates, keep):
        return selection.cross_validate(self.factors, list(range(K)), [K], candidates, self.labels, self.sizes,
                                        log=log, on_result=keep)


def select_and_fit(el: str, data_dir: Path, threads: int | None = None):
    d = MODELS / f"zuo-{el}"
    tg = TARGETS[el]
    t_all = time.perf_counter()
    timings = {}
    path, train, folds, always = training_split(el, data_dir)
    names = [basis_name(o, td) for o, td in CHAIN]
    log(f"zuo-{el}: {len(train)} configurations, {sum(c.natoms for c in train)} atoms")

    e_mean = round(float(np.mean([c.energy / c.natoms for c in train])), 6)
    E0s = [{el: 0.0}, {el: e_mean}]
    pairs = [(pr, {"default": {"E": we, "F": 1.0, "V": 1.0}}) for pr in PRIORS for we in E_WEIGHTS]
    out = {"element": el, "data": {"file": path.name, "sha256": sha256_file(path)}, "folds": K, "seed": SEED,
           "targets": {"E": TARGETS[el][0], "F": TARGETS[el][1]}, "score": COMBINE,
           "cutoffs_bond_lengths": list(CUTOFFS), "fold_sizes": [len(f) for f in folds],
           "results": [], "cutoff_results": [], "timings_s": timings}
    sink = d / "selection.json"

    def keeper(where):
        def keep(r):
            out[where].append(r)
            sink.write_text(json.dumps(jsonable(out), indent=1))
        return keep

    def cands(bases, prs, factor):
        return [{"basis": b, "rcut_bond_lengths": factor, "prior": pr, "weights": w, "E0": E0,
                 "solver": {"name": "blr"}} for b in bases for pr, w in prs for E0 in E0s]

    # stage 0: the cutoff, on the largest order-3 basis with the whole stage-1 grid
    mid = names[STAGE1 - 1]
    t0 = time.perf_counter()
    for f in CUTOFFS:
        run = Assembled(el, train, CHAIN[STAGE1 - 1:STAGE1], f, folds, always, threads, timings, f"cut{f}")
        run.cv(cands([mid], pairs, f), keeper("cutoff_results"))
        del run
    timings["stage0_s"] = time.perf_counter() - t0
    best_at = {f: min(score(r, tg)[0] for r in out["cutoff_results"] if r["candidate"]["rcut_bond_lengths"] == f)
               for f in CUTOFFS}
    factor = min(CUTOFFS, key=lambda f: best_at[f])
    out["rcut_bond_lengths"], out["rcut"] = factor, rcut_of(el, factor)
    log(f"  best mean score per cutoff {best_at}: rcut {factor} bond lengths")

    # stages 1 and 2 on the chain at that cutoff
    run = Assembled(el, train, CHAIN, factor, folds, always, threads, timings, "main")
    out["bases"] = run.sizes
    keep = keeper("results")
    for r in out["cutoff_results"]:
        if r["candidate"]["rcut_bond_lengths"] == factor:
            keep(r)
    t0 = time.perf_counter()
    run.cv(cands(names[:STAGE1 - 1], pairs, factor), keep)
    stage1 = list(out["results"])
    timings["stage1_s"] = time.perf_counter() - t0
    ranked = sorted(pairs, key=lambda pw: min(score(r, tg)[0] for r in stage1 if r["candidate"]["basis"] == mid
                                              and same(r["candidate"]["prior"], pw[0])
                                              and same(r["candidate"]["weights"], pw[1])))
    t0 = time.perf_counter()
    run.cv(cands(names[STAGE1:], ranked[:N_STAGE2], factor), keep)
    timings["stage2_s"] = time.perf_counter() - t0

    results = out["results"]
    chosen = selection.one_standard_error(results, lambda r: score(r, tg), fold_score=lambda r: fold_score(r, tg))
    best = min(results, key=lambda r: score(r, tg)[0])
    out["rule"] = ("paired one standard error: fewest basis functions among candidates whose mean per-fold "
                   "excess over the best, in E MAE/E target and in F MAE/F target, is within one standard "
                   "error of that excess; score = max(mean E MAE/E target, mean F MAE/F target)")
    out["best"], out["chosen"] = best["candidate"], chosen["candidate"]
    log(f"  best {best['candidate']} score {score(best, tg)}; chosen {chosen['candidate']} {score(chosen, tg)}")
    sink.write_text(json.dumps(jsonable(out), indent=1))

    cand = chosen["candidate"]
    b = names.index(cand["basis"])
    system, order = run.system, run.order
    if el in STUDY:
        t0 = time.perf_counter()
        study = {"basis_curve": {"prior": ranked[0][0], "weights": ranked[0][1]}}
        ncols = run.sizes[cand["basis"]]
        parts = selection.split_blocks(folds, LC_PARTS, SEED)
        blocks = [p for fp in parts for p in fp] + [always]
        lf = selection.BlockFactors(system, train, blocks, [el], run.E0ref, columns=order[:ncols])
        ids = [[f * LC_PARTS + j for j in range(LC_PARTS)] for f in range(K)]
        study["learning_curve"] = selection.learning_curve(lf, ids, [len(blocks) - 1], cand, run.labels, ncols,
                                                           log=log)
        del lf
        timings["study_s"] = time.perf_counter() - t0
        (d / "study.json").write_text(json.dumps(jsonable(study), indent=1))

    # the final fit: the chosen basis's columns of the assembled matrix, E0 re-referenced
    t0 = time.perf_counter()
    write_fit_yaml(el, CHAIN[b], out["rcut"], cand)
    cfg = fconfig.load_config(d / "fit.yaml", data_dir=data_dir)
    model = run.models[b]
    model.E0 = dict(cand["E0"])
    cols = order[run.where[b]]
    sub = assembly.LsqSystem(np.asfortranarray(system.A[:, cols]), assembly.with_E0(system, train, run.E0ref, cand["E0"]),
                             system.w, system.config, system.kind, timings["main_assembly_s"])
    run.factors = run.system = system = None
    buf = io.StringIO()
    with redirect_stdout(buf):
        model, report = run_fit(cfg, threads=threads, progress=False, prepared=(model, train, [], sub, None))
    print(buf.getvalue(), flush=True)
    # guard: the written model must predict the training energies it was fitted to (a column
    # order mix-up between the assembled system and the model gives errors of eV/atom)
    worst = max(abs(model.evaluate(c.numbers, c.positions, c.cell, c.pbc).energy - c.energy) / c.natoms
                for c in train[:: max(1, len(train) // 5)])
    if worst > 0.05:
        raise RuntimeError(f"zuo-{el}: the fitted model misses training energies by {worst:.3g} eV/atom")
    timings["final_fit_s"] = time.perf_counter() - t0
    timings["total_s"] = time.perf_counter() - t_all
    cfg.output_report.write_text(json.dumps(report, indent=2))
    sink.write_text(json.dumps(jsonable(out), indent=1))
    log(f"zuo-{el} done in {timings['total_s']:.0f} s")


def write_fit_yaml(el, basis, rcut, cand, why=None, chosen_by="hyperparameters chosen by 5-fold cross-validation",
                   solver=None):
    """models/zuo-<El>/fit.yaml for candidate ``cand`` (basis (order, totaldegree), rcut in Å; its
    ``basis_kw``, further ace1_model keywords, if any; weights naming the RMS-force groups rms0.. get
    ``data.force_groups``); ``why``: the header's lines on how it was chosen (default: by
    ``zuo_select``); ``solver``: default BLR with a 10-member committee."""
    solver = solver or {"name": "blr", "committee_size": 10}
    how = ("BLR" if solver["name"] == "blr" else
           f"ASP (lasso path to {solver['max_active']} functions), its support refitted by BLR")
    o, td = basis
    why = why or ["chosen by 5-fold cross-validation on the training split",
                  f"(`python -m tools.shipped_models.zuo_select --data-dir DIR {el}`; rule and candidates in selection.json)."]
    head = (f"# Zuo et al. 2020 benchmark, {el}: {why[0]}\n" + "".join(f"# {x}\n" for x in why[1:])
            + f"# Data: {SOURCE}.\n"
            f"# Refit from the repository root:  aceserver fit models/zuo-{el}/fit.yaml --data-dir DIR\n")
    raw = {"name": f"zuo-{el}",
           "description": f"Zuo et al. 2020 {el} training split, {how} with a 10-member committee; {chosen_by}",
           "model": {"elements": [el], "order": o, "totaldegree": list(td), "rcut": rcut, **cand.get("basis_kw", {})},
           "E0": dict(cand["E0"]),
           "data": {"relative_to": "data_dir", "train": f"ZuoEtAl2020/{el}_train.xyz", "source": SOURCE,
                    "energy_key": "energy", "force_key": "force",
                    **({"force_groups": N_GROUPS} if "rms0" in cand["weights"] else {})},
           "weights": cand["weights"], "prior": cand["prior"],
           "solver": solver,
           "validation_fraction": 0.0, "seed": 0,
           "output": {"model": f"zuo-{el}.json", "plots": "plots", "report": "report.json"}}
    (MODELS / f"zuo-{el}" / "fit.yaml").write_text(head + yaml.safe_dump(raw, sort_keys=False, allow_unicode=True))


def main(argv=None):
    ap = argparse.ArgumentParser(prog="python -m tools.shipped_models.zuo_select",
                                 description=__doc__.split("\n\n")[0])
    ap.add_argument("elements", nargs="+", choices=sorted(TARGETS))
    add_data_dir(ap)
    ap.add_argument("--threads", type=int, default=None, help="assembly threads (default: all CPUs)")
    args = ap.parse_args(argv)
    data_dir = data_dir_of(ap, args)
    for el in args.elements:
        select_and_fit(el, data_dir, args.threads)


if __name__ == "__main__":
    main()
