"""`aceserver convert IN OUT`: between pacemaker `.yace` and aceserver model files.

* `x.yace -> y.json`: the pacemaker potential stored exactly in an aceserver model file (JSON,
  sha256-checked; the model card keeps the sha256 of the original .yace).
* `x.json -> y.yace`: an aceserver ACE1 model written as a pacemaker potential, for LAMMPS
  ML-PACE and pyace (see docs/lammps-export.md).
* `x.json -> y.yace` where x.json holds a converted pacemaker potential: the .yace content again.
"""
from __future__ import annotations

import json
import sys
from pathlib import Path

NAME = "convert"
HELP = "convert between pacemaker .yace files and aceserver model files (.json)"


def add_arguments(parser):
    parser.add_argument("input", metavar="IN", help="pacemaker .yace file or aceserver model file (.json)")
    parser.add_argument("output", metavar="OUT", help="output: .json (aceserver model file) or .yace")
    parser.add_argument("--force", action="store_true", help="overwrite OUT if it exists")
    parser.add_argument("--nradbase", type=int, default=None,
                        help="export to .yace: K radial basis functions per species pair (default "
                             "60; 600-1200 for agreement with our evaluator to ~1e-5 eV/Å, see "
                             "docs/lammps-export.md)")
    parser.add_argument("--radial-lambda", type=float, nargs="+", default=None, metavar="LAMBDA",
                        help="export to .yace: candidate ChebExpCos scalings λ (default -1 -2 -3)")


def run(args) -> int:
    from aceserver.errors import ModelFileError
    from aceserver.loading import load_model

    src, out = Path(args.input), Path(args.output)
    if out.suffix.lower() not in (".json", ".yace"):
        print(f"aceserver convert: OUT must end in .json or .yace, got {out.name!r}", file=sys.stderr)
        return 2
    if out.exists() and not args.force:
        print(f"aceserver convert: {out} exists (use --force to overwrite)", file=sys.stderr)
        return 2
    try:
        model = load_model(src)
        if out.suffix.lower() == ".json":
            model.save(out)
            report = {"format": "aceserver-json"}
        else:
            from aceserver.pacemaker.export import save_yace
            report = save_yace(model, out, args.nradbase, args.radial_lambda)
    except (ModelFileError, ValueError, OSError) as exc:
        print(f"aceserver convert: {exc}", file=sys.stderr)
        return 2
    info = model.info()
    print(f"aceserver convert: {src} -> {out}: species {', '.join(info['species'])}, "
          f"rcut {info['rcut']} Å, {info['length_basis']} basis functions")
    extra = {k: v for k, v in (report or {}).items() if k != "format"}
    if extra:
        print(json.dumps(extra, default=str))
    return 0
