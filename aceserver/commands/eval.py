"""`aceserver eval MODEL DATA.xyz`: error table (RMSE, MAE per config_type and overall) of a model on data;
with an active set also the extrapolation grade γ per species and the most extrapolative frames."""
from __future__ import annotations

import json
import sys

NAME = "eval"
HELP = "evaluate a model on extended-XYZ data and print RMSE/MAE per config_type"


def add_arguments(parser):
    parser.add_argument("model", help="model file")
    parser.add_argument("data", nargs="+", help="extended-XYZ file(s) with reference energies/forces/virials")
    parser.add_argument("--energy-key", default="energy", help="energy key (case-insensitive; default energy)")
    parser.add_argument("--force-key", default="force", help="force key (default force)")
    parser.add_argument("--virial-key", default="virial", help="virial key (default virial)")
    parser.add_argument("--stress-key", default=None, help="stress key, converted to a virial when no virial")
    parser.add_argument("--config-type-key", default="config_type", help="config type key")
    parser.add_argument("--threads", type=int, default=None, help="evaluation threads (default: all CPUs)")
    parser.add_argument("--top", type=int, default=10, metavar="N",
                        help="models with an active set: list the N frames with the largest γ (default 10)")
    parser.add_argument("--no-gamma", action="store_true", help="skip the γ statistics (saves their cost)")
    parser.add_argument("--json", action="store_true",
                        help='print {"rmse": {TYPE|"set": {"E","F","V"}}, "mae": ...} in eV/atom, eV/Å, eV/atom, '
                             'with an active set also "gamma": {"species": {EL: {"atoms", "min", "median", "p95", '
                             '"max", "above_1", "above_5"}}, "frames": [{"index", "file", "frame", "config_type", '
                             '"natoms", "max_gamma"}]} (γ dimensionless; above_*: fractions of atoms)')


def run(args) -> int:
    from aceserver.errors import ACEInputError, ModelFileError
    from aceserver.fitting import error_tables
    from aceserver.fitting.config import load_model_file
    from aceserver.fitting.data import Keys
    from aceserver.fitting.fit_model import jsonable
    from aceserver.fitting.gamma_report import format_gamma_report, gamma_report
    from aceserver.fitting.workflow import read_data

    keys = Keys(energy=args.energy_key, force=args.force_key, virial=args.virial_key,
                stress=args.stress_key, config_type=args.config_type_key)
    if args.top < 0:
        print("aceserver eval: error: --top must be >= 0", file=sys.stderr)
        return 2
    try:
        model = load_model_file(args.model)
        configs = read_data(model, args.data, keys)
        table = error_tables.compute_errors(model, configs, args.threads)
        has_active_set = getattr(model, "active_set", None) is not None
        with_gamma = has_active_set and not args.no_gamma
        gamma = gamma_report(model, configs, args.threads, args.top) if with_gamma else None
    except (ModelFileError, ACEInputError, ValueError, OSError) as exc:
        print(f"aceserver eval: error: {exc}", file=sys.stderr)
        return 2
    if args.json:
        doc = error_tables.public(table)
        if gamma is not None:
            doc["gamma"] = gamma
        print(json.dumps(jsonable(doc)))
        return 0
    print(error_tables.format_table(table, f"errors of {args.model} on {', '.join(args.data)}"))
    if gamma is not None:
        print()
        print(format_gamma_report(gamma, "extrapolation grade γ per species (active set of the model)"))
    elif not has_active_set and not args.no_gamma:
        print("\n(no γ statistics: the model has no active set; `aceserver activeset MODEL DATA.xyz` builds one)")
    return 0
