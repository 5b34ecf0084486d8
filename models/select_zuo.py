"""Select and fit the Zuo et al. (2020) models by 5-fold cross-validation on their *training* splits.

    python models/select_zuo.py --data-dir DIR Si [Cu ...]   # select, fit, write selection.json etc.
    python models/select_zuo.py --cards Si [Cu ...]          # rewrite cards and plots from stored results

DIR holds ZuoEtAl2020/<El>_train.xyz (see models/README.md; default $ACESERVER_DATA). The Zuo test
splits are never read. One recipe for all six elements:

* basis: a nested chain of ace1 bases (ace1 defaults: rcut 2.5 bond lengths, Agnesi transforms),
  order 3 with totaldegree [12,10,8] (88 functions for one element), [16,12,10] (158), [20,16,12]
  (319), [24,20,16] (827), and order 4 [24,20,16,12] (954). Each basis is a
  subset of the next, so the largest is assembled once and every smaller one is a leading block of
  its columns (aceserver.fitting.selection.prefix_order);
* stage 1, on every basis up to 827 functions: algebraic prior p in {2, 4, 6} x energy weight
  w_E in {10, 30, 100} (force weight 1) x E0 in {0, mean training energy per atom};
* stage 2: the best (prior, w_E) pair of stage 1 (mean CV score on the 827-function basis),
  both E0, on the order-4 basis (954);
* BLR (evidence maximisation) throughout; the Zuo data have no config_type, so there are no
  per-type weights to choose.

Each candidate is scored per fold by s_k = E MAE_k / E target + F MAE_k / F target (targets: the best
published test-set MAE). Rule (one standard error): among candidates whose mean score is within one
standard error (over the 5 folds) of the best mean score, the one with the fewest basis functions,
then the lowest mean score. The chosen candidate is written to models/zuo-<El>/fit.yaml and fitted
on the whole training split (`aceserver fit` code path, reusing the assembled columns) with a
10-member committee. For Si and Cu also a study: CV error against basis size (best stage-1 prior and
weights) and against training-set size (the chosen candidate; 1/5 .. 5/5 of each training fold).
"""
from __future__ import annotations

import argparse
import io
import json
import os
import sys
import time
from contextlib import redirect_stdout
from pathlib import Path

import numpy as np
import yaml

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent))
sys.path.insert(0, str(HERE))

CHAIN = [(3, [12, 10, 8]), (3, [16, 12, 10]), (3, [20, 16, 12]), (3, [24, 20, 16]), (4, [24, 20, 16, 12])]
STAGE1 = 4                     # stage 1 on CHAIN[:STAGE1]; its last basis ranks the pairs for stage 2
P_VALUES = (2, 4, 6)
E_WEIGHTS = (10.0, 30.0, 100.0)
N_STAGE2 = 1
K, SEED, LC_PARTS = 5, 0, 5
STUDY = ("Si", "Cu")
# best published test-set MAE: energy (eV/atom), forces (eV/Å)
TARGETS = {"Ni": (0.33e-3, 0.010), "Cu": (0.22e-3, 0.005), "Li": (0.17e-3, 0.005),
           "Mo": (2.24e-3, 0.09), "Si": (2.21e-3, 0.06), "Ge": (1.79e-3, 0.05)}
SOURCE = ("ACEData repository (github.com/ACEsuit/ACEData), minibenchmarks/ZuoEtAl2020.tar.gz; "
          "unpack so that <data dir>/ZuoEtAl2020/<El>_train.xyz exists (see models/README.md)")


def basis_name(order, td) -> str:
    return f"order {order}, totaldegree {list(td)}"


def score(result, el):
    from aceserver.fitting.selection import target_score
    return target_score(result, TARGETS[el])


def log(msg):
    print(f"[{time.strftime('%H:%M:%S')}] {msg}", flush=True)


def select_and_fit(el: str, data_dir: Path, threads: int | None = None):
    import aceserver
    from aceserver.fitting import assembly, data, selection
    from aceserver.fitting.driver import jsonable

    d = HERE / f"zuo-{el}"
    t_all = time.perf_counter()
    timings = {}
    path = data_dir / "ZuoEtAl2020" / f"{el}_train.xyz"
    if not path.is_file():
        raise SystemExit(f"missing data file {path}; get it from: {SOURCE}")
    train = data.read_configs(path, data.Keys(energy="energy", force="force"), elements=[el])
    models = [aceserver.ace1_model(elements=[el], order=o, totaldegree=td) for o, td in CHAIN]
    names = [basis_name(o, td) for o, td in CHAIN]
    top = models[-1]
    order, where = selection.prefix_order(models[:-1], top)
    where.append(np.arange(top.length_basis))            # the top basis is the whole column order
    sizes = {n: m.length_basis for n, m in zip(names, models)}
    labels = [top.basis_labels[j] for j in order]
    E0ref = {el: 0.0}
    top.E0 = E0ref
    log(f"zuo-{el}: {len(train)} configurations, {sum(c.natoms for c in train)} atoms; bases {sizes}")

    t0 = time.perf_counter()
    system = assembly.assemble(top, train, None, threads=threads, progress=False)
    timings["assembly_s"] = time.perf_counter() - t0
    log(f"  assembled {system.shape} in {timings['assembly_s']:.0f} s")
    folds = selection.kfold(train, K, SEED)
    always = np.array([i for i, c in enumerate(train) if c.natoms == 1], dtype=np.int64)
    t0 = time.perf_counter()
    factors = selection.BlockFactors(system, train, folds + [always], [el], E0ref, columns=order)
    timings["block_qr_s"] = time.perf_counter() - t0
    log(f"  block factors in {timings['block_qr_s']:.0f} s")

    e_mean = round(float(np.mean([c.energy / c.natoms for c in train])), 6)
    E0s = [{el: 0.0}, {el: e_mean}]
    pairs = [({"name": "algebraic", "p": p}, {"default": {"E": we, "F": 1.0, "V": 1.0}})
             for p in P_VALUES for we in E_WEIGHTS]
    out = {"element": el, "data": {"file": path.name, "sha256": _sha256(path)}, "folds": K, "seed": SEED,
           "targets": {"E": TARGETS[el][0], "F": TARGETS[el][1]}, "bases": sizes,
           "fold_sizes": [len(f) for f in folds], "results": [], "timings_s": timings}
    sink = d / "selection.json"

    def keep(r):
        out["results"].append(r)
        sink.write_text(json.dumps(jsonable(out), indent=1))

    def cands(bases, prs):
        return [{"basis": b, "prior": pr, "weights": w, "E0": E0, "solver": {"name": "blr"}}
                for b in bases for pr, w in prs for E0 in E0s]

    cv = lambda cs: selection.cross_validate(factors, list(range(K)), [K], cs, labels, sizes, log=log,
                                             on_result=keep)
    t0 = time.perf_counter()
    stage1 = cv(cands(names[:STAGE1], pairs))
    timings["stage1_s"] = time.perf_counter() - t0
    ranked = sorted(pairs, key=lambda pw: min(score(r, el)[0] for r in stage1 if r["candidate"]["basis"] == names[STAGE1 - 1]
                                              and r["candidate"]["prior"] == pw[0]
                                              and r["candidate"]["weights"] == pw[1]))
    t0 = time.perf_counter()
    cv(cands(names[STAGE1:], ranked[:N_STAGE2]))
    timings["stage2_s"] = time.perf_counter() - t0

    results = out["results"]
    chosen = selection.one_standard_error(results, lambda r: score(r, el))
    best = min(results, key=lambda r: score(r, el)[0])
    out["rule"] = ("one standard error: fewest basis functions among candidates with mean score within one "
                   "standard error of the best; score per fold = E MAE/E target + F MAE/F target")
    out["best"], out["chosen"] = best["candidate"], chosen["candidate"]
    log(f"  best {best['candidate']} score {score(best, el)}; chosen {chosen['candidate']} {score(chosen, el)}")
    sink.write_text(json.dumps(jsonable(out), indent=1))

    cand = chosen["candidate"]
    b = names.index(cand["basis"])
    if el in STUDY:
        t0 = time.perf_counter()
        study = {"basis_curve": {"prior": ranked[0][0], "weights": ranked[0][1]}}
        ncols = sizes[cand["basis"]]
        parts = selection.split_blocks(folds, LC_PARTS, SEED)
        blocks = [p for fp in parts for p in fp] + [always]
        lf = selection.BlockFactors(system, train, blocks, [el], E0ref, columns=order[:ncols])
        ids = [[f * LC_PARTS + j for j in range(LC_PARTS)] for f in range(K)]
        study["learning_curve"] = selection.learning_curve(lf, ids, [len(blocks) - 1], cand, labels, ncols, log=log)
        del lf
        timings["study_s"] = time.perf_counter() - t0
        (d / "study.json").write_text(json.dumps(jsonable(study), indent=1))

    # the final fit: the chosen basis's columns of the assembled matrix, E0 re-referenced
    t0 = time.perf_counter()
    write_fit_yaml(el, CHAIN[b], cand)
    from aceserver.commands.fit import run_fit
    from aceserver.fitting import config as fconfig
    cfg = fconfig.load_config(d / "fit.yaml", data_dir=data_dir)
    model = models[b]
    model.E0 = dict(cand["E0"])
    cols = order[where[b]]
    sub = assembly.LsqSystem(np.asfortranarray(system.A[:, cols]), assembly.with_E0(system, train, E0ref, cand["E0"]),
                             system.w, system.config, system.kind, timings["assembly_s"])
    del factors, system
    buf = io.StringIO()
    with redirect_stdout(buf):
        model, report = run_fit(cfg, threads=threads, progress=False, prepared=(model, train, [], sub, None))
    print(buf.getvalue(), flush=True)
    timings["final_fit_s"] = time.perf_counter() - t0
    timings["total_s"] = time.perf_counter() - t_all
    cfg.output_report.write_text(json.dumps(report, indent=2))
    sink.write_text(json.dumps(jsonable(out), indent=1))
    log(f"zuo-{el} done in {timings['total_s']:.0f} s")


def recipe_subset(results: list, el: str) -> list:
    """The results of this recipe's candidates (stage 1, then stage 2 for its best pairs) among
    ``results`` (e.g. a stored run of a wider grid); raises if a needed candidate is missing."""
    names = [basis_name(o, td) for o, td in CHAIN]
    def pick(basis, p, we):
        return [r for r in results if r["candidate"]["basis"] == basis and r["candidate"]["prior"]["p"] == p
                and r["candidate"]["weights"]["default"]["E"] == we]
    stage1 = [r for b in names[:STAGE1] for p in P_VALUES for we in E_WEIGHTS for r in pick(b, p, we)]
    pairs = [(p, we) for p in P_VALUES for we in E_WEIGHTS]
    ranked = sorted(pairs, key=lambda pw: min(score(r, el)[0] for r in pick(names[STAGE1 - 1], *pw)))
    stage2 = [r for b in names[STAGE1:] for pw in ranked[:N_STAGE2] for r in pick(b, *pw)]
    if len(stage1) != 2 * STAGE1 * len(pairs) or len(stage2) != 2 * (len(CHAIN) - STAGE1) * N_STAGE2:
        raise ValueError(f"zuo-{el}: the stored results do not hold every candidate of this recipe")
    return stage1 + stage2


def rerank(el: str):
    """Re-apply this recipe and rule to a stored selection.json (which may hold a wider grid)."""
    from aceserver.fitting import selection
    path = HERE / f"zuo-{el}" / "selection.json"
    sel = json.loads(path.read_text())
    old = sel.get("chosen")
    extra = [r for r in sel["results"] if r not in (sub := recipe_subset(sel["results"], el))]
    sel["results"] = sub
    if extra:     # kept for the study (its basis curve), not ranked
        sel["extra_results"] = sel.get("extra_results", []) + extra
    chosen = selection.one_standard_error(sub, lambda r: score(r, el))
    sel["best"] = min(sub, key=lambda r: score(r, el)[0])["candidate"]
    sel["chosen"] = chosen["candidate"]
    path.write_text(json.dumps(sel, indent=1))
    print(f"zuo-{el}: chosen {sel['chosen']}" + (" (unchanged)" if sel["chosen"] == old else f" (was {old})"))


def _sha256(path):
    from aceserver.commands.fit import sha256_file
    return sha256_file(path)


def write_fit_yaml(el, basis, cand):
    o, td = basis
    head = (f"# Zuo et al. 2020 benchmark, {el}: chosen by 5-fold cross-validation on the training split\n"
            f"# (`python models/select_zuo.py --data-dir DIR {el}`; rule and candidates in selection.json).\n"
            f"# Data: {SOURCE}.\n"
            f"# Refit from the repository root:  aceserver fit models/zuo-{el}/fit.yaml --data-dir DIR\n")
    raw = {"name": f"zuo-{el}",
           "description": f"Zuo et al. 2020 {el} training split, BLR with a 10-member committee; "
                          "hyperparameters chosen by 5-fold cross-validation",
           "model": {"elements": [el], "order": o, "totaldegree": list(td)},
           "E0": dict(cand["E0"]),
           "data": {"relative_to": "data_dir", "train": f"ZuoEtAl2020/{el}_train.xyz", "source": SOURCE,
                    "energy_key": "energy", "force_key": "force"},
           "weights": cand["weights"], "prior": cand["prior"],
           "solver": {"name": "blr", "committee_size": 10},
           "validation_fraction": 0.0, "seed": 0,
           "output": {"model": f"zuo-{el}.json", "plots": "plots", "report": "report.json"}}
    (HERE / f"zuo-{el}" / "fit.yaml").write_text(head + yaml.safe_dump(raw, sort_keys=False, allow_unicode=True))


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("elements", nargs="+", choices=sorted(TARGETS))
    ap.add_argument("--data-dir", default=os.environ.get("ACESERVER_DATA"),
                    help="directory holding ZuoEtAl2020/<El>_train.xyz (default $ACESERVER_DATA)")
    ap.add_argument("--threads", type=int, default=None, help="assembly threads (default: all CPUs)")
    ap.add_argument("--cards", action="store_true", help="only rewrite cards and plots from stored results")
    ap.add_argument("--rerank", action="store_true", help="re-apply the recipe and rule to stored results")
    args = ap.parse_args(argv)
    if args.rerank:
        for el in args.elements:
            rerank(el)
        return
    if args.cards:
        from zuo_cards import readme_tables, write_card
        for el in args.elements:
            write_card(el)
        readme_tables()
        return
    if not args.data_dir:
        ap.error("give --data-dir DIR or set ACESERVER_DATA (the directory holding ZuoEtAl2020/)")
    for el in args.elements:
        select_and_fit(el, Path(args.data_dir), args.threads)


if __name__ == "__main__":
    main()
