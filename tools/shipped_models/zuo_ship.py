"""Ship what the nested cross-validation says: the upstream recipe where the selection procedure does
not beat it.

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

import argparse
import io
import json
import time
from contextlib import redirect_stdout
from pathlib import Path

from aceserver.fitting import config as fconfig
from aceserver.fitting.workflow import run_fit

from .common import MODELS
from .zuo_cards import write_card
from .zuo_recipe import TARGETS, add_data_dir, data_dir_of, parse_basis, rcut_of
from .zuo_select import log, write_fit_yaml


def ship(el: str, data_dir: Path, threads: int | None = None) -> dict | None:
    d = MODELS / f"zuo-{el}"
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
    cfg = fconfig.load_config(d / "fit.yaml", data_dir=data_dir)
    t0 = time.perf_counter()
    buf = io.StringIO()
    with redirect_stdout(buf):
        model, report = run_fit(cfg, threads=threads, progress=False)
    print(buf.getvalue(), flush=True)
    cfg.output_report.write_text(json.dumps(report, indent=2))
    log(f"zuo-{el}: recipe fitted ({model.length_basis} functions) in {time.perf_counter() - t0:.0f} s")
    write_card(el)
    return report


def main(argv=None):
    ap = argparse.ArgumentParser(prog="python -m tools.shipped_models.zuo_ship", description=__doc__.split("\n\n")[0])
    ap.add_argument("elements", nargs="+", choices=sorted(TARGETS))
    add_data_dir(ap)
    ap.add_argument("--threads", type=int, default=None, help="assembly threads (default: all CPUs)")
    args = ap.parse_args(argv)
    data_dir = data_dir_of(ap, args)
    for el in args.elements:
        ship(el, data_dir, args.threads)


if __name__ == "__main__":
    main()
