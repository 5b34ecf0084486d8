"""`aceserver serve [MODEL ...]`: serve ACE models over HTTP (FastAPI under uvicorn)."""
from __future__ import annotations

import argparse
import logging
import os
import signal
import sys
import threading

NAME = "serve"
HELP = "serve ACE models over HTTP: energies, forces and stresses as JSON or msgpack"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("models", nargs="*", metavar="MODEL",
                        help="model file, NAME=FILE, or the name of a shipped model (models/<name>/); "
                             "several are served side by side, addressed by name. "
                             "Default: the shipped default model.")
    parser.add_argument("--host", default="127.0.0.1",
                        help="address to bind (default 127.0.0.1, this machine only; 0.0.0.0 for all)")
    parser.add_argument("--port", type=int, default=8000, help="TCP port (default 8000)")
    parser.add_argument("--token-file", metavar="F",
                        help="file holding a bearer token; /v1 then answers only requests that send it")
    parser.add_argument("--max-atoms", type=int, default=100_000, metavar="N",
                        help="most atoms in one structure (default 100000; more: 413)")
    parser.add_argument("--max-structures", type=int, default=1_000, metavar="N",
                        help="most structures in one request (default 1000; more: 413)")
    parser.add_argument("--max-pairs", type=int, default=10_000_000, metavar="N",
                        help="work budget of one request: neighbour pairs within the cutoff, summed over its "
                             "structures (default 10000000: about 0.5 GB and a few seconds; more: 413)")
    parser.add_argument("--max-descriptor-values", type=int, default=4_000_000, metavar="N",
                        help="most per-atom descriptor values one request may ask for (atoms × the model's "
                             "largest descriptor size, summed over its structures; default 4000000, 32 MB as "
                             "float64; more: 413)")
    parser.add_argument("--max-body-mb", type=float, default=64.0, metavar="MB",
                        help="largest request body in MiB (default 64; more: 413)")
    parser.add_argument("--workers", type=int, default=0, metavar="N",
                        help="evaluation threads (default: one per CPU)")
    parser.add_argument("--kernel-threads", type=int, default=1, choices=[0, 1],
                        help="threads inside one evaluation: 1 (default) runs each request on the serial "
                             "kernel, requests in parallel; 0 lets large structures use numba's threads")
    parser.add_argument("--blas-threads", type=int, default=1, metavar="N",
                        help="BLAS threads of the whole process, set once at start (default 1: requests run in "
                             "parallel on the evaluation threads, so more BLAS threads only compete for the cores: "
                             "on a busy 2-core box a relax job with a cell filter took 2.2x as long per step on 2)")
    parser.add_argument("--no-gc-freeze", action="store_true",
                        help="do not freeze the heap after warm-up (by default the objects start-up made, "
                             "numba's and the models', are kept out of the garbage collector's full passes; "
                             "a model swapped out is still freed)")
    parser.add_argument("--drain-timeout", type=float, default=30.0, metavar="S",
                        help="on SIGTERM/SIGINT, wait at most S seconds for requests in flight; those not "
                             "answered by then get a 503 `shutting_down` and the process exits (default 30)")
    parser.add_argument("--header-timeout", type=float, default=10.0, metavar="S",
                        help="a request's line and headers must arrive within S seconds of the connection or "
                             "of the previous reply (default 10; else 408, or an idle connection is closed)")
    parser.add_argument("--body-timeout", type=float, default=60.0, metavar="S",
                        help="a request's body must arrive within S seconds of its headers (default 60; else 408)")
    parser.add_argument("--keep-alive-timeout", type=float, default=5.0, metavar="S",
                        help="close a connection idle for S seconds between requests (default 5)")
    parser.add_argument("--max-connections", type=int, default=100, metavar="N",
                        help="most open connections; beyond, requests other than the probes get a 503 "
                             "`too_many_connections` (default 100)")
    parser.add_argument("--log-level", default="info", choices=["critical", "error", "warning", "info", "debug"])
    parser.add_argument("--access-log", action="store_true", help="log every request (off by default: costs time)")
    parser.add_argument("--watch", action="store_true",
                        help="hot-swap models whose files change: the new file is loaded and warmed beside the "
                             "old model, then swapped in; a broken file is refused and the old model serves on "
                             "(SIGHUP does the same once, with or without --watch)")
    parser.add_argument("--watch-interval", type=float, default=1.0, metavar="S",
                        help="with --watch, look at the model files every S seconds (default 1)")
    jobs = parser.add_argument_group("jobs (relaxations and MD on the server: /v1/jobs)")
    jobs.add_argument("--jobs-dir", metavar="DIR",
                      help="keep jobs and their frames in DIR (an SQLite database); without it the server runs no "
                           "jobs. On start, jobs left running by a previous server are marked `interrupted`")
    jobs.add_argument("--max-jobs", type=int, default=0, metavar="N",
                      help="jobs running at once, on their own threads (default: half the CPUs, at least 1)")
    jobs.add_argument("--jobs-ttl", type=float, default=168.0, metavar="HOURS",
                      help="delete finished jobs and their frames HOURS after they ended (default 168, a week)")
    jobs.add_argument("--jobs-max-atom-steps", type=int, default=100_000_000, metavar="N",
                      help="most atoms × steps in one job (default 1e8; more: 413)")
    jobs.add_argument("--jobs-max-frame-atoms", type=int, default=2_000_000, metavar="N",
                      help="most atoms × frames kept for one job, ~88 bytes each (default 2e6, ~180 MB; more: 413)")
    jobs.add_argument("--scheduler", metavar="ADDRESS",
                      help="run the jobs on the workers of this dask.distributed scheduler (e.g. tcp://host:8786), "
                           "which must see the model files at the same paths; --max-jobs then bounds the jobs in "
                           "flight on the cluster")
    learn = parser.add_argument_group("learning (labelled data posted to a model: POST /v1/models/NAME/data)")
    learn.add_argument("--learn", action="append", default=[], metavar="NAME",
                       help="let the served model NAME take labelled data: each post is logged durably, folded "
                            "into the model's fit state (<model stem>.fitstate.npz beside it, from `aceserver fit "
                            "--save-state`) and refitted in the background; the new model file and state replace "
                            "the old ones and the server swaps the model in. Repeat for several models")
    learn.add_argument("--learn-dir", metavar="DIR",
                       help="keep the posted data in DIR (an SQLite database, learning.sqlite; default: --jobs-dir)")
    learn.add_argument("--learn-max-pending-atoms", type=int, default=1_000_000, metavar="N",
                       help="most atoms posted to one model and waiting for its refit (default 1000000; more: 503)")
    parser.add_argument("--warm-only", action="store_true",
                        help="load the models, compile/cache the kernels, and exit (e.g. while building an image)")


def _read_token(path: str) -> str:
    with open(path, encoding="utf-8") as fh:
        token = fh.read().strip()
    if not token:
        raise ValueError(f"token file {path} is empty")
    return token


def run(args: argparse.Namespace) -> int:
    from aceserver.catalogue import ModelLookupError
    from aceserver.errors import ModelFileError
    from aceserver.serving import process
    from aceserver.serving.http import ModelRegistry

    logging.basicConfig(level=args.log_level.upper(), format="%(levelname)s: %(name)s: %(message)s")
    try:      # once, from the main thread, before any other thread runs (serving.process says why)
        blas = process.set_blas_threads(args.blas_threads)
    except ValueError as ex:
        print(f"aceserver serve: --blas-threads: {ex}", file=sys.stderr)
        return 2
    print(f"aceserver serve: BLAS threads {args.blas_threads} ({process.describe_blas(blas)})", file=sys.stderr)
    try:
        token = _read_token(args.token_file) if args.token_file else None
        registry = ModelRegistry.load(args.models)
    except (OSError, ValueError, ModelLookupError, ModelFileError) as ex:
        print(f"aceserver serve: {ex}", file=sys.stderr)
        return 2
    for m in registry.models.values():
        info = m.info()
        print(f"aceserver serve: model {m.name!r} from {m.path}: species {', '.join(info['species'])}, "
              f"rcut {info['rcut']} Å, {info['length_basis']} basis functions, sha256 {m.sha256[:12]}",
              file=sys.stderr)
    if args.warm_only:
        registry.warm(args.kernel_threads or None)
        print("aceserver serve: kernels warmed", file=sys.stderr)
        return 0

    from aceserver.serving.http import Settings, create_app
    from aceserver.serving.http.server import make_server

    settings = Settings(token=token, max_atoms=args.max_atoms, max_structures=args.max_structures,
                        max_pairs=args.max_pairs, max_descriptor_values=args.max_descriptor_values,
                        max_body_bytes=int(args.max_body_mb * 1024 * 1024), workers=args.workers,
                        kernel_threads=args.kernel_threads or None, blas_threads=args.blas_threads,
                        gc_freeze=not args.no_gc_freeze,
                        watch_interval=args.watch_interval if args.watch else 0.0,
                        drain_timeout=args.drain_timeout, header_timeout=args.header_timeout,
                        body_timeout=args.body_timeout, keep_alive_timeout=args.keep_alive_timeout,
                        max_connections=args.max_connections, jobs_dir=args.jobs_dir, max_jobs=args.max_jobs,
                        jobs_ttl_hours=args.jobs_ttl, jobs_max_atom_steps=args.jobs_max_atom_steps,
                        jobs_max_frame_atoms=args.jobs_max_frame_atoms, scheduler=args.scheduler,
                        learn=tuple(args.learn), learn_dir=args.learn_dir,
                        learn_max_pending_atoms=args.learn_max_pending_atoms)
    if args.host not in ("127.0.0.1", "localhost", "::1") and token is None:
        print(f"aceserver serve: warning: listening on {args.host} without --token-file: anyone who can reach "
              "this port can use the server", file=sys.stderr)
    fitter = None
    if args.learn:
        from aceserver.fitting import incremental as fitter
    try:
        app = create_app(registry, settings, fitter)
    except (OSError, ValueError) as ex:      # the jobs directory, the scheduler, the learning models or data log
        print(f"aceserver serve: {ex}", file=sys.stderr)
        return 2
    server = make_server(app, args.host, args.port, args.log_level, args.access_log)
    # uvicorn re-raises SIGTERM once it has drained; a drained shutdown is a clean exit (code 0), as
    # for PID 1 in a container, so the re-raised signal is ignored (uvicorn handles it while serving)
    signal.signal(signal.SIGTERM, lambda signum, frame: None)
    server.run()
    code = 0 if server.started else 1
    if app.state.drain.expired and threading.active_count() > 1:
        # requests were cut at the drain deadline: their threads may still be inside a compiled
        # kernel, which cannot be interrupted and would hold the interpreter's exit until the
        # structure is done; their results have no one to go to
        print(f"aceserver serve: drain timeout ({args.drain_timeout:g} s) passed; exiting without waiting for "
              "evaluations in progress", file=sys.stderr)
        logging.shutdown()
        sys.stdout.flush()
        sys.stderr.flush()
        os._exit(code)
    return code
