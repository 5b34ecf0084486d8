"""The ``aceserver fit`` workflow as library code: a parsed :class:`config.FitConfig` → data read and
split, E0 resolved, model built, :func:`fit_model.acefit`, model file, parity plots, report.

    load_data(cfg)           -> (train, validation, E0)
    run_fit(cfg, ...)        -> (model, report): fit, print the summary, write the model and plots
    estimate(cfg, ...)       -> rows, basis size, memory of both paths, assembly time (nothing assembled)
    evaluate_errors(model, paths, keys)  -> the error table of a model on data files (``aceserver eval``)
    read_data(model, paths, keys)        -> the configurations of those files
    active_set_from_files(model, paths)  -> the active sets of a model from data files (``aceserver activeset``)
    fit_active_set(model, train, path)   -> the sidecar written after a fit (``output.active_set``)
    provenance(cfg)          what the model file records of its fit (data by name and sha256 only)
    portable_command(argv)   the command line without paths of the machine that fitted
    sha256_file(path)

Energies eV, forces eV/Å; memory in bytes (GiB where printed).
"""
from __future__ import annotations

import hashlib
import os
import sys
import time
from pathlib import Path

from aceserver.io.activeset_file import sidecar_path

from . import active_set_build, assembly, cluster, data, error_tables, streaming
from . import config as fconfig
from .active_set import ActiveSetError
from .fit_model import acefit, jsonable
from .plots import parity_plots
from .streaming import reduce_configs


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


def provenance(cfg, argv: list[str] | None = None) -> dict:
    """The fit's provenance for the model file: the configuration, the data files by name and
    sha256, the command line (when run as ``aceserver``; ``argv`` default ``sys.argv``) and the
    Python version."""
    argv = sys.argv if argv is None else argv
    return {
        "config_file": cfg.path.name if cfg.path else None,
        "config": cfg.raw,
        # by file name and checksum only: no path of the machine that fitted
        "data": [{"file": Path(p).name, "sha256": sha256_file(p)} for p in cfg.train + cfg.validation],
        "command": portable_command(["aceserver"] + argv[1:])
        if Path(argv[0]).name in ("aceserver", "cli.py") else None,
        "python": sys.version.split()[0],
    }


def load_data(cfg):
    """(train, validation, E0) for a :class:`FitConfig`: files read, split (seeded), E0 resolved."""
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
    if cfg.force_groups:        # groups of the training set's RMS forces; validation by the same edges
        try:
            edges = data.group_by_force(train, cfg.force_groups)
            data.group_by_force(validation, cfg.force_groups, edges)
        except ValueError as exc:
            raise fconfig.FitConfigError(f"'data.force_groups': {exc}") from None
    return train, validation, data.resolve_E0(cfg.E0, elements, train)


def read_data(model, paths, keys: data.Keys) -> list:
    """The configurations of extended-XYZ files, in order, checked against ``model``'s elements."""
    configs = []
    for p in paths:
        configs += data.read_configs(p, keys, elements=list(model.elements))
    return configs


def evaluate_errors(model, paths, keys: data.Keys, threads: int | None = None) -> dict:
    """:func:`error_tables.compute_errors` of ``model`` on the configurations of extended-XYZ files."""
    return error_tables.compute_errors(model, read_data(model, paths, keys), threads)


def active_set_from_files(model, paths, **kwargs) -> active_set_build.ActiveSetBuild:
    """`active_set_build.build_active_set` over the structures of extended-XYZ files, streamed
    (`active_set_build.read_structures`); the sidecar records the files by name and sha256."""
    paths = [Path(p) for p in paths]
    return active_set_build.build_active_set(
        model, active_set_build.read_structures(paths), data_files=[p.name for p in paths],
        data_sha256=[sha256_file(p) for p in paths], **kwargs)


def fit_active_set(model, train, model_path, data_paths=(), out=None) -> dict:
    """After a fit: the active sets of the training configurations, written beside the model
    file as `<stem>.activeset.npz`. Data that cannot give one (fewer independent atoms of an
    element than its descriptor columns) is a warning, not an error: the model stays usable,
    only γ is not available. Returns the report entry."""
    out = sys.stdout if out is None else out
    try:
        build = active_set_build.build_active_set(
            model, train, data_files=[Path(p).name for p in data_paths],
            data_sha256=[sha256_file(p) for p in data_paths])
    except ActiveSetError as err:
        print(f"warning: no active set written (γ will not be available for this model): {err}",
              file=out)
        return {"error": str(err)}
    path = sidecar_path(model_path)
    build.save(path)
    rows = active_set_build.summary(build)
    print(f"active set written to {path}: " + "; ".join(
        f"{r['element']} L {r['L']} from {r['atoms']} atoms" + (
            f" ({r['floor_rows']} floor rows: the data span only {r['L'] - r['floor_rows']} "
            "directions)" if r["floor_rows"] else "") for r in rows), file=out)
    return {"file": path.name, "elements": rows}


class KeepingReducer:
    """A reducer for :func:`fit_model.acefit` that keeps what it returns: ``kept`` gets the
    :class:`streaming.GroupFactors` of each call (training set first, then validation, if reduced)."""

    def __init__(self, inner, kept: list, path: str = "streaming"):
        self.inner, self.kept, self.path = inner, kept, path

    def __call__(self, configs):
        gf = self.inner(configs)
        self.kept.append(gf)
        return gf


def run_fit(cfg, output=None, threads=None, plots=True, progress=None, out=None, prepared=None,
            streaming=None, memory_budget=None, client=None, on_task=None, keep_factors=None,
            provenance_extra=None):
    """Run a parsed :class:`FitConfig`; returns (model, report dict).

    ``prepared``: optional (model, train, validation, train_system, validation_system) already built
    from this configuration (as by :func:`load_data` and assembly), reused instead of rebuilding.
    ``streaming``/``memory_budget`` (bytes): see :func:`fit_model.acefit`. ``client``: a
    ``dask.distributed.Client`` whose workers compute the blocks (``on_task(done, total)`` after each task).
    ``keep_factors``: a list; the fit then reduces (streaming or Dask path) and appends the factors
    it solved from (:class:`KeepingReducer`). ``provenance_extra``: entries added to the model
    file's provenance before it is written.
    """
    out = sys.stdout if out is None else out

    t_start = time.perf_counter()
    base = cfg.path.parent if cfg.path else Path.cwd()

    def rel(p):
        """Paths in reports and metadata are relative to the configuration file."""
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
        reducer = cluster.DaskReducer(client, cluster.model_definition(cfg.model, E0), cfg.keys,
                                      n_basis=model.length_basis, progress=progress, on_task=on_task)
    if keep_factors is not None:
        inner = reducer or (lambda cs: reduce_configs(model, cs, threads=threads, progress=progress))
        reducer = KeepingReducer(inner, keep_factors, getattr(reducer, "path", "streaming"))
    budget = memory_budget if memory_budget is not None else cfg.memory_limit
    res = acefit(model, train, weights=cfg.weights, prior=cfg.prior, solver=cfg.solver,
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
                     for k, v in info.items() if k != "solver" and isinstance(v, (int, float, str)))
    print(f"solver {info.get('solver')}: {desc}", file=out)
    print(error_tables.format_table(res.errors["train"], "training errors"), file=out)
    if "validation" in res.errors:
        print(error_tables.format_table(res.errors["validation"], "validation errors"), file=out)

    meta = model.metadata
    meta["fit"]["provenance"] = jsonable(dict(provenance(cfg), **(provenance_extra or {})))
    meta["fit"]["timings_s"]["model_build_s"] = t_build
    model.metadata = jsonable(meta)

    output = Path(output) if output else cfg.output_model
    if output is not None:
        output.parent.mkdir(parents=True, exist_ok=True)
        model.save(str(output))
        print(f"model written to {output}" + (f" (sha256 {model.sha256})" if getattr(model, "sha256", None) else ""),
              file=out)
    active_set = None
    if output is not None and cfg.output_active_set:
        active_set = fit_active_set(model, train, output, cfg.train, out)
    written = []
    if plots and cfg.output_plots is not None:
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
        "errors": {k: error_tables.public(v) for k, v in res.errors.items()},
        "timings_s": dict(res.timings, model_build_s=t_build, total_s=time.perf_counter() - t_start),
        "assembly": res.run,
        "plots": [rel(p) for p in written],
        "active_set": active_set,
    })
    return model, report


def estimate(cfg, threads=None, memory_budget=None, out=None) -> dict:
    """Rows, basis size, memory of the in-memory and streaming paths and an assembly-time estimate
    (from timing a few configurations), printed; nothing is assembled."""
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
