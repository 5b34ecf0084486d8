"""Choose hyperparameters for a Zuo et al. model on a validation split of its *training* split, then fit.

    python models/select_zuo.py Cu [Ni ...]

The basis (order 3, totaldegree [25, 21, 17], ace1 defaults, as ACEpotentials.jl examples/zuobench)
is fixed by models/zuo-<El>/fit.yaml. Held out: validation_fraction (0.1, seeded) of the training
split; the Zuo test split is never read. Candidates differ only in what leaves the design matrix
unchanged, so one assembly serves all of them:

* E0: 0 (upstream zuobench) or the mean energy per atom of the training configurations;
* smoothness prior: algebraic with p in {2, 3, 4, 6}; solver BLR (evidence maximisation).

The candidate with the smallest weighted validation RMSE (the fit's own objective) is written into
fit.yaml, fitted (the same code path as `aceserver fit`), saved, and the card gets the selection table.
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
    cands = [{"E0": {el: e0}, "prior": {"name": "algebraic", "p": p}, "solver": {"name": "blr"}}
             for e0 in (0.0, round(e_mean, 6)) for p in P_VALUES]
    results = selection.evaluate_candidates(model, train, val, ts, vs, cands, cfg.weights, cfg.seed)
    best = results[0]["candidate"]
    print(f"  selected: E0 {best['E0']}, prior {best['prior']}")

    # write the choice into fit.yaml (so `aceserver fit models/zuo-<El>/fit.yaml` reproduces it)
    text = (d / "fit.yaml").read_text()
    head = "".join(line + "\n" for line in text.splitlines() if line.startswith("#"))
    raw = dict(cfg.raw)
    raw["E0"] = best["E0"]
    raw["prior"] = best["prior"]
    (d / "fit.yaml").write_text(head + yaml.safe_dump(raw, sort_keys=False))
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
    nval, ntrain = meta["n_validation_configs"], meta["n_train_configs"]
    sel = ["", "## Hyperparameter selection", "",
           f"On the validation split ({nval} of the {ntrain + nval} training-split configurations, "
           "seeded); the Zuo test split was not used. Ranked by the weighted validation RMSE. "
           "All candidates share the basis, weights and BLR solver.", "",
           "| E0 (eV) | prior p | E MAE (meV/atom) | F MAE (eV/Å) | weighted RMSE |", "|---|---|---|---|---|"]
    for r in results:
        c = r["candidate"]
        sel.append(f"| {c['E0'][el]} | {c['prior']['p']} | {r['validation']['mae']['E'] * 1e3:.3f} | "
                   f"{r['validation']['mae']['F']:.4f} | {r['weighted_rmse']:.5g} |")
    return text + "\n".join(sel) + "\n"


if __name__ == "__main__":
    for el in sys.argv[1:]:
        select_and_fit(el)
