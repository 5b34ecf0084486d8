"""The models a server serves, addressed by name; kernel warm-up; hot reload of model files.

Only the public model API is used: `load_model`, `model.info()`, `model.elements`, `model.rcut`,
`model.active_set`, `model.descriptor_sizes`, `model.evaluate(...)`. Where MODEL arguments and shipped models are found is `aceserver.catalogue`.
"""
from __future__ import annotations

import logging
import os
import re
import threading
import time
from collections import deque
from dataclasses import dataclass
from typing import Any, Callable

import numpy as np
from ase.data import atomic_numbers

from aceserver.catalogue import ModelLookupError, default_model, resolve
from aceserver.loading import load_model

from .schema import ModelInfo

log = logging.getLogger("aceserver.http")


class ServedModel:
    """A loaded model and its name; its description is computed once (served models do not change)."""

    def __init__(self, name: str, model: Any, path: str | None = None, stamp: tuple[int, int] | None = None):
        self.name, self.model, self.path = name, model, path
        # the file as it was read (hot reload compares); reloads pass the stamp taken before reading
        self.stamp = stamp if stamp is not None else file_stamp(path)
        self.loaded_at = time.time()
        self._info = self._describe()
        self.sha256: str = self._info["sha256"]
        self.has_committee: bool = self._info["committee_size"] > 0

    def info(self) -> dict[str, Any]:
        return dict(self._info)

    def _describe(self) -> dict[str, Any]:
        info = dict(self.model.info())
        metadata = info.get("metadata") or {}
        # `aceserver fit` records errors in metadata.fit.errors (per data set) with metadata.fit.units
        fit = metadata.get("fit") if isinstance(metadata.get("fit"), dict) else {}
        errors = metadata.get("fit_errors", fit.get("errors"))
        desc = {
            "name": self.name,
            "species": list(info.get("species", self.model.elements)),
            "rcut": float(info.get("rcut", self.model.rcut)),
            "length_basis": int(info["length_basis"]),
            "sha256": str(info["sha256"]),
            "format": str(info.get("format", "aceserver-json")),
            "cutoffs": info.get("cutoffs"),
            "committee_size": int(info.get("committee_size") or 0),
            "fit_errors": errors if isinstance(errors, dict) else None,
            "fit_error_units": fit.get("units") if isinstance(fit.get("units"), dict) else None,
            "metadata": metadata,
        }
        active = getattr(self.model, "active_set", None)
        desc["gamma_available"] = active is not None
        # a sidecar beside the model is inverted at the first γ request: its sizes are known before
        as_sizes = getattr(active, "sizes", None) or (
            None if active is None else {el: np.shape(a)[0] for el, a in active.inverses.items()})
        desc["active_set"] = None if as_sizes is None else {str(el): int(n) for el, n in as_sizes.items()}
        sizes = getattr(self.model, "descriptor_sizes", None)    # a family may have no descriptors
        desc["descriptor_sizes"] = None if sizes is None else {str(el): int(n) for el, n in sizes.items()}
        if isinstance(info.get("units"), dict):
            desc["units"] = {str(k): str(v) for k, v in info["units"].items()}
        # validated once here, so that a model whose description does not fit the schema fails at start-up
        return ModelInfo.model_validate(desc).model_dump()

    def warm(self, threads: int | None = 1) -> None:
        """Evaluate a cluster and a periodic grid once, so the numba kernels are compiled (or loaded
        from numba's cache) before the server reports ready: through the cancellable path that
        requests take (`evaluate(cancel=...)`, `compute.evaluate_structure`)."""
        numbers = [atomic_numbers[e] for e in self.model.elements]
        spacing = 0.45 * float(self.model.rcut)
        committee = self.has_committee
        grid = np.array([(i, j, k) for i in range(4) for j in range(4) for k in range(3)], dtype=float)
        zs = np.array([numbers[i % len(numbers)] for i in range(len(grid))])
        cell = np.diag([4.0, 4.0, 3.0]) * spacing
        never = threading.Event()
        # γ too where there is an active set: its descriptor kernel compiles on first use as well
        self.model.evaluate(zs, grid * spacing, cell, np.ones(3, bool), committee=committee,
                            committee_forces=committee, threads=threads, cancel=never,
                            gamma=getattr(self.model, "active_set", None) is not None)
        self.model.evaluate(zs[:5], grid[:5] * spacing, np.zeros((3, 3)), np.zeros(3, bool),
                            committee=committee, committee_forces=committee, threads=threads, cancel=never)


def file_stamp(path: str | None) -> tuple[int, int] | None:
    """(mtime in ns, size) of a model file, or None when there is no such file."""
    try:
        st = os.stat(path) if path else None
    except OSError:
        return None
    return None if st is None else (st.st_mtime_ns, st.st_size)


# an absolute path (POSIX or Windows) and its last component
_PATH_RE = re.compile(r"(?<![\w.~:/-])(?:/|[A-Za-z]:[\\/])(?:[^\s'\"/\\]+[/\\])*([^\s'\"/\\]*)")


def without_paths(text: str) -> str:
    """`text` with every absolute file path shortened to its file name: replies never name a path
    of the server's machine (the log keeps them)."""
    return _PATH_RE.sub(lambda m: m.group(1) or "<path>", text)


@dataclass
class Reload:
    """What one reload did to one model: `swapped`, `refused` (new file broken; old one serves on)."""

    name: str
    result: str
    old_sha256: str
    new_sha256: str | None = None
    message: str = ""                 # for the log; `reply()` gives it without file paths

    def reply(self) -> dict[str, Any]:
        return {"name": self.name, "result": self.result, "old_sha256": self.old_sha256,
                "new_sha256": self.new_sha256, "message": without_paths(self.message)}


class ModelRegistry:
    def __init__(self, models: list[ServedModel]):
        if not models:
            raise ValueError("a server needs at least one model")
        models_by_name = {}
        for m in models:
            if m.name in models_by_name:
                raise ModelLookupError(f"two models are named {m.name!r}; use NAME=PATH to tell them apart")
            models_by_name[m.name] = m
        # Replaced as a whole, never mutated: a request takes its ServedModel once (`get`) and finishes
        # on it, so a swap never mixes two models within one reply.
        self.models: dict[str, ServedModel] = models_by_name
        self.default = models[0].name
        self._reload_lock = threading.Lock()
        self._attempted: dict[str, tuple[int, int] | None] = {m.name: m.stamp for m in models}
        self.reloads: deque[Reload] = deque(maxlen=100)    # the latest, for the web page
        self.on_swap: Callable[[ServedModel], None] | None = None   # called with each model swapped out

    def reload(self, force: bool = False, threads: int | None = 1) -> list[Reload]:
        """Load every served model file that changed since it was last tried (`force`: every file),
        warm it beside the serving one and swap it in; a file that fails to load or warm is refused
        and logged, and the model loaded before keeps serving. Unchanged content (same sha256) is kept."""
        done: list[Reload] = []
        with self._reload_lock:                  # one reload at a time (watcher and SIGHUP)
            for name, old in list(self.models.items()):
                stamp = file_stamp(old.path)
                if old.path is None or (not force and stamp == self._attempted.get(name)):
                    continue
                self._attempted[name] = stamp
                try:
                    if stamp is None:
                        raise FileNotFoundError(f"model file {old.path} is missing")
                    new = ServedModel(name, load_model(old.path), old.path, stamp)
                    if new.sha256 == old.sha256:
                        continue
                    new.warm(threads)
                except Exception as ex:          # any failure: keep serving the old model
                    r = Reload(name, "refused", old.sha256, message=f"{type(ex).__name__}: {ex}")
                    log.error("reload of model %r from %s refused (%s); still serving sha256 %s",
                              name, old.path, r.message, old.sha256[:12])
                else:
                    self.models = {**self.models, name: new}
                    self._swapped_out(old)
                    r = Reload(name, "swapped", old.sha256, new.sha256)
                    log.info("model %r swapped: sha256 %s -> %s (%s)", name, old.sha256[:12], new.sha256[:12],
                             old.path)
                done.append(r)
            self.reloads.extend(done)
        return done

    def install(self, new: ServedModel) -> None:
        """Serve `new` under its name from now on (a refit of the learning service, already warmed and
        written to `new.path`): requests already holding the old model finish on it; the file watcher
        takes the file as it is now as seen."""
        with self._reload_lock:
            old = self.models[new.name]
            new.stamp = file_stamp(new.path)
            self._attempted[new.name] = new.stamp
            self.models = {**self.models, new.name: new}
            self._swapped_out(old)
            self.reloads.append(Reload(new.name, "swapped", old.sha256, new.sha256, "refitted with posted data"))
        log.info("model %r swapped: sha256 %s -> %s (refitted with posted data)", new.name, old.sha256[:12],
                 new.sha256[:12])

    def _swapped_out(self, old: ServedModel) -> None:
        if self.on_swap is not None:
            self.on_swap(old)

    @classmethod
    def load(cls, specs: list[str]) -> "ModelRegistry":
        """Load the models named on the command line (none: the shipped default)."""
        pairs = [resolve(s) for s in specs] if specs else [default_model()]
        return cls([ServedModel(name, load_model(str(path)), str(path)) for name, path in pairs])

    def get(self, name: str) -> ServedModel | None:
        return self.models.get(name)

    def warm(self, threads: int | None = 1) -> None:
        for m in self.models.values():
            m.warm(threads)
