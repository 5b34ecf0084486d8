"""Choose hyperparameters for a Zuo et al. model on a validation split of its *training* split, then fit.

    python models/select_zuo.py Cu [Ni ...]
    python models/select_zuo.py --rerank Cu [...]   # re-apply the rule to a stored selection.json

The basis (order 3, totaldegree [28, 24, 20], otherwise ace1 defaults; ACEpotentials.jl
examples/zuobench uses [25, 21, 17]) is fixed by models/zuo-<El>/fit.yaml. Held out: validation_fraction (0.1, seeded) of the training
split; the Zuo test split is never read. Candidates differ only in what leaves the design matrix
unchanged, so one assembly serves all of them (weights only rescale rows: see
aceserver.fitting.selection.evaluate_candidates):

* E0: 0 (upstream zuobench) or the mean energy per atom of the training configurations;
* smoothness prior: algebraic with p in {2, 3, 4, 6}; solver BLR (evidence maximisation);
* energy weight w_E in {1, 3, 10, 30, 100} (upstream 30) with force weight 1 (virial weight 1; the
  Zuo data have no virials). An energy row is weighted w_E/sqrt(N), a force component 1.

Selection rule (the same for every element), on the validation split: first the most of the two
targets met (E MAE < E target, F MAE < F target), then the smallest E MAE / E target + F MAE / F target;
the targets are the best published test-set MAE (TARGETS, from the issue; published numbers, not data).
(Ranking by the larger ratio alone was tried: where the force target is out of reach it ignores the
energy, e.g. for Ni it took w_E 3 with E 0.42 meV/atom over w_E 10 with E 0.28 at the same F.) It is written into fit.yaml,
fitted (the same code path as `aceserver fit`), saved, and the card gets the selection table.
"""
from __future__ import annotations

import io
import json
import sys
import time
from contextlib import redirect_stdout
from pathlib import Path

import numpy as np
import yaml

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent))
sys.path.insert(0, str(HERE))

P_VALUES = (2, 3, 4, 6)
E_WEIGHTS = (1.0, 3.0, 10.0, 30.0, 100.0)
# best published test-set MAE: energy (eV/atom), forces (eV/Å)
TARGETS = {"Ni": (0.33e-3, 0.010), "Cu": (0.22e-3, 0.005), "Li": (0.17e-3, 0.005),
           "Mo": (2.24e-3, 0.09), "Si": (2.21e-3, 0.06), "Ge": (1.79e-3, 0.05)}


def score(result: dict, el: str) -> tuple[int, float]:
    """The selection criterion, smallest first: (minus the number of the two validation MAE below their
    targets, the sum of the E and F validation MAE / target ratios)."""
    (et, ft), mae = TARGETS[el], result["validation"]["mae"]
    re, rf = mae["E"] / et, mae["F"] / ft
    return (-int(re < 1) - int(rf < 1), re + rf)


def select_and_fit(el: str, threads=None):
    from aceserver.commands.fit import load_data, run_fit
    from aceserver.fitting import assembly, selection
    from aceserver.fitting import config as fconfig
    from aceserver.fitting.driver import jsonable
    from refit import card, error_rows

    d = HERE / f"zuo-{el}"
    cfg = fconfig.load_config(d / "fit.yaml")
    cfg.E0 = {el: 0.0}
    t0 = time.perf_counter()
    train, val, E0 = load_data(cfg)
    model = fconfig.build_model(cfg.model, E0)
    model.E0 = dict(E0)
    print(f"zuo-{el}: {len(train)} train / {len(val)} validation configurations; "
          f"{model.length_basis} basis functions (built in {time.perf_counter() - t0:.1f} s)")
    ts = assembly.assemble(model, train, cfg.weights, threads=threads)
    vs = assembly.assemble(model, val, cfg.weights, threads=threads)
    print(f"  assembled {ts.shape} in {ts.seconds:.1f} s ({ts.shape[0] / ts.seconds:.0f} rows/s), "
          f"validation {vs.shape} in {vs.seconds:.1f} s")
    e_mean = float(np.mean([c.energy / c.natoms for c in train if c.energy is not None]))
    cands = [{"E0": {el: e0}, "prior": {"name": "algebraic", "p": p}, "solver": {"name": "blr"},
              "weights": {"default": {"E": we, "F": 1.0, "V": 1.0}}}
             for p in P_VALUES for we in E_WEIGHTS for e0 in (0.0, round(e_mean, 6))]   # E0 innermost:
    # candidates differing only in E0 share one SVD
    t1 = time.perf_counter()
    results = selection.evaluate_candidates(model, train, val, ts, vs, cands, cfg.weights, cfg.seed,
                                            key=lambda r: score(r, el))
    best = results[0]["candidate"]
    print(f"  {len(cands)} candidates in {time.perf_counter() - t1:.1f} s; "
          f"selected: E0 {best['E0']}, prior {best['prior']}, weights {best['weights']}")

    # write the choice into fit.yaml (so `aceserver fit models/zuo-<El>/fit.yaml` reproduces it)
    write_choice(el, best)
    cfg = fconfig.load_config(d / "fit.yaml")

    # the final fit reuses the assembled systems, re-referenced to the chosen E0
    new_E0 = dict(best["E0"])
    ts2 = assembly.LsqSystem(ts.A, assembly.with_E0(ts, train, model.E0, new_E0), ts.w, ts.config, ts.kind, ts.seconds)
    vs2 = assembly.LsqSystem(vs.A, assembly.with_E0(vs, val, model.E0, new_E0), vs.w, vs.config, vs.kind, vs.seconds)
    model.E0 = new_E0
    buf = io.StringIO()
    with redirect_stdout(buf):
        model, report = run_fit(cfg, threads=threads, progress=False, prepared=(model, train, val, ts2, vs2))
    print(buf.getvalue())
    report["metadata_fit"] = model.metadata.get("fit", {})
    cfg.output_report.write_text(json.dumps({k: v for k, v in report.items() if k != "metadata_fit"}, indent=2))
    (d / "selection.json").write_text(json.dumps(jsonable(results), indent=2))
    (d / "README.md").write_text(zuo_card(el, cfg, report, jsonable(results)))


def zuo_card(el, cfg, report, results) -> str:
    """The model card plus the selection table (``report`` needs "metadata_fit")."""
    from refit import card

    text = card(f"zuo-{el}", cfg.raw, report, cfg.output_model, "")
    text = text.replace("Deterministic for the seed in fit.yaml.", "Deterministic for the seed in fit.yaml. "
                        f"To redo the selection as well: `python models/select_zuo.py {el}` (its final fit reuses the "
                        "selection's assembled rows, re-referenced to the chosen E0, so it agrees with "
                        "`aceserver fit` to about 1e-8 relative in the parameters).")
    meta = report["metadata_fit"]
    et, ft = TARGETS[el]
    nval, ntrain = meta["n_validation_configs"], meta["n_train_configs"]
    v = report["errors"]["validation"]["mae"]["default"]
    verdict = lambda x, t: "below" if x < t else "not below"
    sel = ["", "## Against the targets", "",
           f"Validation MAE of this model: E {v['E'] * 1e3:.3f} meV/atom ({verdict(v['E'], et)} the target "
           f"{et * 1e3:g}), F {v['F']:.4f} eV/Å ({verdict(v['F'], ft)} the target {ft:g}); targets: the best "
           "published test-set MAE. The validation split is small, so these are estimates, not test errors.",
           "", "## Hyperparameter selection", "",
           f"On the validation split ({nval} of the {ntrain + nval} training-split configurations, "
           "seeded); the Zuo test split was not used. Ranked by the number of targets met (E MAE < E target, "
           "F MAE < F target; more first), then by the score E MAE / E target + F MAE / F target, the targets being "
           f"the best published test-set MAE (E {et * 1e3:g} meV/atom, F {ft:g} eV/Å). "
           "All candidates share the basis and the BLR solver; w_E is the energy weight (force weight 1).", "",
           "| E0 (eV) | prior p | w_E | E MAE (meV/atom) | F MAE (eV/Å) | E RMSE (meV/atom) | F RMSE (eV/Å) | "
           "targets met | score |", "|---|---|---|---|---|---|---|---|---|"]
    for r in sorted(results, key=lambda r: score(r, el)):
        c, v = r["candidate"], r["validation"]
        met, sc = score(r, el)
        sel.append(f"| {c['E0'][el]} | {c['prior']['p']} | {c['weights']['default']['E']:g} | "
                   f"{v['mae']['E'] * 1e3:.3f} | {v['mae']['F']:.4f} | {v['rmse']['E'] * 1e3:.3f} | "
                   f"{v['rmse']['F']:.4f} | {-met} | {sc:.3f} |")
    return text + "\n".join(sel) + "\n"


def write_choice(el: str, best: dict):
    """Write the chosen E0, prior and weights into models/zuo-<El>/fit.yaml (comments kept)."""
    d = HERE / f"zuo-{el}"
    text = (d / "fit.yaml").read_text()
    head = "".join(line + "\n" for line in text.splitlines() if line.startswith("#"))
    raw = yaml.safe_load(text)
    raw["E0"], raw["prior"], raw["weights"] = best["E0"], best["prior"], best["weights"]
    (d / "fit.yaml").write_text(head + yaml.safe_dump(raw, sort_keys=False))


def rerank(el: str):
    """Re-apply the selection rule to the stored selection.json and write the choice into fit.yaml
    (then `python models/refit.py zuo-<El>` fits it); the candidates' validation errors are unchanged."""
    d = HERE / f"zuo-{el}"
    results = json.loads((d / "selection.json").read_text())
    results.sort(key=lambda r: score(r, el))
    (d / "selection.json").write_text(json.dumps(results, indent=2))
    write_choice(el, results[0]["candidate"])
    print(f"zuo-{el}: selected {results[0]['candidate']}")


if __name__ == "__main__":
    if sys.argv[1:2] == ["--rerank"]:
        for el in sys.argv[2:]:
            rerank(el)
    else:
        for el in sys.argv[1:]:
            select_and_fit(el)
