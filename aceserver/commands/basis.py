"""`aceserver basis`: build an ace1_model basis and report its size and build time."""
from __future__ import annotations

import json
import time

NAME = "basis"
HELP = "build an ACEpotentials.jl-compatible ace1_model basis and print its size"


def add_arguments(p):
    p.add_argument("--elements", nargs="+", required=True, help="chemical symbols, e.g. Si or Ti Al")
    p.add_argument("--order", type=int, required=True, help="maximum correlation order N")
    p.add_argument("--totaldegree", type=float, nargs="+", required=True,
                   help="maximum level, one value or one per order (e.g. 20 16 12)")
    p.add_argument("--rcut", type=float, default=None, help="cutoff in Å (default 2.5·r0, max over pairs)")
    p.add_argument("--wL", type=float, default=1.5, help="level weight of l (default 1.5)")
    p.add_argument("--json", action="store_true", help="print one JSON object")


def run(args) -> int:
    from ..basis.ace1 import build_ace1_basis

    td = args.totaldegree[0] if len(args.totaldegree) == 1 else args.totaldegree
    td = [int(x) if float(x).is_integer() else x for x in (td if isinstance(td, list) else [td])]
    t0 = time.perf_counter()
    b = build_ace1_basis(args.elements, args.order, td if len(td) > 1 else td[0], rcut=args.rcut,
                         wL=args.wL)
    seconds = time.perf_counter() - t0
    out = {"elements": b.elements, "order": args.order, "totaldegree": b.settings["totaldegree"],
           "length_basis": b.length_basis, "n_manybody": b.n_b, "n_pair": b.n_pair,
           "n_A": int(len(b.a_spec)), "n_AA": int(len(b.aa_spec)), "lmax": b.lmax,
           "rcut": b.rcut, "build_seconds": round(seconds, 4)}
    if args.json:
        print(json.dumps(out))
    else:
        for k, v in out.items():
            print(f"{k:>14}: {v}")
    return 0
