"""`acefit`: data → weighted, prior-scaled least squares → parameters (+ committee), errors, metadata.

Mirrors ACEpotentials.jl's ``acefit!`` (``src/fit_model.jl``):

    Ã = diag(w) · A · P⁻¹,  ỹ = w ∘ y,  c̃ = solve(solver, Ã, ỹ [, Ã_val, ỹ_val]),  θ = P⁻¹ c̃

with P = diag(γ) the smoothness prior. Committee members are mapped back the same way.
"""
from __future__ import annotations

import datetime as _dt
import logging
import time
from dataclasses import dataclass, field

import numpy as np

from . import assembly, errors, priors, solvers
from .data import DEFAULT_WEIGHTS, Config, normalise_weights

log = logging.getLogger(__name__)


def jsonable(obj):
    """Strict-JSON copy: non-finite floats become None, numpy scalars/arrays Python numbers/lists."""
    import math
    from pathlib import Path
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


def acefit(model, train: list[Config], weights: dict | None = None, prior=None, solver=None,
           validation: list[Config] | None = None, seed: int = 0, threads: int | None = None,
           progress: bool | None = None, memory_limit: int | None = None, executor=None,
           compute_errors: bool = True, system: assembly.LsqSystem | None = None,
           validation_system: assembly.LsqSystem | None = None) -> FitResult:
    """Fit ``model.parameters`` (and ``model.committee``) in place; E0 must already be set on the model.

    ``prior``: spec for :func:`priors.make_prior` (default algebraic p = 4; "none" for P = I).
    ``solver``: spec for :func:`solvers.solve` (default BLR). ``validation``: configurations used
    by the truncated-SVD solver to choose its truncation, and reported separately.
    ``system``/``validation_system``: already assembled (unweighted) systems of ``train``/``validation``
    for this model and E0, reused without reassembly (they are not modified; weights are recomputed).
    """
    weights = normalise_weights(weights if weights is not None else DEFAULT_WEIGHTS)
    timings = {}
    gamma = priors.make_prior(model.basis_labels, prior)
    if gamma.shape != (model.length_basis,):
        raise ValueError(f"{len(gamma)} basis labels for {model.length_basis} parameters")

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

    spec = {"name": "blr"} if solver is None else ({"name": solver} if isinstance(solver, str) else dict(solver))
    Av = yv = None
    if validation and str(spec.get("name", "")).lower() in ("tsvd", "truncated_svd", "truncatedsvd"):
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

    model.parameters = sol.coef / gamma
    model.committee = None if sol.committee is None else sol.committee / gamma[None, :]

    errs, preds = {}, {}
    if compute_errors:
        t0 = time.perf_counter()
        for name, cs in (("train", train), ("validation", validation)):
            if cs:
                preds[name] = errors.predict(model, cs, threads)
                errs[name] = errors.error_table(cs, preds[name])
        timings["errors_s"] = time.perf_counter() - t0

    info = {k: v for k, v in sol.info.items()}
    meta = dict(getattr(model, "metadata", None) or {})
    meta["fit"] = {
        "solver": spec, "solver_info": info,
        "prior": prior if prior is not None else {"name": "algebraic", "p": 4},
        "weights": weights, "E0": dict(model.E0), "seed": seed,
        "n_train_configs": len(train), "n_validation_configs": len(validation or []),
        "n_observations": int(shape[0]), "n_basis": int(shape[1]),
        "errors": {k: errors.public(v) for k, v in errs.items()},
        "units": {"E": "eV/atom", "F": "eV/Å", "V": "eV/atom"},
        "timings_s": timings,
        "date": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
    }
    try:
        from aceserver import __version__
        meta["fit"]["aceserver_version"] = __version__
    except ImportError:  # pragma: no cover
        pass
    model.metadata = jsonable(meta)
    return FitResult(model=model, solver_info=info, errors=errs, timings=timings, shape=shape,
                     predictions=preds)
