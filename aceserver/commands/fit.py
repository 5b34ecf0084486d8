"""`aceserver fit CONFIG.yaml`: fit a linear ACE model to extended-XYZ data (see aceserver.fitting.config).
`aceserver fit CONFIG.yaml --save-state` also keeps the reduced least-squares state beside the model;
`aceserver fit --update STATE NEW.xyz [NEW2.xyz ...]` adds data to such a fit (docs/incremental-fit.md).

The workflow is library code (aceserver.fitting.workflow, aceserver.fitting.incremental); this module
parses the arguments, calls it and writes the JSON report.
"""
from __future__ import annotations

import json
import logging
import sys
from pathlib import Path

NAME = "fit"
HELP = "fit an ACE model to extended-XYZ training data described by a YAML file"

def add_arguments(parser):
    parser.add_argument("config", nargs="?",
                        help="fit configuration (YAML); see aceserver.fitting.config for the keys")
    parser.add_argument("--json-report", metavar="R.json", help="write errors, solver info and timings as JSON")
    parser.add_argument("--output", metavar="MODEL", help="model file (overrides output.model)")
    parser.add_argument("--threads", type=int, help="assembly/evaluation threads (overrides the config)")
    parser.add_argument("--no-plots", action="store_true", help="do not write parity plots")
    parser.add_argument("--quiet", action="store_true", help="no progress bar")
    parser.add_argument("--data-dir", metavar="DIR", help="data directory for configurations with "
                        "'data: {relative_to: data_dir}' (default: $ACESERVER_DATA)")
    inc = parser.add_argument_group("incremental fits (docs/incremental-fit.md)")
    inc.add_argument("--save-state", action="store_true",
                     help="keep the reduced least-squares state beside the model (<model stem>.fitstate.npz) "
                          "so that data can be added later with --update (implies the streaming path)")
    inc.add_argument("--update", nargs="+", metavar=("STATE", "NEW.xyz"),
                     help="add the configurations of NEW.xyz ... to the fit whose state is STATE and solve "
                          "again; the model is STATE's <stem>.json (or --model), rewritten in place unless "
                          "--output is given")
    inc.add_argument("--model", metavar="MODEL", help="with --update: the model file the state belongs to")
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
    from aceserver.fitting.workflow import estimate, run_fit

    logging.basicConfig(level=logging.WARNING, format="%(levelname)s: %(message)s")
    client = cluster = None
    budget = None if getattr(args, "memory_budget", None) is None else int(args.memory_budget * 2 ** 30)
    if getattr(args, "update", None):
        return _update(args)
    if not args.config:
        print("aceserver fit: error: give a fit configuration (CONFIG.yaml) or --update STATE NEW.xyz",
              file=sys.stderr)
        return 2
    try:
        cfg = load_config(args.config, data_dir=args.data_dir)
        if getattr(args, "estimate", False):
            estimate(cfg, threads=args.threads, memory_budget=budget)
            return 0
        if getattr(args, "scheduler", None) or getattr(args, "workers", None) is not None:
            client, cluster = _dask_client(args)
        if getattr(args, "save_state", False):
            from aceserver.fitting.incremental import fit_with_state
            _, report, _ = fit_with_state(cfg, output=args.output, threads=args.threads, plots=not args.no_plots,
                                          progress=False if args.quiet else None, memory_budget=budget,
                                          client=client)
        else:
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


def _update(args) -> int:
    from aceserver.errors import ACEInputError, ModelFileError
    from aceserver.fitting.incremental import update_files

    if args.config:
        print("aceserver fit: error: --update takes the state and the new data files, not a configuration",
              file=sys.stderr)
        return 2
    if len(args.update) < 2:
        print("aceserver fit: error: --update needs the state file and at least one data file", file=sys.stderr)
        return 2
    try:
        report = update_files(args.update[0], args.update[1:], model_file=args.model, output=args.output,
                              threads=args.threads, progress=False if args.quiet else None)
    except (ACEInputError, ModelFileError, ValueError, OSError) as exc:
        print(f"aceserver fit: error: {exc}", file=sys.stderr)
        return 2
    if args.json_report:
        Path(args.json_report).parent.mkdir(parents=True, exist_ok=True)
        Path(args.json_report).write_text(json.dumps(report, indent=2))
    return 0
