"""`acefit`: data → weighted, prior-scaled least squares → parameters (+ committee), errors, metadata.

Mirrors ACEpotentials.jl's ``acefit!`` (``src/fit_model.jl``):

    Ã = diag(w) · A · P⁻¹,  ỹ = w ∘ y,  c̃ = solve(solver, Ã, ỹ [, Ã_val, ỹ_val]),  θ = P⁻¹ c̃

with P = diag(γ) the smoothness prior. Committee members are mapped back the same way.
"""
from __future__ import annotations

import datetime as _dt
import logging
import math
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from aceserver import __version__

from . import assembly, error_tables, priors, solvers
from . import streaming as stream
from .data import DEFAULT_WEIGHTS, Config, normalise_weights

log = logging.getLogger(__name__)
VALIDATED = ("tsvd", "truncated_svd", "truncatedsvd", "asp")   # solvers that choose on the validation set


def jsonable(obj):
    """Strict-JSON copy: non-finite floats become None, numpy scalars/arrays Python numbers/lists."""
    if isinstance(obj, dict):
        return {str(k): jsonable(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [jsonable(v) for v in obj]
    if isinstance(obj, np.ndarray):
        return jsonable(obj.tolist())
    if isinstance(obj, (np.floating, float)):
        return float(obj) if math.isfinite(obj) else None
    if isinstance(obj, (np.integer, np.bool_)):
        return obj.item()
    if isinstance(obj, Path):
        return str(obj)
    return obj


@dataclass
class FitResult:
    model: object
    solver_info: dict
    errors: dict                      # {"train": table, "validation": table?}
    timings: dict = field(default_factory=dict)
    shape: tuple = (0, 0)
    predictions: dict = field(default_factory=dict)   # {"train": [(E, F, W)], "validation": ...}
    run: dict = field(default_factory=dict)           # path ("in-memory" | "streaming" | "dask"), memory (GiB)


def acefit(model, train: list[Config], weights: dict | None = None, prior=None, solver=None,
           validation: list[Config] | None = None, seed: int = 0, threads: int | None = None,
           progress: bool | None = None, memory_limit: int | None = None, executor=None,
           compute_errors: bool = True, system: assembly.LsqSystem | None = None,
           validation_system: assembly.LsqSystem | None = None, streaming: bool | None = None,
           memory_budget: int | None = None, reducer=None) -> FitResult:
    """Fit ``model.parameters`` (and ``model.committee``) in place; E0 must already be set on the model.

    ``prior``: spec for :func:`priors.make_prior` (default algebraic p = 4; "none" for P = I).
    ``solver``: spec for :func:`solvers.solve` (default BLR). ``validation``: configurations used
    by the truncated-SVD solver to choose its truncation, and reported separately.
    ``system``/``validation_system``: already assembled (unweighted) systems of ``train``/``validation``
    for this model and E0, reused without reassembly (they are not modified; weights are recomputed).
    ``streaming``: True reduces the system block by block (:mod:`.streaming`, memory O(m²) whatever
    the number of rows); None (default) does so when the dense matrix and the solver's copy would
    exceed ``memory_budget`` bytes (default: half the available memory). ``reducer(configs)``: returns
    the :class:`streaming.GroupFactors` of configurations computed elsewhere (e.g. on Dask workers).
    ``FitResult.run`` says which path ran and its peak resident memory (GiB; of this process).
    """
    weights = normalise_weights(weights if weights is not None else DEFAULT_WEIGHTS)
    timings = {}
    gamma = priors.make_prior(model.basis_labels, prior)
    if gamma.shape != (model.length_basis,):
        raise ValueError(f"{len(gamma)} basis labels for {model.length_basis} parameters")
    spec = {"name": "blr"} if solver is None else ({"name": solver} if isinstance(solver, str) else dict(solver))

    path = choose_path(model, train, system, streaming, memory_budget, reducer)
    with stream.PeakMemory() as peak:
        if path == "in-memory":
            sol, shape = _solve_dense(model, train, validation, weights, gamma, spec, seed, threads, progress,
                                      executor, memory_limit, system, validation_system, timings)
        else:
            sol, shape = _solve_reduced(model, train, validation, weights, gamma, spec, seed, threads,
                                        progress, reducer, timings)
    run = dict(path=path, **peak.report())
    if "factors_gb" in timings:
        run["factors_gb"] = timings.pop("factors_gb")
    return _finish(model, train, validation, weights, prior, spec, seed, threads, gamma, sol, shape, timings,
                   compute_errors, run)


def choose_path(model, train, system=None, streaming=None, memory_budget=None, reducer=None) -> str:
    """"in-memory", "streaming" or "dask" (see :func:`acefit`)."""
    if system is not None:
        return "in-memory"
    if reducer is not None:
        return getattr(reducer, "path", "dask")
    if streaming is not None:
        return "streaming" if streaming else "in-memory"
    budget = memory_budget if memory_budget is not None else assembly.available_memory() // 2
    rows = sum(assembly.count_rows(c) for c in train)
    return "streaming" if assembly.memory_estimate(rows, model.length_basis) > budget else "in-memory"


def _solve_reduced(model, train, validation, weights, gamma, spec, seed, threads, progress, reducer, timings):
    t0 = time.perf_counter()
    reduce = reducer or (lambda cs: stream.reduce_configs(model, cs, threads=threads, progress=progress))
    gf = reduce(train)
    timings["assembly_s"] = time.perf_counter() - t0
    timings["factors_gb"] = gf.nbytes() / 2 ** 30
    t0 = time.perf_counter()
    red = stream.reduced_system(gf, weights, gamma)
    shape = (gf.total_rows, model.length_basis)
    del gf
    val = None
    if validation and str(spec.get("name", "")).lower() in VALIDATED:
        val = stream.reduced_system(reduce(validation), weights, gamma)
    sol = red.solve(spec, validation=val, seed=seed)
    timings["solve_s"] = time.perf_counter() - t0
    return sol, shape


def _solve_dense(model, train, validation, weights, gamma, spec, seed, threads, progress, executor,
                 memory_limit, system, validation_system, timings):
    if system is None:
        system = assembly.assemble(model, train, weights, threads=threads, progress=progress,
                                   executor=executor, memory_limit=memory_limit)
        inplace = True
    else:
        system = assembly.LsqSystem(system.A, system.y, assembly.row_weights(system, train, weights),
                                    system.config, system.kind, system.seconds)
        inplace = False
    timings["assembly_s"] = system.seconds
    shape = system.shape
    At, yt = assembly.scaled_system(system, gamma, inplace=inplace)
    del system

    Av = yv = None
    if validation and str(spec.get("name", "")).lower() in VALIDATED:
        if validation_system is None:
            vs = assembly.assemble(model, validation, weights, threads=threads, progress=progress,
                                   executor=executor, memory_limit=memory_limit)
            Av, yv = assembly.scaled_system(vs, gamma, inplace=True)
        else:
            vs = validation_system
            vs = assembly.LsqSystem(vs.A, vs.y, assembly.row_weights(vs, validation, weights), vs.config, vs.kind)
            Av, yv = assembly.scaled_system(vs, gamma, inplace=False)
    t0 = time.perf_counter()
    sol = solvers.solve(spec, At, yt, Av, yv, seed=seed, overwrite_a=True)
    del At
    timings["solve_s"] = time.perf_counter() - t0
    return sol, shape


def _finish(model, train, validation, weights, prior, spec, seed, threads, gamma, sol, shape, timings,
            compute_errors, run):
    model.parameters = sol.coef / gamma
    model.committee = None if sol.committee is None else sol.committee / gamma[None, :]

    errs, preds = {}, {}
    if compute_errors:
        t0 = time.perf_counter()
        for name, cs in (("train", train), ("validation", validation)):
            if cs:
                preds[name] = error_tables.predict(model, cs, threads)
                errs[name] = error_tables.error_table(cs, preds[name])
        timings["errors_s"] = time.perf_counter() - t0

    info = {k: v for k, v in sol.info.items()}
    meta = dict(getattr(model, "metadata", None) or {})
    meta["fit"] = {
        "solver": spec, "solver_info": info,
        "prior": prior if prior is not None else {"name": "algebraic", "p": 4},
        "weights": weights, "E0": dict(model.E0), "seed": seed,
        "n_train_configs": len(train), "n_validation_configs": len(validation or []),
        "n_observations": int(shape[0]), "n_basis": int(shape[1]),
        "errors": {k: error_tables.public(v) for k, v in errs.items()},
        "units": {"E": "eV/atom", "F": "eV/Å", "V": "eV/atom"},
        "timings_s": timings, "assembly": run,
        "date": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
        "aceserver_version": __version__,
    }
    model.metadata = jsonable(meta)
    return FitResult(model=model, solver_info=info, errors=errs, timings=timings, shape=shape,
                     predictions=preds, run=run)
