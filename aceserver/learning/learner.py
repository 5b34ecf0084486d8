"""The learning service of one served model: posted batches go to the data log (durable before the
reply), a background thread folds them into the model's fit state and re-solves, one refit at a
time; batches posted during a refit wait and go into the next one together. A refit writes the
new model file and its state beside it (each atomically: a temporary file, fsync, rename) and
hands the new model to the server (`publish(model, sha256 of the model it replaces)`), which warms
it and swaps it in, unless the served model is no longer the one the state belongs to (its file
was replaced by hand and hot-swapped by `--watch`: that refit fails, saying so); a copy of every
model served is kept as `models/<name>.<sha256>.json` in the log's directory (the last 20), so the
sha256 that every calculate reply names leads to the parameters that computed it. A refit that fails
leaves the served model and both files as they were; the failure is in `status()` and the next
post tries again from the state the served model was fitted on.

A batch the fitter refuses as input (an `ACEInputError` of `update_batches`, e.g. an isolated atom
whose energy contradicts the fit's E0 rule) would make every later refit fail; so a refit whose
batches are refused together is redone batch by batch, the refused ones marked in the log
(`DataLog.mark_refused`, with the reason: kept, never pending again, listed in `status()`) and
the others fitted.

The refit thread sets no BLAS limit: OpenBLAS keeps one thread count per process, and a limit
entered around a refit would race with the calculate threads' (`serving.process`); the refit runs
with the count the server set at start (`aceserver serve --blas-threads`, 1 by default). `threads`
(the server's --kernel-threads) is the fitter's own thread count.

The fit state is `fitting.incremental`'s (`fitter` is that module or an object with the same four
functions: `state_path`, `load_state`, `save_state`, `update_batches`); a refit adds every pending
batch in one `update_batches` call (one solve), the batch of data version v under the name
`posted-v<v>` (`datalog.batch_name`) with the log's sha256. The data version a model was fitted on
(`fitted_version`) is the largest posted version its state holds, or the state's own count of
batches (its training files) before any post. Units of the data: `datalog`.

A refit writes the copy of the new model first, then the state, then the model file: a crash
between the two renames leaves the new state beside the old model file, and `recover` (run before
the model is loaded) puts the new model back from its copy, so the pair always agrees.

Active sets (γ). A refit changes the model's sha256, so the active-set sidecar `<stem>.activeset.npz`
of the model it replaces no longer attaches. Before the swap, the old sidecar (if it belongs to the
served model) is extended with the refit's posted structures (`fitting.active_set_extend`: MaxVol
from the old set, the descriptor rows of an ace1 model not depending on its parameters) and keyed
to the new sha256; it is written beside the kept copy (`models/<name>.<sha256>.activeset.npz`),
attached to the new model from that file (A recomputed and inverted, its log |det A| checked), and
after the state it is written beside the model file, before the model file itself; `recover`
puts the kept sidecar back where a crash left another model's. A model served without an active set
stays without one. An extension that fails does not stop the refit: the new model is swapped in
without an active set, `model.active_set_problem` (quoted by γ's 422 `no_active_set`) and
`status()["active_set"]` say why, and the log has the traceback.
"""
from __future__ import annotations

import datetime
import hashlib
import json
import logging
import os
import threading
import time
from collections import deque
from pathlib import Path
from typing import Any, Callable

from aceserver.active_sets import attach_active_set_file
from aceserver.errors import ACEInputError
from aceserver.fitting.active_set_extend import extend_active_set
from aceserver.io import activeset_file
from aceserver.io.durable import leftovers, replace_durably

from .datalog import POSTED, DataLog, batch_name

log = logging.getLogger("aceserver.learning")
HISTORY = 20                      # served models kept in `status()["served"]`


class LearningError(ValueError):
    """A model cannot learn: no state beside it, or a state that does not belong to it or to the log."""


class PendingFull(RuntimeError):
    """Too many atoms wait for a refit (`max_pending_atoms`); retry once the refit has run."""


def fitted_version(state: Any) -> int:
    """The data version a state's model was fitted on (see the module docstring)."""
    posted = [int(d["name"][len(POSTED):]) for d in state.data
              if str(d.get("name", "")).startswith(POSTED) and d["name"][len(POSTED):].isdigit()]
    return max([state.data_version, *posted])


def _now() -> str:
    return datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds")


def kept_copy(log_: DataLog, name: str, sha256: str) -> Path:
    """Where the copy of model `name` with this sha256 is kept (`ModelLearner._archive`)."""
    return log_.directory / "models" / f"{name}.{sha256}.json"


def _sidecar_sha256(path: Path) -> str | None:
    """The model sha256 an active-set sidecar names; None if there is no usable file."""
    try:
        return activeset_file.read(path).model_sha256 if path.is_file() else None
    except (ValueError, OSError):
        return None


def _copy_durably(src: Path, dest: Path) -> None:
    replace_durably(lambda p: p.write_bytes(src.read_bytes()), dest, dest.suffix)


def recover(name: str, model_path: str | os.PathLike, log_: DataLog, fitter: Any, model_sha256: str) -> bool:
    """Before a learning model is served: remove the temporary files of a refit that was cut short;
    if the fit state belongs to another model than the file (`model_sha256`) and the copy of that
    model is kept (a refit was cut between its two renames), put the copy in place of the file
    (atomically). Then, where the active-set sidecar beside the model file belongs to another model
    (or is missing after a restored model) and the kept copy of the served model's sidecar exists,
    put that in its place. Whether it changed either file (the model is then loaded again).
    Anything else is left for `ModelLearner` to judge."""
    path = Path(model_path)
    state_file = Path(fitter.state_path(path))
    sidecar = activeset_file.sidecar_path(path)
    for dest in (path, state_file, sidecar):    # temporary files of a refit that was cut short (`replace_durably`)
        for tmp in leftovers(dest):
            tmp.unlink(missing_ok=True)
    restored = False
    if state_file.is_file():
        try:
            state = fitter.load_state(state_file)
        except (ValueError, OSError):
            state = None
        copy = None if state is None else kept_copy(log_, name, state.model_sha256)
        if copy is not None and state.model_sha256 != model_sha256 and copy.is_file():
            log.warning("model %r: the fit state belongs to the kept model %s, not to the file (a refit was cut "
                        "short); restoring that model", name, state.model_sha256[:12])
            _copy_durably(copy, path)
            model_sha256, restored = state.model_sha256, True
    kept = activeset_file.sidecar_path(kept_copy(log_, name, model_sha256))
    beside = _sidecar_sha256(sidecar)
    if kept.is_file() and beside != model_sha256 and (beside is not None or restored):
        log.warning("model %r: restoring the active set of model %s beside the model file", name, model_sha256[:12])
        _copy_durably(kept, sidecar)
        return True
    return restored


class ModelLearner:
    """One model's learning: its fit state, its data log entries and its refit thread."""

    def __init__(self, name: str, model: Any, model_path: str | os.PathLike, log_: DataLog, fitter: Any,
                 publish: Callable[[Any, str], Callable[[], None]], threads: int | None = 1,
                 max_pending_atoms: int = 1_000_000, on_refit: Callable[[str], None] | None = None):
        self.name, self.model, self.path = name, model, Path(model_path)
        self.on_refit = on_refit or (lambda result: None)     # "swapped", "failed", "refused" (metrics)
        self.log, self.fitter, self.publish, self.threads = log_, fitter, publish, threads
        self.max_pending_atoms = max_pending_atoms
        self.state_file = Path(fitter.state_path(self.path))
        if not self.state_file.is_file():
            raise LearningError(f"model {name!r} has no fit state ({self.state_file.name} beside the model file); "
                                "fit it with `aceserver fit CONFIG.yaml --save-state`")
        try:
            self.state = fitter.load_state(self.state_file, model_sha256=model.sha256)
        except (ValueError, OSError) as ex:
            raise LearningError(f"model {name!r}: its fit state cannot be used: {ex}") from None
        self.fitted = fitted_version(self.state)
        self._check_log()
        self._cond = threading.Condition()
        self._wanted = self._stop = False
        self._pending_atoms = sum(b["atoms"] for b in self._pending())
        self.refit: dict[str, Any] = {"state": "idle", "versions": [], "error": None, "started": None,
                                      "finished": None, "seconds": None}
        self.sidecar = activeset_file.sidecar_path(self.path)
        self.active_set: dict[str, Any] = {
            "available": getattr(model, "active_set", None) is not None, "seconds": None, "added": None,
            "reason": None if getattr(model, "active_set", None) is not None else (
                getattr(model, "active_set_problem", None) or "the model was served without an active set (no "
                f"{self.sidecar.name} beside it); refitted models are served without one too")}
        self.served: deque[dict] = deque([{"sha256": model.sha256, "data_version": self.fitted,
                                           "since": _now()}], maxlen=HISTORY)
        self._thread = threading.Thread(target=self._run, name=f"ace-learn-{name}", daemon=True)

    def _check_log(self) -> None:
        """The log's batches up to the fitted version must be the ones the state holds (by name and
        sha256; refused ones absent): a state from another lineage (a fresh fit saved over the model)
        would mix two data sets."""
        held = {d.get("name"): d.get("sha256") for d in self.state.data}
        files = [[d.get("name"), d.get("sha256")] for d in self.state.data if not str(d.get("name")).startswith(POSTED)]
        base = hashlib.sha256(json.dumps(files).encode()).hexdigest()
        if self.log.lineage(self.name, base) != base:
            raise LearningError(f"model {self.name!r}: the data log extends another fit (other training files) than "
                                "the model's fit state: use another --learn-dir for this fit")
        for b in self.log.batches(self.name):
            if b["version"] > self.fitted:
                break
            expected = None if b["refused"] else b["sha256"]
            if held.get(b["name"]) != expected:
                raise LearningError(
                    f"model {self.name!r}: the data log's version {b['version']} ({b['name']}"
                    f"{', refused' if b['refused'] else ''}) does not match the model's fit state: the state and "
                    "the log belong to different fits; use another --learn-dir or refit from the logged data")

    def _pending(self) -> list[dict]:
        return [b for b in self.log.batches(self.name, self.fitted) if not b["refused"]]

    def _archive(self, model: Any) -> None:
        """Keep the file of every model served (the last HISTORY), named by its sha256, in the log's
        `models/` folder: the sha256 a calculate reply names finds the parameters that computed it."""
        dest = kept_copy(self.log, self.name, model.sha256)
        folder = dest.parent
        folder.mkdir(exist_ok=True)
        if not dest.exists():
            replace_durably(lambda p: model.save(str(p)), dest, ".json")
        kept = sorted(folder.glob(f"{self.name}.*.json"), key=lambda p: p.stat().st_mtime_ns)
        for old in kept[:-HISTORY]:
            old.unlink(missing_ok=True)
            activeset_file.sidecar_path(old).unlink(missing_ok=True)

    # -- the request side ---------------------------------------------------------------------
    def start(self) -> None:
        try:
            self._archive(self.model)
            kept = activeset_file.sidecar_path(kept_copy(self.log, self.name, self.model.sha256))
            if not kept.exists() and _sidecar_sha256(self.sidecar) == self.model.sha256:
                _copy_durably(self.sidecar, kept)       # `recover` can put it back beside the model file
        except OSError:               # the copy is for tracing replies; learning works without it
            log.exception("model %r: cannot keep a copy of the served model in the learning directory", self.name)
        self._thread.start()
        if self._pending():                                                   # left by a previous server
            self.wake()

    def stop(self, wait: float | None = None) -> None:
        """Stop the refit thread; a refit in progress is dropped before it writes anything (the log keeps
        its data for the next start). `wait`: seconds to wait for the thread to end."""
        with self._cond:
            self._stop = True
            self._cond.notify_all()
        if wait is not None and self._thread.is_alive():
            self._thread.join(wait)

    def wake(self) -> None:
        with self._cond:
            self._wanted = True
            self._cond.notify_all()

    def post(self, configs: list) -> dict:
        """Append a validated batch to the log (durable on return) and ask for a refit; the batch's
        entry (version, name, sha256, configs, atoms, added) and the status after it."""
        atoms = sum(c.natoms for c in configs)
        with self._cond:          # one post at a time per model: the pending count stays exact
            if self._pending_atoms + atoms > self.max_pending_atoms:
                raise PendingFull(f"{self._pending_atoms} atoms already wait for a refit of model {self.name!r}; "
                                  f"{atoms} more would pass the limit of {self.max_pending_atoms} "
                                  "(--learn-max-pending-atoms); retry once the refit has run")
            entry = self.log.append(self.name, configs, after=self.fitted)
            self._pending_atoms += atoms
            self._wanted = True
            self._cond.notify_all()
        return entry

    def status(self) -> dict:
        """What the served model was fitted on, what waits, the last refit and the served models."""
        fitted = self.fitted                 # reads of the log's index: the pending and the latest refused only
        pending = [b["version"] for b in self.log.batches(self.name, fitted) if not b["refused"]]
        with self._cond:
            refit = dict(self.refit, versions=list(self.refit["versions"]))
            active_set = dict(self.active_set)
            served = list(reversed(self.served))
        return {"learnable": True, "sha256": served[0]["sha256"], "data_version": fitted,
                "latest_version": max(fitted, self.log.last_version(self.name)), "pending": pending,
                "refused": self.log.refused(self.name, HISTORY), "refit": refit, "active_set": active_set,
                "served": served}

    # -- the refit thread ---------------------------------------------------------------------
    def _run(self) -> None:
        while True:
            with self._cond:
                while not (self._stop or self._wanted):
                    self._cond.wait()
                if self._stop:
                    return
                self._wanted = False
            try:
                self._refit()
            except Exception:            # _refit reports its own failures; never let the thread die
                log.exception("learning thread of model %r", self.name)

    def _update(self, batches: list[dict], model: Any, state: Any) -> tuple[Any, Any, list[dict]]:
        """The state with the batches added in order (one data version each, one solve), and its model;
        if the fitter refuses them as input, batch by batch, skipping (and returning) the refused ones."""
        def add(bs, model, state):
            named = [(batch_name(b["version"]), b["sha256"], self.log.read(self.name, b["version"])) for b in bs]
            return self.fitter.update_batches(model, state, named, threads=self.threads, progress=False)[::2]
        try:
            return (*add(batches, model, state), [])
        except ACEInputError as ex:
            if len(batches) == 1:
                return model, state, [dict(batches[0], refused=f"{type(ex).__name__}: {ex}")]
        refused = []
        for b in batches:
            try:
                model, state = add([b], model, state)
            except ACEInputError as ex:
                refused.append(dict(b, refused=f"{type(ex).__name__}: {ex}"))
        return model, state, refused

    def _carry_active_set(self, model: Any, batches: list[dict]) -> dict[str, Any]:
        """Give the refitted `model` the served model's active set extended by the batches' structures
        (module docstring): its sidecar written beside the model's kept copy and attached from there.
        The status entry for `model`; a failure leaves `model` without an active set, saying why."""
        if _sidecar_sha256(self.sidecar) != self.model.sha256:
            reason = self.active_set["reason"] if not self.active_set["available"] else (
                f"{self.sidecar.name} beside the model file no longer belongs to the served model")
            model.active_set, model.active_set_problem = None, reason
            return {"available": False, "reason": reason, "seconds": None, "added": None}
        t0 = time.perf_counter()
        try:
            def structures():
                for b in batches:
                    yield from self.log.read(self.name, b["version"])
            build = extend_active_set(model, activeset_file.read(self.sidecar), structures, previous=self.model,
                                      data_files=[batch_name(b["version"]) for b in batches],
                                      data_sha256=[b["sha256"] for b in batches])
            kept = activeset_file.sidecar_path(kept_copy(self.log, self.name, model.sha256))
            kept.parent.mkdir(exist_ok=True)
            replace_durably(build.save, kept, ".npz")
            attach_active_set_file(model, kept)     # A recomputed from the file, inverted, log |det A| checked
        except Exception as ex:
            log.exception("model %r: the active set could not be carried over to the refitted model %s; it is served "
                          "without one (no γ) until `aceserver activeset` builds one", self.name, model.sha256[:12])
            reason = f"the active set was not carried over by the learning refit: {type(ex).__name__}: {ex}"
            model.active_set, model.active_set_problem = None, reason
            return {"available": False, "reason": reason, "seconds": round(time.perf_counter() - t0, 3), "added": None}
        added = {el: int(e.added) for el, e in build.elements.items()}
        log.info("model %r: active set extended in %.3f s (rows from the posted data: %s)", self.name,
                 time.perf_counter() - t0, added)
        return {"available": True, "reason": None, "seconds": round(time.perf_counter() - t0, 3), "added": added}

    def _refit(self) -> None:
        batches = self._pending()
        if not batches:
            return
        versions = [b["version"] for b in batches]
        t0 = time.perf_counter()
        with self._cond:
            self.refit = {"state": "running", "versions": versions, "error": None, "started": _now(),
                          "finished": None, "seconds": None}
        log.info("model %r: refitting with data versions %s", self.name, versions)
        try:
            model, state, refused = self._update(batches, self.model, self.state)
            for b in refused:         # durable before the state that skips them is written
                log.error("model %r: data version %d refused by the fitter: %s", self.name, b["version"], b["refused"])
                self.on_refit("refused")          # counted before the status shows it
                self.log.mark_refused(self.name, b["version"], b["refused"])
                with self._cond:
                    self._pending_atoms -= b["atoms"]
            if len(refused) == len(batches):
                with self._cond:
                    self.refit.update(state="idle", finished=_now(), seconds=round(time.perf_counter() - t0, 3))
                return
            done = {b["version"] for b in refused}
            active_set = self._carry_active_set(model, [b for b in batches if b["version"] not in done])
            swap = self.publish(model, self.model.sha256)     # warmed beside the served model; swapped in below
            if self._stop:
                log.info("model %r: the server stops; refit with data versions %s dropped", self.name, versions)
                with self._cond:
                    self.refit.update(state="idle", finished=_now())
                return
            self._archive(model)      # first: every model that answers has its copy, and `recover` needs it
            replace_durably(lambda p: self.fitter.save_state(state, p), self.state_file, ".npz")
            if active_set["available"]:   # before the model file: `recover` restores both from their copies
                _copy_durably(activeset_file.sidecar_path(kept_copy(self.log, self.name, model.sha256)), self.sidecar)
            replace_durably(lambda p: model.save(str(p)), self.path, self.path.suffix)
            swap()                    # nothing after this can fail: the served model and the files agree
        except Exception as ex:
            log.exception("model %r: refit with data versions %s failed; the served model stays", self.name, versions)
            self.on_refit("failed")
            with self._cond:
                self.refit.update(state="failed", error=f"{type(ex).__name__}: {ex}", finished=_now(),
                                  seconds=round(time.perf_counter() - t0, 3))
            return
        self.on_refit("swapped")
        with self._cond:
            self.model, self.state, self.fitted = model, state, fitted_version(state)
            self.active_set = active_set
            self._pending_atoms -= sum(b["atoms"] for b in batches if b["version"] not in done)
            self.served.append({"sha256": model.sha256, "data_version": self.fitted, "since": _now()})
            self.refit.update(state="idle", finished=_now(), seconds=round(time.perf_counter() - t0, 3))
        log.info("model %r: now serving sha256 %s, fitted on data version %d", self.name, model.sha256[:12],
                 self.fitted)
