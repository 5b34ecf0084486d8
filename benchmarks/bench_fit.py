"""Fitting benchmarks; prints numbers.

1. Si_tiny end to end (read, build the 223-function model, assemble, BLR with evidence maximisation,
   error tables), run twice in one process: the second run is the warm-cache figure
   (target: under 20 s on 2 cores).
2. Assembly of the Zuo Cu training split with order 3, totaldegree [25, 21, 17] (~1000 functions)
   (target: under 5 minutes on 2 cores); rows/s and peak memory (max RSS).

    python benchmarks/bench_fit.py [--threads 2] [--skip-cu] [--cu PATH/Cu_train.xyz]
"""
from __future__ import annotations

import argparse
import resource
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))


def peak_rss_gib() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2 ** 20   # kB on Linux


def si_tiny(threads):
    import aceserver
    from aceserver.fitting import acefit, data

    t0 = time.perf_counter()
    keys = data.Keys("dft_energy", "dft_force", "dft_virial")
    configs = data.read_configs(ROOT / "tests/data/Si_tiny.xyz", keys, elements=["Si"])
    t_read = time.perf_counter() - t0
    model = aceserver.ace1_model(elements=["Si"], order=3, totaldegree=12, rcut=5.5, E0={"Si": -158.54496821})
    t_build = time.perf_counter() - t0 - t_read
    weights = {"default": {"E": 30, "F": 1, "V": 1}, "liq": {"E": 10, "F": 0.66, "V": 0.25}}
    res = acefit(model, configs, weights=weights, solver={"name": "blr", "committee_size": 10},
                 threads=threads, progress=False)
    total = time.perf_counter() - t0
    n, m = res.shape
    print(f"  read {t_read:.2f} s, model {t_build:.2f} s, assembly {res.timings['assembly_s']:.2f} s "
          f"({n} x {m}, {n / res.timings['assembly_s']:.0f} rows/s), solve {res.timings['solve_s']:.2f} s, "
          f"errors {res.timings['errors_s']:.2f} s; total {total:.2f} s")
    rm = res.errors["train"]["rmse"]["set"]
    print(f"  set RMSE E {rm['E'] * 1e3:.3f} meV/atom, F {rm['F']:.4f} eV/Å, V {rm['V'] * 1e3:.2f} meV/atom; "
          f"sigma0^2 {res.solver_info['sigma0_sq']:.4g}, sigmae^2 {res.solver_info['sigmae_sq']:.4g}, "
          f"cond {res.solver_info['condition_number']:.3e}")
    return total


def si_tiny_cli():
    """`aceserver fit` on models/Si-tiny/fit.yaml as a fresh process (imports, numba cache load, plots)."""
    import subprocess
    import tempfile

    import yaml
    raw = yaml.safe_load((ROOT / "models/Si-tiny/fit.yaml").read_text())
    with tempfile.TemporaryDirectory() as tmp:
        raw["data"]["train"] = str(ROOT / "tests/data/Si_tiny.xyz")
        raw["output"] = {"model": f"{tmp}/si.json", "plots": f"{tmp}/plots"}
        cfg = Path(tmp) / "fit.yaml"
        cfg.write_text(yaml.safe_dump(raw))
        times = []
        for _ in range(2):
            t0 = time.perf_counter()
            subprocess.run([sys.executable, "-m", "aceserver.cli", "fit", str(cfg), "--quiet"], check=True,
                           cwd=ROOT, stdout=subprocess.DEVNULL)
            times.append(time.perf_counter() - t0)
    print(f"  aceserver fit (fresh process, with plots): {times[0]:.2f} s, again {times[1]:.2f} s")
    return times[1]


def cu_assembly(path, threads):
    import aceserver
    from aceserver.fitting import assembly, data

    configs = data.read_configs(path, data.Keys("energy", "force", "virial"), elements=["Cu"])
    t0 = time.perf_counter()
    model = aceserver.ace1_model(elements=["Cu"], order=3, totaldegree=[25, 21, 17])
    t_build = time.perf_counter() - t0
    nrows = sum(assembly.count_rows(c) for c in configs)
    print(f"  {len(configs)} configurations, {sum(c.natoms for c in configs)} atoms, {nrows} rows x "
          f"{model.length_basis} basis functions; design matrix {nrows * model.length_basis * 8 / 2**30:.2f} GiB; "
          f"model built in {t_build:.1f} s")
    # warm the kernels on one small configuration first (JIT compile / cache load is not assembly)
    small = min(configs, key=lambda c: c.natoms)
    t0 = time.perf_counter()
    model.basis_rows(small.numbers, small.positions, small.cell, small.pbc)
    print(f"  first basis_rows call (JIT/cache) {time.perf_counter() - t0:.1f} s")
    system = assembly.assemble(model, configs, None, threads=threads, progress=sys.stderr.isatty())
    print(f"  assembly {system.seconds:.1f} s with {threads} threads: {system.shape[0] / system.seconds:.0f} rows/s, "
          f"{len(configs) / system.seconds:.2f} configs/s; peak RSS {peak_rss_gib():.2f} GiB")
    return system.seconds


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--skip-cu", action="store_true")
    p.add_argument("--cu", default=str(ROOT.parent / "shared/data/ZuoEtAl2020/Cu_train.xyz"))
    args = p.parse_args(argv)
    print("Si_tiny end-to-end fit (BLR, committee 10), first run:")
    si_tiny(args.threads)
    print("Si_tiny end-to-end fit, second run (warm):")
    t = si_tiny(args.threads)
    print(f"  -> {t:.2f} s in process (target < 20 s)")
    print("Si_tiny with the CLI:")
    t = si_tiny_cli()
    print(f"  -> {t:.2f} s end to end (target < 20 s)")
    if not args.skip_cu:
        if not Path(args.cu).exists():
            print(f"Cu data not found at {args.cu}; pass --cu")
        else:
            print("Zuo Cu training split, order 3, totaldegree [25, 21, 17]:")
            t = cu_assembly(args.cu, args.threads)
            print(f"  -> {t:.1f} s (target < 300 s)")
    print(f"peak RSS {peak_rss_gib():.2f} GiB")


if __name__ == "__main__":
    main()
