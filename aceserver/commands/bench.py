"""`aceserver bench`: time energy + forces + virial on standard structures."""
from __future__ import annotations

import json

NAME = "bench"
HELP = "time energy+forces+virial (µs/atom) on standard structures"
STRUCTURES = ("diamond64", "fcc108", "diamond1000")   # as aceserver.benchmarking.STRUCTURES


def add_arguments(p):
    p.add_argument("model", nargs="?", help="model file (else build one from the options below)")
    p.add_argument("--elements", nargs="+", default=["Si"])
    p.add_argument("--order", type=int, default=3)
    p.add_argument("--totaldegree", type=float, nargs="+", default=[12])
    p.add_argument("--rcut", type=float, default=5.5, help="Å")
    p.add_argument("--random-params", action="store_true",
                   help="random decaying parameters instead of zeros (built models only)")
    p.add_argument("--structures", nargs="+", default=list(STRUCTURES), choices=STRUCTURES)
    p.add_argument("--calls", type=int, default=30, help="timed calls per structure (>= 20)")
    p.add_argument("--threads", type=int, default=None, help="numba threads (default: all)")
    p.add_argument("--json", action="store_true", help="print one JSON object")


def make_model(args):
    import numpy as np

    import aceserver
    if args.model:
        return aceserver.load_model(args.model)
    td = args.totaldegree[0] if len(args.totaldegree) == 1 else args.totaldegree
    model = aceserver.ace1_model(elements=args.elements, order=args.order, totaldegree=td,
                                 rcut=args.rcut)
    if args.random_params:
        rng = np.random.default_rng(0)
        model.parameters = rng.normal(size=model.length_basis) / (1 + np.arange(model.length_basis))
    return model


def run(args) -> int:
    import numba

    from aceserver.benchmarking import bench
    if args.threads:
        numba.set_num_threads(args.threads)
    model = make_model(args)
    out = bench(model, args.structures, args.calls)
    threads, first_call, results = out["threads"], out["first_call_seconds"], out["structures"]
    if args.json:
        print(json.dumps(out))
    else:
        print(f"model: {model.elements}, {model.length_basis} basis functions, rcut {model.rcut} Å; "
              f"threads {threads}; first call {first_call:.3f} s")
        for r in results:
            print(f"  {r['name']:>12}: {r['n_atoms']:5d} atoms, {r['neighbours_per_atom']:.1f} "
                  f"neighbours/atom, {r['us_per_atom']:8.2f} µs/atom ({r['median_ms']:.3f} ms/call)")
    return 0
