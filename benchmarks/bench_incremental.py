"""Incremental refit against refitting all: adding 10 configurations to zuo-Cu's 262.

The shipped zuo-Cu recipe (models/zuo-Cu/fit.yaml: BLR with a 10-member committee, 827 basis
functions) fitted on the 262 configurations of ZuoEtAl2020/Cu_train.xyz with its state kept
(``fit_with_state``). The 10 new configurations are rotated copies of 10 training frames (a seeded
random rotation of positions, cell, forces and virial: labelled data exactly as DFT would give
them, with new rows; the data set ships no further Cu frames). Then, alternating, in the same
process, ``rounds`` times:

    update    incremental.update(model, state, new10)           (the rows of the 10 only)
    scratch   acefit on all 272 from scratch, the default path  (as `aceserver fit` would)
    stream    acefit on all 272 from scratch, streaming path    (--scratch-streaming)

Printed: medians and all rounds (s), the ratio scratch/update, the cost split of the update —
new rows (basis evaluation of the 10 and the QR of their rows, also timed apart on one thread), the merge into the
262's factors (QR update), the solve (combination of the groups and BLR: SVD, evidence,
committee) — and the relative difference of the parameters (update vs scratch).

    python benchmarks/bench_incremental.py --data-dir DIR [--rounds 3] [--threads 2]
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

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from aceserver.fitting import assembly, data, incremental, streaming  # noqa: E402
from aceserver.fitting import config as fconfig  # noqa: E402
from aceserver.fitting import fit_model as driver  # noqa: E402


def rotated_copies(configs, n, seed=0):
    """n configurations: frames spread over the set, each rotated by a random rotation (Å, eV/Å, eV)."""
    from scipy.spatial.transform import Rotation
    rng = np.random.default_rng(seed)
    idx = np.linspace(0, len(configs) - 1, n).round().astype(int)
    out = []
    for k, i in enumerate(idx):
        c = configs[i]
        Q = Rotation.random(random_state=rng).as_matrix()
        out.append(data.Config(
            numbers=c.numbers.copy(), positions=c.positions @ Q.T, cell=c.cell @ Q.T, pbc=c.pbc.copy(),
            energy=c.energy, forces=None if c.forces is None else c.forces @ Q.T,
            virial=None if c.virial is None else Q @ c.virial @ Q.T, config_type=c.config_type,
            source="rotated", frame=k))
    return out


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--data-dir", required=True, help="folder holding ZuoEtAl2020/Cu_train.xyz")
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--new", type=int, default=10, help="configurations added")
    ap.add_argument("--scratch-streaming", action="store_true", help="also time a streaming scratch fit")
    a = ap.parse_args(argv)

    cfg = fconfig.load_config(ROOT / "models/zuo-Cu/fit.yaml", data_dir=a.data_dir)
    cfg.output_active_set = False                  # not part of either path being compared
    tmp = Path(tempfile.mkdtemp(prefix="bench_incremental_"))
    t0 = time.perf_counter()
    model, _, state = incremental.fit_with_state(cfg, output=tmp / "zuo-Cu.json", threads=a.threads,
                                                 plots=False, progress=False, out=io.StringIO())
    t_fit = time.perf_counter() - t0
    train = data.read_configs(cfg.train[0], cfg.keys, elements=model.elements)
    new = rotated_copies(train, a.new)
    union = train + new
    rows_new = sum(assembly.count_rows(c) for c in new)
    print(f"zuo-Cu: {model.length_basis} basis functions; {len(train)} configurations "
          f"({state.factors.total_rows} rows) + {len(new)} new ({rows_new} rows); threads {a.threads}")
    print(f"initial fit with state: {t_fit:.1f} s (state {state.factors.nbytes() / 2**20:.1f} MiB)")

    def scratch(streaming_path):
        m = fconfig.build_model(cfg.model, dict(model.E0))
        m.E0 = dict(model.E0)
        t = time.perf_counter()
        r = driver.acefit(m, union, weights=cfg.weights, prior=cfg.prior, solver=cfg.solver, seed=cfg.seed,
                          threads=a.threads, progress=False, compute_errors=False,
                          streaming=True if streaming_path else None)
        return time.perf_counter() - t, m, r

    def rows_apart():
        """(basis evaluation, QR of the new rows) timed apart, one thread each."""
        t = time.perf_counter()
        rows = [r for c in new for r in streaming.config_rows(model, c, model.elements, model.E0)]
        t1 = time.perf_counter()
        gf = streaming.GroupFactors(model.length_basis, 1 + len(model.elements))
        for label, A, Y in rows:
            gf.add(label, A, Y)
        gf.flush()
        return t1 - t, time.perf_counter() - t1

    rows_apart()                                                  # warm-up
    times = {"update": [], "scratch": [], "stream": []}
    split = {"basis_eval_s": [], "qr_new_s": [], "new_rows_s": [], "merge_s": [], "solve_s": []}
    diffs = []
    for _ in range(a.rounds):
        t = time.perf_counter()
        upd, rep, _ = incremental.update(model, state, new, name="rotated10", threads=a.threads,
                                         compute_errors=False)
        times["update"].append(time.perf_counter() - t)
        for k in ("new_rows_s", "merge_s", "solve_s"):
            split[k].append(rep["timings_s"][k])
        b, q = rows_apart()
        split["basis_eval_s"].append(b)
        split["qr_new_s"].append(q)
        ts, ref, res = scratch(False)
        times["scratch"].append(ts)
        path = res.run["path"]
        if a.scratch_streaming:
            times["stream"].append(scratch(True)[0])
        diffs.append(float(np.linalg.norm(upd.parameters - ref.parameters) / np.linalg.norm(ref.parameters)))

    med = {k: statistics.median(v) for k, v in times.items() if v}
    print(f"update  (10 new):         median {med['update']:.2f} s   rounds {[round(x, 2) for x in times['update']]}")
    print(f"scratch ({path}, 272):  median {med['scratch']:.2f} s   rounds {[round(x, 2) for x in times['scratch']]}")
    if "stream" in med:
        print(f"scratch (streaming, 272): median {med['stream']:.2f} s   rounds {[round(x, 2) for x in times['stream']]}")
    print(f"ratio scratch/update: {med['scratch'] / med['update']:.1f}x"
          + (f"; streaming scratch/update: {med['stream'] / med['update']:.1f}x" if "stream" in med else ""))
    s = {k: statistics.median(v) for k, v in split.items()}
    print(f"update cost split (medians): new rows {s['new_rows_s']:.3f} s on {a.threads} threads (timed apart on "
          f"one thread: basis evaluation {s['basis_eval_s']:.3f} s, QR of their rows {s['qr_new_s']:.3f} s), "
          f"merge into the 262's factors (QR update) {s['merge_s']:.3f} s, solve (combine + BLR) {s['solve_s']:.3f} s")
    print(f"parameters, update vs scratch: relative difference {max(diffs):.2e}")


if __name__ == "__main__":
    main()
