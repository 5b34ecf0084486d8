"""`aceserver eval MODEL DATA.xyz`: error table (RMSE, MAE per config_type and overall) of a model on data."""
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
    parser.add_argument("--json", action="store_true",
                        help='print {"rmse": {TYPE|"set": {"E","F","V"}}, "mae": ...} in eV/atom, eV/Å, eV/atom')


def run(args) -> int:
    from aceserver.errors import ACEInputError, ModelFileError
    from aceserver.fitting import error_tables
    from aceserver.fitting.config import load_model_file
    from aceserver.fitting.data import Keys
    from aceserver.fitting.fit_model import jsonable
    from aceserver.fitting.workflow import evaluate_errors

    keys = Keys(energy=args.energy_key, force=args.force_key, virial=args.virial_key,
                stress=args.stress_key, config_type=args.config_type_key)
    try:
        model = load_model_file(args.model)
        table = evaluate_errors(model, args.data, keys, args.threads)
    except (ModelFileError, ACEInputError, ValueError, OSError) as exc:
        print(f"aceserver eval: error: {exc}", file=sys.stderr)
        return 2
    if args.json:
        print(json.dumps(jsonable(error_tables.public(table))))
    else:
        print(error_tables.format_table(table, f"errors of {args.model} on {', '.join(args.data)}"))
    return 0
