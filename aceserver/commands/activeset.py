"""`aceserver activeset MODEL DATA...`: build (or rebuild) a model's active sets from extended-XYZ
data and write them beside the model as `<stem>.activeset.npz` (and optionally as pacemaker's
`.asi`). The work is library code (`fitting.workflow.active_set_from_files`)."""
from __future__ import annotations

import sys

NAME = "activeset"
HELP = "build a model's active sets (for the extrapolation grade γ) from extended-XYZ data"


def add_arguments(parser):
    parser.add_argument("model", help="model file (or a shipped model's name)")
    parser.add_argument("data", nargs="+", help="extended-XYZ file(s): the model's training data")
    parser.add_argument("-o", "--output", metavar="OUT.activeset.npz",
                        help="sidecar file (default: <model stem>.activeset.npz beside the model)")
    parser.add_argument("--asi", metavar="OUT.asi", help="also write A⁻¹ per element as pacemaker's .asi")
    parser.add_argument("--batch-atoms", type=int, default=None, metavar="N",
                        help="atoms per descriptor call (memory N × L × 8 bytes; default 1024); "
                             "the result does not depend on it")
    parser.add_argument("--tol", type=float, default=1e-9,
                        help="stop when every atom of the data has γ ≤ 1 + tol (default 1e-9)")
    parser.add_argument("--floor", type=float, default=None,
                        help="floor rows' size relative to each column's largest value, for "
                             "directions the data do not span (default 1e-6; 0: none, and such "
                             "data are an error)")
    parser.add_argument("--quiet", action="store_true", help="no progress lines")


def run(args) -> int:
    from aceserver.catalogue import ModelLookupError, resolve
    from aceserver.errors import ACEInputError, ModelFileError
    from aceserver.fitting.active_set import ActiveSetError
    from aceserver.fitting.active_set_build import BATCH_ATOMS, FLOOR, summary
    from aceserver.fitting.workflow import active_set_from_files
    from aceserver.io.activeset_file import sidecar_path
    from aceserver.loading import load_model

    def progress(element, read, atoms):
        if not args.quiet:
            print(f"{element}: read {read} of the data done ({atoms} atoms)", file=sys.stderr)

    try:
        _, path = resolve(args.model)
        model = load_model(path, active_set=False)
        build = active_set_from_files(model, args.data, batch_atoms=args.batch_atoms or BATCH_ATOMS,
                                      tol=args.tol, progress=progress,
                                      floor=FLOOR if args.floor is None else args.floor)
        out = args.output or sidecar_path(path)
        build.save(out)
        if args.asi:
            build.save_asi(args.asi)
    except (ModelLookupError, ModelFileError, ActiveSetError, ACEInputError, ValueError,
            OSError) as exc:
        print(f"aceserver activeset: error: {exc}", file=sys.stderr)
        return 2
    print(f"{'element':>7} {'L':>6} {'floor':>6} {'atoms':>8} {'swaps':>7} {'passes':>6} "
          f"{'log|det A|':>12} {'max γ':>12}")
    for r in summary(build):
        print(f"{r['element']:>7} {r['L']:>6} {r['floor_rows']:>6} {r['atoms']:>8} {r['swaps']:>7} "
              f"{r['passes']:>6} {r['log_abs_det']:>12.6g} {r['max_gamma']:>12.10f}")
    print("(floor: rows completing A along directions the data do not span; max γ: over the data)")
    print(f"active set written to {out}" + (f" and {args.asi}" if args.asi else ""))
    return 0
