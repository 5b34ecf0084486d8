"""Export the shipped models to .yace and compare pyace with our evaluator: export time, energy,
force and stress differences, and (zuo-Si) µs/atom of pyace against `model.evaluate` on the
rattled 64-atom diamond cell, timed alternately in one run. Needs pyace (pip install '.[pyace]').

    python benchmarks/bench_yace_export.py [--calls 20] [--nradbase 60] [--models zuo-Si]
"""
import argparse
import tempfile
import time
from pathlib import Path

import ase.io
import numpy as np
from pyace import PyACECalculator

import aceserver
from aceserver.benchmarking import build_structure
from aceserver.pacemaker.export import export_yace, verify_with_pyace

ROOT = Path(__file__).resolve().parents[1]


def structures_for(name, model):
    cells = [build_structure("diamond64", model.elements, seed=s) for s in (0, 1)]
    if name == "Si-tiny":
        frames = ase.io.read(ROOT / "tests/data/Si_tiny.xyz", ":")
        return cells + [a for a in frames if len(a) > 1]
    if name == "TiAl-tutorial":
        frames = ase.io.read(ROOT / "tests/data/TiAl_tutorial.xyz", ":")
        return cells + [a for a in frames if len(a) > 2]
    return cells


def alternate(fns, calls):
    """Median seconds per call of each function, calls interleaved round-robin."""
    for fn in fns:
        fn()
    times = [[] for _ in fns]
    for _ in range(calls):
        for k, fn in enumerate(fns):
            t = time.perf_counter()
            fn()
            times[k].append(time.perf_counter() - t)
    return [float(np.median(t)) for t in times]


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--calls", type=int, default=20)
    ap.add_argument("--nradbase", type=int, default=60)
    ap.add_argument("--models", default="Si-tiny,TiAl-tutorial,zuo-Si",
                    help="comma-separated shipped models (the speed comparison runs for zuo-Si)")
    args = ap.parse_args()
    tmp = Path(tempfile.mkdtemp())
    for name in args.models.split(","):
        model = aceserver.load_model(ROOT / "models" / name / f"{name}.json")
        path = tmp / f"{name}.yace"
        t0 = time.perf_counter()
        meta = export_yace(model, path, nradbase=args.nradbase, verify=False)
        t_export = time.perf_counter() - t0
        structs = structures_for(name, model)
        d = verify_with_pyace(model, path, structs)
        dE, dF, dS = (d["max_energy_error_eV_per_atom"], d["max_force_error_eV_per_A"],
                      d["max_stress_error_eV_per_A3"])
        print(f"{name:>14}: export {t_export:5.1f} s ({path.stat().st_size / 1e6:.2f} MB, "
              f"K = {meta['nradbasemax']}); pyace vs ours on {len(structs)} structures: "
              f"max |dE| {dE:.1e} eV/atom, max |dF| {dF:.1e} eV/Å, max |dσ| {dS:.1e} eV/Å³")
        if name != "zuo-Si":
            continue
        at = build_structure("diamond64", model.elements)
        args_ = (at.numbers, at.positions, at.cell[:], at.pbc)
        product = PyACECalculator(str(path))
        recursive = PyACECalculator(str(path), recursive_evaluator=True, recursive=True)
        props = ["energy", "forces", "stress"]
        t_ours, t_prod, t_rec = alternate([
            lambda: model.evaluate(*args_, threads=1),
            lambda: product.calculate(at, props, ["positions"]),
            lambda: recursive.calculate(at, props, ["positions"])], args.calls)
        n = len(at)
        print(f"{'':>14}  diamond64, E+F+stress, 1 thread: ours {t_ours / n * 1e6:.1f} µs/atom, "
              f"pyace product {t_prod / n * 1e6:.1f} (x{t_prod / t_ours:.1f} ours), "
              f"pyace recursive {t_rec / n * 1e6:.1f} (x{t_rec / t_ours:.1f} ours)")


if __name__ == "__main__":
    main()
