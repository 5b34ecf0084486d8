"""Refit-time cost of keeping γ across a learning refit: the active set's extension
(`fitting.active_set_extend`, what `ModelLearner` does before each swap) beside the refit itself
(`incremental.update_batches`), in the same run, alternating; prints numbers, asserts nothing.

zuo-Cu (models/zuo-Cu/fit.yaml: 827 basis functions, L = 827 descriptor columns) fitted with its
state on ZuoEtAl2020/Cu_train.xyz (262 configurations, `fit_with_state`); the posted batch is
`--new` rotated copies of training frames (bench_incremental's `rotated_copies`: labelled as DFT
would give them, new rows). The active set extended is the shipped models/zuo-Cu/zuo-Cu.activeset.npz
(the shipped model has the recipe's basis, and the descriptor rows do not depend on the parameters:
the extension checks both models' rows are equal). Per round, BLAS on `--threads` (the service's
refit runs on --kernel-threads, 1 by default):

    refit     incremental.update_batches(model, state, [batch])        (the new rows, merge, solve)
    extend    extend_active_set(refitted, old sidecar, batch, previous=shipped model)
    attach    the sidecar written, then attached from the file (rows recomputed, LU, log|det| check)

With --rebuild, the extended set is then compared with a rebuild over the training data and the
posted batch (`build_active_set`, what the service cannot do: it does not have the training files):
log |det A| of both, and γ of the training atoms under each (the extension does not re-read them).

    python benchmarks/bench_learn_activeset.py --data-dir DIR [--rounds 3] [--new 10] [--threads 1]
                                               [--strain 0.95] [--rebuild]
"""
from __future__ import annotations

import argparse
import io
import statistics
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
from threadpoolctl import threadpool_limits

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from bench_incremental import rotated_copies  # noqa: E402
from aceserver.active_sets import attach_active_set_file  # noqa: E402
from aceserver.evaluation.uncertainty import extrapolation_grade  # noqa: E402
from aceserver.fitting import data, incremental  # noqa: E402
from aceserver.fitting import config as fconfig  # noqa: E402
from aceserver.fitting.active_set_build import build_active_set  # noqa: E402
from aceserver.fitting.active_set_extend import extend_active_set  # noqa: E402
from aceserver.io import activeset_file  # noqa: E402
from aceserver.loading import load_model  # noqa: E402


def strained(teacher, c, factor):
    """c with positions and cell scaled by `factor`, labelled by the teacher (eV, eV/Å; no virial)."""
    pos, cell = c.positions * factor, c.cell * factor
    ev = teacher.evaluate(c.numbers, pos, cell, c.pbc)
    return data.Config(numbers=c.numbers, positions=pos, cell=cell, pbc=c.pbc, energy=float(ev.energy),
                       forces=ev.forces, config_type=c.config_type, source="strained", frame=c.frame)


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--data-dir", required=True, help="folder holding ZuoEtAl2020/Cu_train.xyz")
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--new", type=int, default=10, help="configurations posted")
    ap.add_argument("--strain", type=float, default=None,
                    help="scale the posted copies by this factor (e.g. 0.95), labelled by the shipped model "
                         "(energy, forces): rows outside the old set, so MaxVol swaps")
    ap.add_argument("--rebuild", action="store_true", help="compare with a rebuild over the training data + batch")
    a = ap.parse_args(argv)

    cfg = fconfig.load_config(ROOT / "models/zuo-Cu/fit.yaml", data_dir=a.data_dir)
    cfg.output_active_set = False
    tmp = Path(tempfile.mkdtemp(prefix="bench_learn_activeset_"))
    t0 = time.perf_counter()
    model, _, state = incremental.fit_with_state(cfg, output=tmp / "zuo-Cu.json", threads=2, plots=False,
                                                 progress=False, out=io.StringIO())
    print(f"initial fit with state: {time.perf_counter() - t0:.1f} s")
    shipped_path = ROOT / "models/zuo-Cu/zuo-Cu.json"
    shipped = load_model(shipped_path, active_set=False)
    env = activeset_file.read(activeset_file.sidecar_path(shipped_path))
    train = data.read_configs(cfg.train[0], cfg.keys, elements=model.elements)
    new = rotated_copies(train, a.new)
    if a.strain is not None:
        new = [strained(shipped, c, a.strain) for c in new]
    batch = [("posted-v2", "-", new)]
    print(f"zuo-Cu: L {model.descriptor_sizes}; {len(new)} configurations posted ({sum(c.natoms for c in new)} "
          f"atoms); BLAS threads {a.threads}")

    def refit():
        t = time.perf_counter()
        upd = incremental.update_batches(model, state, batch, threads=a.threads, progress=False,
                                         compute_errors=False)[0]
        return time.perf_counter() - t, upd

    def carry(upd):
        t = time.perf_counter()
        build = extend_active_set(upd, env, new, previous=shipped)
        t1 = time.perf_counter()
        path = tmp / "carried.activeset.npz"
        build.save(path)
        attach_active_set_file(upd, path)
        return t1 - t, time.perf_counter() - t1, build

    with threadpool_limits(limits=a.threads, user_api="blas"):
        carry(refit()[1])                                   # warm-up: numba kernels from the cache
        times = {"refit": [], "extend": [], "attach": []}
        for _ in range(a.rounds):
            t_refit, upd = refit()
            t_ext, t_att, build = carry(upd)
            times["refit"].append(t_refit)
            times["extend"].append(t_ext)
            times["attach"].append(t_att)
    med = {k: statistics.median(v) for k, v in times.items()}
    for k, v in times.items():
        print(f"{k:7s} median {med[k]:.3f} s   rounds {[round(x, 3) for x in v]}")
    print(f"(extend + attach) / refit: {(med['extend'] + med['attach']) / med['refit']:.2f}")
    e = build.elements["Cu"]
    old_logdet = float(env.log_abs_det[0])
    D = np.vstack([upd.descriptors(c.numbers, c.positions, c.cell, c.pbc) for c in new])
    g = extrapolation_grade(D, e.active_set.inverse)
    print(f"log|det A| {old_logdet:.3f} -> {e.active_set.log_abs_det:.3f}; rows added {e.added}, swaps "
          f"{e.active_set.swaps}, passes {e.active_set.passes}; max γ of the posted atoms {g.max():.9f}")
    if a.rebuild:
        t = time.perf_counter()
        full = build_active_set(upd, train + new).elements["Cu"].active_set
        print(f"rebuild over {len(train)} + {len(new)} configurations: {time.perf_counter() - t:.1f} s, "
              f"log|det A| {full.log_abs_det:.3f} (extended {e.active_set.log_abs_det:.3f})")
        D = np.vstack([upd.descriptors(c.numbers, c.positions, c.cell, c.pbc) for c in train])
        for what, inv in (("extended", e.active_set.inverse), ("rebuilt", full.inverse)):
            g = extrapolation_grade(D, inv)
            print(f"γ of the {len(D)} training atoms under the {what} set: max {g.max():.6f}, "
                  f"above 1 + 1e-8: {(g > 1 + 1e-8).sum()}, above 1.1: {(g > 1.1).sum()}")


if __name__ == "__main__":
    main()
