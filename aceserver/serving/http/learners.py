"""The learning service's server side: one `aceserver.learning.ModelLearner` per model named by
`--learn`, sharing one data log (`learning.sqlite` in `--learn-dir`, else in `--jobs-dir`), each
handing its refitted models to the registry: warmed beside the served model (`ServedModel.warm`),
then swapped in (`ModelRegistry.install`), as `--watch` does for changed files.
"""
from __future__ import annotations

from typing import Any, Callable

from fastapi import Request

from aceserver.learning import DataLog, ModelLearner, recover
from aceserver.loading import load_model

from .counters import Metrics
from .registry import ModelRegistry, ServedModel, without_paths
from .settings import Settings


def publisher(registry: ModelRegistry, metrics: Metrics, name: str, path: str,
              threads: int | None) -> Callable[[Any, str], Callable[[], None]]:
    """`publish(model, replaces)` for a learner: warms the refitted model and returns the swap;
    refuses (RuntimeError) when the served model is not `replaces` (the sha256 of the model the
    learner's state belongs to): the file was replaced outside the learning service."""
    def publish(model: Any, replaces: str) -> Callable[[], None]:
        current = registry.get(name).sha256
        if current != replaces:
            raise RuntimeError(f"the served model {name!r} (sha256 {current[:12]}) is not the one the fit state "
                               f"belongs to ({replaces[:12]}): its file was replaced outside the learning service; "
                               "restart the server to learn from the new model and its state")
        served = ServedModel(name, model, path)
        served.warm(threads)

        def swap() -> None:
            registry.install(served)
            metrics.count_reload(name, "swapped")
        return swap
    return publish


def open_learners(registry: ModelRegistry, settings: Settings, metrics: Metrics, fitter: Any) -> dict[str, ModelLearner]:
    """The learners of the models `settings.learn` names; a ValueError with the reason (`LearningError`,
    `DataLogError` among them) for a name that is not served or has no usable fit state, or a data log
    that cannot be used."""
    if not settings.learn:
        return {}
    directory = settings.learn_dir or settings.jobs_dir
    if directory is None:
        raise ValueError("--learn needs a directory for the data log: --learn-dir DIR (or --jobs-dir DIR)")
    if fitter is None:
        raise ValueError("--learn needs the incremental fitter (aceserver.fitting.incremental)")
    log = DataLog(directory)
    learners = {}
    for name in settings.learn:
        m = registry.get(name)
        if m is None:
            raise ValueError(f"--learn {name}: no served model has that name (served: {', '.join(registry.models)})")
        if recover(name, m.path, log, fitter, m.sha256):      # not warmed yet: the lifespan warms all models
            m = ServedModel(name, load_model(m.path), m.path)
            registry.install(m)
        learners[name] = ModelLearner(name, m.model, m.path, log, fitter,
                                 publisher(registry, metrics, name, m.path, settings.kernel_threads),
                                 threads=settings.kernel_threads, max_pending_atoms=settings.learn_max_pending_atoms,
                                 on_refit=lambda result, name=name: metrics.count_refit(name, result))
    return learners


def not_learnable(name: str) -> dict:
    reason = (f"model {name!r} is served without learning: start the server with `--learn {name}` (the model "
              "needs its fit state beside it: `aceserver fit CONFIG.yaml --save-state`)")
    return {"learnable": False, "reason": reason}


def learning_status(name: str, request: Request) -> dict:
    found = request.app.state.learners.get(name)
    if found is None:
        return not_learnable(name)
    status = found.status()
    if status["refit"]["error"]:
        status["refit"]["error"] = without_paths(status["refit"]["error"])
    for r in status["refused"]:
        r["reason"] = without_paths(r["reason"])
    if status["active_set"]["reason"]:
        status["active_set"]["reason"] = without_paths(status["active_set"]["reason"])
    return status
