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
    big = parser.add_argument_group("large fits (docs/distributed-fitting.md)")
    big.add_argument("--streaming", action="store_true",
                     help="reduce the least-squares system block by block (memory O(basis²), any number of rows); "
                          "chosen by itself when the dense matrix would exceed --memory-budget")
    big.add_argument("--memory-budget", type=float, metavar="GB",
                     help="memory allowed for the dense design matrix and the solver's copy "
                          "(default: memory_limit_gb of the config, else half of the available memory)")
    big.add_argument("--estimate", action="store_true",
                     help="print rows, basis size, memory of both paths and an assembly-time estimate, then exit")
    big.add_argument("--scheduler", metavar="ADDRESS",
                     help="compute the blocks on the workers of this dask.distributed scheduler "
                          "(e.g. tcp://host:8786; needs aceserver[dask])")
    big.add_argument("--workers", type=int, metavar="N",
                     help="start a local Dask cluster of N worker processes for the blocks (needs aceserver[dask])")


def portable_command(argv: list[str]) -> str:
    """The command line as a model file records it: absolute paths (values of --data-dir DIR,
    --output=FILE and the like) shortened to .../<last component>, so that no path of the machine
    that fitted ends up in the file."""
    out = []
    for a in argv:
        opt, eq, val = a.partition("=") if a.startswith("--") else ("", "", a)
        if val and (Path(val).is_absolute() or val.startswith("~")):
            val = ".../" + Path(val).name
        out.append(opt + eq + val)
    return " ".join(out)


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


def run_fit(cfg, output=None, threads=None, plots=True, progress=None, out=None, prepared=None,
            streaming=None, memory_budget=None, client=None, on_task=None):
    """Run a parsed :class:`FitConfig`; returns (model, report dict).

    ``prepared``: optional (model, train, validation, train_system, validation_system) already built
    from this configuration (as by :func:`load_data` and assembly), reused instead of rebuilding.
    ``streaming``/``memory_budget`` (bytes): see :func:`driver.acefit`. ``client``: a
    ``dask.distributed.Client`` whose workers compute the blocks (``on_task(done, total)`` after each task).
    """
    out = sys.stdout if out is None else out
    from aceserver.fitting import config as fconfig
    from aceserver.fitting import error_tables as errors, fit_model as driver
    from aceserver.fitting.fit_model import jsonable

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

    reducer = None
    if client is not None:
        from aceserver.fitting import cluster
        reducer = cluster.DaskReducer(client, cluster.model_definition(cfg.model, E0), cfg.keys,
                                      n_basis=model.length_basis, progress=progress, on_task=on_task)
    budget = memory_budget if memory_budget is not None else cfg.memory_limit
    res = driver.acefit(model, train, weights=cfg.weights, prior=cfg.prior, solver=cfg.solver,
                        validation=validation, seed=cfg.seed, threads=threads, progress=progress,
                        memory_limit=cfg.memory_limit, system=systems[0], validation_system=systems[1],
                        streaming=streaming, memory_budget=budget, reducer=reducer)
    info = res.solver_info
    n, m = res.shape
    print(f"least squares: {n} observations x {m} parameters, assembled in {res.timings['assembly_s']:.2f} s "
          f"({n / max(res.timings['assembly_s'], 1e-9):.0f} rows/s); solved in {res.timings['solve_s']:.2f} s",
          file=out)
    r = res.run
    print(f"path: {r['path']}; peak memory {r['peak_rss_gb']:.2f} GiB, {r['peak_increase_gb']:+.2f} GiB over the "
          f"{r['rss_before_gb']:.2f} GiB before assembly" + (" (this process; workers not counted)"
                                                            if r["path"] == "dask" else ""), file=out)
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
        "command": portable_command(["aceserver"] + sys.argv[1:])
        if Path(sys.argv[0]).name in ("aceserver", "cli.py") else None,
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
        "assembly": res.run,
        "plots": [rel(p) for p in written],
    })
    return model, report


def estimate(cfg, threads=None, memory_budget=None, out=None) -> dict:
    """Rows, basis size, memory of the in-memory and streaming paths and an assembly-time estimate
    (from timing a few configurations), printed; nothing is assembled."""
    import os

    from aceserver.fitting import assembly, streaming
    from aceserver.fitting import config as fconfig
    out = sys.stdout if out is None else out
    train, validation, E0 = load_data(cfg)
    model = fconfig.build_model(cfg.model, E0)
    rows = sum(assembly.count_rows(c) for c in train)
    m = model.length_basis
    threads = threads or cfg.threads or os.cpu_count() or 1
    dense = assembly.memory_estimate(rows, m)
    stream = streaming.memory_estimate(m, streaming.group_rows(train).values(), threads=threads,
                                       block_rows=max((assembly.count_rows(c) for c in train), default=0))
    budget = memory_budget if memory_budget is not None else (cfg.memory_limit or assembly.available_memory() // 2)
    per_row = streaming.time_per_row(model, train)
    est = {"rows": rows, "n_basis": m, "n_train_configs": len(train), "n_validation_configs": len(validation),
           "in_memory_bytes": dense, "streaming_bytes": stream, "memory_budget_bytes": int(budget),
           "path": "streaming" if dense > budget else "in-memory",
           "seconds_per_row_per_thread": per_row, "threads": threads, "assembly_s": per_row * rows / threads}
    hb = streaming.human_bytes
    print(f"rows: {rows} ({len(train)} training configurations; {len(validation)} validation)\n"
          f"basis functions: {m}\n"
          f"in-memory path: {hb(dense)} (design matrix {hb(rows * m * 8)} and the solver's copy)\n"
          f"streaming path: {hb(stream)} (one triangular factor per config_type and observation kind)\n"
          f"memory budget: {hb(budget)} -> the {est['path']} path would run\n"
          f"assembly: about {est['assembly_s']:.0f} s on {threads} thread(s) "
          f"({1 / max(per_row, 1e-12):.0f} rows/s per thread, timed on a few configurations)", file=out)
    return est


def _dask_client(args):
    """A Dask client for --scheduler / --workers (imported only here)."""
    try:
        from dask.distributed import Client
    except ImportError:
        raise ValueError("--scheduler/--workers need Dask: pip install \"aceserver[dask]\"") from None
    if args.scheduler:
        return Client(args.scheduler), None
    from aceserver.fitting.cluster import local_cluster
    if args.workers < 1:
        raise ValueError("--workers must be at least 1")
    cluster = local_cluster(args.workers)
    return Client(cluster), cluster


def run(args) -> int:
    from aceserver.errors import ACEInputError
    from aceserver.fitting.assembly import AssemblyMemoryError
    from aceserver.fitting.config import FitConfigError, load_config

    logging.basicConfig(level=logging.WARNING, format="%(levelname)s: %(message)s")
    client = cluster = None
    budget = None if getattr(args, "memory_budget", None) is None else int(args.memory_budget * 2 ** 30)
    try:
        cfg = load_config(args.config, data_dir=args.data_dir)
        if getattr(args, "estimate", False):
            estimate(cfg, threads=args.threads, memory_budget=budget)
            return 0
        if getattr(args, "scheduler", None) or getattr(args, "workers", None) is not None:
            client, cluster = _dask_client(args)
        _, report = run_fit(cfg, output=args.output, threads=args.threads, plots=not args.no_plots,
                            progress=False if args.quiet else None,
                            streaming=True if getattr(args, "streaming", False) else None,
                            memory_budget=budget, client=client)
    except (FitConfigError, ACEInputError, AssemblyMemoryError, ValueError, OSError) as exc:
        print(f"aceserver fit: error: {exc}", file=sys.stderr)
        return 2
    finally:
        if client is not None:
            client.close()
        if cluster is not None:
            cluster.close()
    report_path = args.json_report or (str(cfg.output_report) if cfg.output_report else None)
    if report_path:
        Path(report_path).parent.mkdir(parents=True, exist_ok=True)
        Path(report_path).write_text(json.dumps(report, indent=2))
    return 0
