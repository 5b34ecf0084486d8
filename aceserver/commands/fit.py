"""`aceserver fit CONFIG.yaml`: fit a linear ACE model to extended-XYZ data (see aceserver.fitting.config)."""
from __future__ import annotations

import hashlib
import json
import logging
import sys
import time
from pathlib import Path

NAME = "fit"
HELP = "fit an ACE model to extended-XYZ training data described by a YAML file"


def add_arguments(parser):
    parser.add_argument("config", help="fit configuration (YAML); see aceserver.fitting.config for the keys")
    parser.add_argument("--json-report", metavar="R.json", help="write errors, solver info and timings as JSON")
    parser.add_argument("--output", metavar="MODEL", help="model file (overrides output.model)")
    parser.add_argument("--threads", type=int, help="assembly/evaluation threads (overrides the config)")
    parser.add_argument("--no-plots", action="store_true", help="do not write parity plots")
    parser.add_argument("--quiet", action="store_true", help="no progress bar")
    parser.add_argument("--data-dir", metavar="DIR", help="data directory for configurations with "
                        "'data: {relative_to: data_dir}' (default: $ACESERVER_DATA)")


def sha256_file(path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        for chunk in iter(lambda: fh.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def load_data(cfg):
    """(train, validation, E0) for a :class:`FitConfig`: files read, split (seeded), E0 resolved."""
    from aceserver.fitting import data
    elements = list(cfg.model["elements"])
    train = []
    for p in cfg.train:
        train += data.read_configs(p, cfg.keys, elements=elements)
    if cfg.validation:
        validation = []
        for p in cfg.validation:
            validation += data.read_configs(p, cfg.keys, elements=elements)
    else:
        train, validation = data.split_train_validation(train, cfg.validation_fraction, cfg.seed)
    return train, validation, data.resolve_E0(cfg.E0, elements, train)


def run_fit(cfg, output=None, threads=None, plots=True, progress=None, out=None, prepared=None):
    """Run a parsed :class:`FitConfig`; returns (model, report dict).

    ``prepared``: optional (model, train, validation, train_system, validation_system) already built
    from this configuration (as by :func:`load_data` and assembly), reused instead of rebuilding.
    """
    out = sys.stdout if out is None else out
    from aceserver.fitting import config as fconfig
    from aceserver.fitting import driver, errors
    from aceserver.fitting.driver import jsonable

    t_start = time.perf_counter()
    base = cfg.path.parent if cfg.path else Path.cwd()

    def rel(p):
        """Paths in reports and metadata are relative to the configuration file."""
        import os
        return os.path.relpath(Path(p).resolve(), base)

    elements = list(cfg.model["elements"])
    threads = threads or cfg.threads
    t0 = time.perf_counter()
    systems = (None, None)
    if prepared is None:
        train, validation, E0 = load_data(cfg)
        model = fconfig.build_model(cfg.model, E0)
        model.E0 = dict(E0)
    else:
        model, train, validation, *systems = prepared
        E0 = dict(model.E0)
    t_build = time.perf_counter() - t0
    print(f"model: {elements}, {model.length_basis} basis functions; E0 {E0}", file=out)
    print(f"data: {len(train)} training configurations ({sum(c.natoms for c in train)} atoms), "
          f"{len(validation)} validation", file=out)

    res = driver.acefit(model, train, weights=cfg.weights, prior=cfg.prior, solver=cfg.solver,
                        validation=validation, seed=cfg.seed, threads=threads, progress=progress,
                        memory_limit=cfg.memory_limit, system=systems[0], validation_system=systems[1])
    info = res.solver_info
    n, m = res.shape
    print(f"least squares: {n} observations x {m} parameters, assembled in {res.timings['assembly_s']:.2f} s "
          f"({n / max(res.timings['assembly_s'], 1e-9):.0f} rows/s); solved in {res.timings['solve_s']:.2f} s",
          file=out)
    desc = ", ".join(f"{k} = {v:.6g}" if isinstance(v, float) else f"{k} = {v}"
                     for k, v in info.items() if k not in ("solver",))
    print(f"solver {info.get('solver')}: {desc}", file=out)
    print(errors.format_table(res.errors["train"], "training errors"), file=out)
    if "validation" in res.errors:
        print(errors.format_table(res.errors["validation"], "validation errors"), file=out)

    meta = model.metadata
    meta["fit"]["provenance"] = jsonable({
        "config_file": cfg.path.name if cfg.path else None,
        "config": cfg.raw,
        # by file name and checksum only: no path of the machine that fitted
        "data": [{"file": Path(p).name, "sha256": sha256_file(p)} for p in cfg.train + cfg.validation],
        "command": " ".join(["aceserver"] + sys.argv[1:]) if Path(sys.argv[0]).name in ("aceserver", "cli.py")
        else None,
        "python": sys.version.split()[0],
    })
    meta["fit"]["timings_s"]["model_build_s"] = t_build
    model.metadata = jsonable(meta)

    output = Path(output) if output else cfg.output_model
    if output is not None:
        output.parent.mkdir(parents=True, exist_ok=True)
        model.save(str(output))
        print(f"model written to {output}" + (f" (sha256 {model.sha256})" if getattr(model, "sha256", None) else ""),
              file=out)
    written = []
    if plots and cfg.output_plots is not None:
        from aceserver.fitting.plots import parity_plots
        sets = {"train": (train, res.predictions["train"])}
        if validation:
            sets["validation"] = (validation, res.predictions["validation"])
        written = parity_plots(cfg.output_plots, sets, cfg.name, E0=dict(model.E0))
        print(f"parity plots: {', '.join(str(p) for p in written)}", file=out)
    report = jsonable({
        "model": rel(output) if output else None,
        "sha256": getattr(model, "sha256", None) if output else None,
        "length_basis": model.length_basis,
        "shape": [n, m],
        "solver": info,
        "errors": {k: errors.public(v) for k, v in res.errors.items()},
        "timings_s": dict(res.timings, model_build_s=t_build, total_s=time.perf_counter() - t_start),
        "plots": [rel(p) for p in written],
    })
    return model, report


def run(args) -> int:
    from aceserver.errors import ACEInputError
    from aceserver.fitting.assembly import AssemblyMemoryError
    from aceserver.fitting.config import FitConfigError, load_config

    logging.basicConfig(level=logging.WARNING, format="%(levelname)s: %(message)s")
    try:
        cfg = load_config(args.config, data_dir=args.data_dir)
        _, report = run_fit(cfg, output=args.output, threads=args.threads, plots=not args.no_plots,
                            progress=False if args.quiet else None)
    except (FitConfigError, ACEInputError, AssemblyMemoryError, ValueError, OSError) as exc:
        print(f"aceserver fit: error: {exc}", file=sys.stderr)
        return 2
    report_path = args.json_report or (str(cfg.output_report) if cfg.output_report else None)
    if report_path:
        Path(report_path).parent.mkdir(parents=True, exist_ok=True)
        Path(report_path).write_text(json.dumps(report, indent=2))
    return 0
