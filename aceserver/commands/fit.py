"""`aceserver fit CONFIG.yaml`: fit a linear ACE model to extended-XYZ data (see aceserver.fitting.config).

The workflow is library code (aceserver.fitting.workflow); this module parses the arguments, calls it
and writes the JSON report.
"""
from __future__ import annotations

import json
import logging
import sys
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
