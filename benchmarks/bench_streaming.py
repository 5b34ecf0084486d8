"""Streaming and Dask fits against the in-memory fit: peak memory and wall time; prints numbers.

The Zuo Cu training split with the shipped zuo-Cu recipe (models/zuo-Cu/fit.yaml: 1041 functions, the
upstream recipe, since the nested CV; 827 after the CV refit, 2029 before; with 2029
the dense matrix alone is about 1.1 GiB). Each mode runs in a fresh process (so its peak memory is
its own) and reports the process's resident memory before assembly and its peak during assembly
and solve (:class:`aceserver.fitting.streaming.PeakMemory`), the reduction/assembly time and the
solve time; error tables are not computed.

    modes: in-memory   dense assembly on --threads threads, then the solver (the 2.3 GiB path)
           streaming   block-by-block reduction on --threads threads
           workers1    local Dask cluster, 1 worker process (1 thread)
           workers2    local Dask cluster, 2 worker processes (1 thread each)

    python benchmarks/bench_streaming.py [--cu PATH/Cu_train.xyz] [--modes in-memory,streaming,workers1,workers2]
                                          [--configs N] [--threads 2]

``--configs N`` keeps the first N training configurations (for a quick run; the memory comparison
needs the full split). Ratios: streaming/in-memory peak increase; workers2/workers1 wall time.
"""
from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
DEFAULT_CU = ROOT.parent / "shared/data/ZuoEtAl2020/Cu_train.xyz"


def child(mode: str, cu: str, n_configs: int | None, threads: int) -> dict:
    from aceserver.fitting import config as fconfig
    from aceserver.fitting import fit_model as driver
    from aceserver.fitting.workflow import load_data

    cfg = fconfig.load_config(ROOT / "models/zuo-Cu/fit.yaml")
    cfg.train = [Path(cu).resolve()]
    train, validation, E0 = load_data(cfg)
    if n_configs:
        train = train[:n_configs]
    model = fconfig.build_model(cfg.model, E0)
    model.E0 = dict(E0)
    kw = {}
    client = cluster_ = None
    if mode == "in-memory":
        kw = dict(streaming=False, threads=threads)
    elif mode == "streaming":
        kw = dict(streaming=True, threads=threads)
    elif mode.startswith("workers"):
        from dask.distributed import Client

        from aceserver.fitting import cluster
        cluster_ = cluster.local_cluster(int(mode[len("workers"):]))
        client = Client(cluster_)
        client.run(lambda: cluster.worker_model(cluster.model_definition(cfg.model, E0)) and None)  # build once
        kw = dict(reducer=cluster.DaskReducer(client, cluster.model_definition(cfg.model, E0), cfg.keys,
                                              n_basis=model.length_basis, progress=False))
    else:
        raise SystemExit(f"unknown mode {mode}")
    t0 = time.perf_counter()
    res = driver.acefit(model, train, weights=cfg.weights, prior=cfg.prior, solver=cfg.solver, seed=cfg.seed,
                        compute_errors=False, progress=False, **kw)
    wall = time.perf_counter() - t0
    if client is not None:
        client.close()
        cluster_.close()
    return {"mode": mode, "rows": res.shape[0], "n_basis": res.shape[1], "configs": len(train),
            "wall_s": wall, "assembly_s": res.timings["assembly_s"], "solve_s": res.timings["solve_s"],
            **res.run, "theta_head": [float(x) for x in model.parameters[:3]]}


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--cu", default=str(DEFAULT_CU))
    ap.add_argument("--modes", default="in-memory,streaming,workers1,workers2")
    ap.add_argument("--configs", type=int, default=None)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--child", help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.child:
        print("RESULT " + json.dumps(child(args.child, args.cu, args.configs, args.threads)), flush=True)
        return
    if not Path(args.cu).exists():
        raise SystemExit(f"{args.cu} not found (ACEData minibenchmarks/ZuoEtAl2020/Cu_train.xyz)")
    print(f"load average before: {os.getloadavg()}")
    results = {}
    for mode in args.modes.split(","):
        cmd = [sys.executable, __file__, "--child", mode, "--cu", args.cu, "--threads", str(args.threads)]
        if args.configs:
            cmd += ["--configs", str(args.configs)]
        out = subprocess.run(cmd, capture_output=True, text=True, env=dict(os.environ, PYTHONPATH=str(ROOT)))
        line = [x for x in out.stdout.splitlines() if x.startswith("RESULT ")]
        if out.returncode or not line:
            print(f"{mode}: failed\n{out.stderr[-3000:]}")
            continue
        r = json.loads(line[0][len("RESULT "):])
        results[mode] = r
        print(f"{mode:>10}: {r['configs']} configs, {r['rows']} rows x {r['n_basis']} functions; path {r['path']}; "
              f"RSS before {r['rss_before_gb']:.3f} GiB, peak {r['peak_rss_gb']:.3f} GiB "
              f"(+{r['peak_increase_gb']:.3f} GiB); assembly {r['assembly_s']:.1f} s "
              f"({r['rows'] / r['assembly_s']:.0f} rows/s), solve {r['solve_s']:.1f} s, wall {r['wall_s']:.1f} s; "
              f"load {os.getloadavg()[0]:.1f}", flush=True)
    if "in-memory" in results and "streaming" in results:
        a, b = results["in-memory"], results["streaming"]
        print(f"peak increase: streaming {b['peak_increase_gb']:.3f} GiB vs in-memory {a['peak_increase_gb']:.3f} GiB "
              f"(ratio {b['peak_increase_gb'] / a['peak_increase_gb']:.3f}); target: streaming <= 0.5 GB")
    if "workers1" in results and "workers2" in results:
        a, b = results["workers1"], results["workers2"]
        print(f"wall time 2 workers / 1 worker: {b['wall_s'] / a['wall_s']:.2f} (assembly "
              f"{b['assembly_s'] / a['assembly_s']:.2f}); target <= 0.6 on an otherwise idle 2-core machine")
    heads = {m: r["theta_head"] for m, r in results.items()}
    print(f"first parameters per mode (same model): {heads}")
    print(f"load average after: {os.getloadavg()}")


if __name__ == "__main__":
    main()
