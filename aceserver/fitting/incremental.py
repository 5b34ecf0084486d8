"""Incremental refit: keep a fit's reduced least-squares state, add configurations, re-solve.

A fit reduces its weighted, prior-scaled system to per-(config_type, kind) triangular factors
(:mod:`.streaming`). Those factors are all a re-solve needs, so they are kept (:class:`FitState`,
the file `<model stem>.fitstate.npz`, :mod:`aceserver.io.fitstate_file`), and new configurations
cost only their own rows: their basis evaluation, their QR into their groups' factors, and one
solve of the combined m × m system — never a re-assembly of the old data.

    model, report, state = fit_with_state(cfg, output=...)        # `aceserver fit --save-state`
    new_model, report, new_state = update(model, state, configs)  # `aceserver fit --update`
    save_state(state, state_path(model_path));  state = load_state(path, model_sha256=model.sha256)

**What an update equals.** ``update(model, state, new)`` gives, to rounding (the perturbation
bounds of a backward-stable least-squares solve, κ·ε), the parameters and committee of
``acefit`` on ``old_train + new_train`` (validation ``old_val + new_val``) with the same weights,
prior, solver, seed and E0 rule:

* *E0*: the factors keep their targets under the E0 they were built with (``fit["E0"]``) and the
  element counts as extra target columns, so a changed E0 is a change of target combination
  (:func:`streaming.e0_alpha`), not a re-assembly. E0 is re-resolved on the union as the fit's
  rule says: an explicit E0 stays; ``isolated_atom`` (or a missing element) takes new isolated
  atoms into account exactly as a fit of the union would (the old data's isolated-atom energies
  are kept in ``fit["isolated_atoms"]``).
* *Validation*: when the fit held out ``validation_fraction`` of its data, each new configuration
  goes to validation when a hash of its content and the fit's seed, read as a number in [0, 1),
  falls below the fraction (:func:`split_new`): deterministic, independent of batch boundaries and
  order, and isolated atoms always train. A fit with validation *files* puts new data in training.
  The old data keep the split they had, so the reference "fit from scratch" of an update is
  ``acefit(train_old + train_new, validation=val_old + val_new)`` with ``split_new``'s split —
  not a new random split of the union. Validation factors are kept only for the solvers that
  choose on the validation set (tsvd, asp).
* *Committee*: the same seed and size as the fit, so the K standard-normal draws are the same and
  only the posterior they are mapped through changes; the update's committee equals that of a
  fit of the union with that seed.

Units: energies eV, forces eV/Å, virials eV (W = −V·σ); the factors' rows are weight-free (E and V
rows divided by √N_atoms; the weights are applied when the groups are combined).
"""
from __future__ import annotations

import dataclasses
import datetime as _dt
import hashlib
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from ase.data import chemical_symbols

from aceserver.errors import ModelFileError
from aceserver.io import fitstate_file
from aceserver.io.durable import replace_durably
from aceserver.io.fitstate_file import state_path

from . import config as fconfig
from . import error_tables, priors, streaming
from .data import Config, FitDataError, Keys, normalise_weights, read_configs, resolve_E0
from .fit_model import VALIDATED, jsonable
from .workflow import load_data, run_fit, sha256_file

HASH_SCALE = float(2 ** 64)


class FitStateError(ModelFileError):
    """A fit-state file that cannot be used: damaged, of a newer format, or of another model."""


@dataclass
class FitState:
    """The reduced least-squares state of one fit (see the module doc)."""

    factors: streaming.GroupFactors               # training rows, per (config_type, kind)
    fit: dict                                     # the fit's spec: weights, prior, solver, seed, E0, ...
    data: list = field(default_factory=list)      # one dict per data batch (version, name, sha256, ...)
    model_sha256: str = ""                        # the model file this state belongs to
    validation: streaming.GroupFactors | None = None   # validation rows (tsvd/asp fits only)

    @property
    def data_version(self) -> int:
        return len(self.data)

    @property
    def elements(self) -> list[str]:
        return list(self.fit["elements"])

    def copy(self) -> "FitState":
        return FitState(self.factors.copy(), _deep(self.fit), _deep(self.data), self.model_sha256,
                        None if self.validation is None else self.validation.copy())


def _deep(x):
    import copy
    return copy.deepcopy(x)


def _now() -> str:
    return _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds")


# ---------------------------------------------------------------------------------------------
# configurations: content hash, validation split, checks


def config_digest(c: Config) -> bytes:
    """sha256 of a configuration's content (species, positions Å, cell Å, pbc, energy eV, forces
    eV/Å, virial eV, config_type); the file it came from does not enter."""
    h = hashlib.sha256()
    for a in (np.asarray(c.numbers, np.int64), np.asarray(c.positions, np.float64),
              np.asarray(c.cell, np.float64), np.asarray(c.pbc, np.bool_)):
        h.update(np.ascontiguousarray(a).tobytes())
    for name, v in (("E", c.energy), ("F", c.forces), ("V", c.virial)):
        h.update(name.encode())
        if v is not None:
            h.update(np.ascontiguousarray(np.asarray(v, np.float64)).tobytes())
    h.update(str(c.config_type).encode())
    return h.digest()


def configs_sha256(configs: list[Config]) -> str:
    """sha256 of a batch of configurations (their :func:`config_digest` in order)."""
    h = hashlib.sha256()
    for c in configs:
        h.update(config_digest(c))
    return h.hexdigest()


def split_new(configs: list[Config], fit: dict) -> tuple[list[Config], list[Config]]:
    """(train, validation) of new configurations under the fit's validation rule (module doc)."""
    val = fit.get("validation") or {}
    frac = float(val.get("fraction", 0.0))
    if val.get("files") or frac <= 0.0:
        return list(configs), []
    seed = str(int(fit.get("seed", 0))).encode()
    train, valid = [], []
    for c in configs:
        u = int.from_bytes(hashlib.sha256(seed + b"|" + config_digest(c)).digest()[:8], "big") / HASH_SCALE
        (valid if c.natoms > 1 and u < frac else train).append(c)
    return train, valid


def check_configs(configs: list[Config], elements: list[str]) -> None:
    """Refuse configurations a fit cannot use (FitDataError naming the file and frame): unknown
    elements, no observation, wrong shapes, NaN or inf."""
    known = set(elements)
    for i, c in enumerate(configs):
        if not isinstance(c, Config):
            raise FitDataError(f"configuration {i} is a {type(c).__name__}, not a fitting.data.Config")
        file, frame = c.source or "<memory>", c.frame if c.frame >= 0 else i
        n = len(c.numbers)
        if n == 0:
            raise FitDataError("configuration has no atoms", file, frame, "numbers")
        for z in np.unique(np.asarray(c.numbers)):
            sym = chemical_symbols[z] if 0 < z < len(chemical_symbols) else str(z)
            if sym not in known:
                raise FitDataError(f"element {sym} is not in the model's elements {elements}", file, frame,
                                   "numbers")
        for name, v, shape in (("positions", c.positions, (n, 3)), ("cell", c.cell, (3, 3)),
                               ("forces", c.forces, (n, 3)), ("virial", c.virial, (3, 3))):
            if v is None:
                continue
            a = np.asarray(v, dtype=float)
            if a.shape != shape:
                raise FitDataError(f"{name} must have shape {shape}, got {a.shape}", file, frame, name)
            if not np.isfinite(a).all():
                raise FitDataError("contains NaN or inf", file, frame, name)
        if c.energy is not None and not np.isfinite(c.energy):
            raise FitDataError("contains NaN or inf", file, frame, "energy")
        if c.energy is None and c.forces is None and c.virial is None:
            raise FitDataError("no energy, forces or virial: nothing to fit", file, frame, "energy")


def _isolated(configs: list[Config]) -> list[dict]:
    """The isolated-atom candidates of :func:`data.isolated_atom_energies` (one-atom configurations
    with an energy), kept so that an update resolves E0 as a fit of the union would."""
    return [{"Z": int(c.numbers[0]), "energy": float(c.energy), "config_type": c.config_type,
             "source": Path(c.source).name, "frame": int(c.frame)}
            for c in configs if c.natoms == 1 and c.energy is not None]


def _as_configs(cands: list[dict]) -> list[Config]:
    """One-atom configurations of the candidates, for :func:`data.resolve_E0`."""
    return [Config(numbers=np.array([d["Z"]]), positions=np.zeros((1, 3)), cell=np.zeros((3, 3)),
                   pbc=np.zeros(3, bool), energy=d["energy"], config_type=d["config_type"],
                   source=d["source"], frame=d["frame"]) for d in cands]


# ---------------------------------------------------------------------------------------------
# fitting with a state, updating it


def fit_with_state(cfg, output=None, threads=None, plots=True, progress=None, out=None,
                   memory_budget=None, client=None, on_task=None, save=True):
    """``aceserver fit --save-state``: :func:`workflow.run_fit` on the streaming (or Dask) path,
    keeping the factors; returns (model, report, state). The model file's provenance records the
    data versions; with a model file (and ``save``) the state is written beside it
    (:func:`state_path`) and the report names it."""
    train, validation, E0 = load_data(cfg)
    model = fconfig.build_model(cfg.model, E0)
    model.E0 = dict(E0)
    now = _now()
    data = []
    for p in list(cfg.train) + list(cfg.validation):
        n = sum(1 for c in train + validation if c.source == str(p))
        data.append({"version": len(data) + 1, "name": Path(p).name, "sha256": sha256_file(p), "configs": n,
                     "added": now})
    kept: list = []
    model, report = run_fit(cfg, output=output, threads=threads, plots=plots, progress=progress, out=out,
                            prepared=(model, train, validation, None, None), memory_budget=memory_budget,
                            client=client, on_task=on_task, keep_factors=kept,
                            provenance_extra={"data_versions": data})
    spec = model.metadata["fit"]
    fit = {
        "elements": list(model.elements), "n_basis": int(model.length_basis),
        "n_targets": 1 + len(model.elements), "model": jsonable(cfg.model),
        "weights": normalise_weights(cfg.weights), "prior": spec["prior"], "solver": spec["solver"],
        "seed": int(cfg.seed), "E0": dict(model.E0), "E0_rule": jsonable(cfg.E0),
        "isolated_atoms": _isolated(train),
        "validation": {"fraction": float(cfg.validation_fraction), "files": bool(cfg.validation),
                       "rule": "sha256(seed|content) < fraction"},
        "keys": dataclasses.asdict(cfg.keys),
        "n_train_configs": len(train), "n_validation_configs": len(validation),
    }
    state = FitState(factors=kept[0], fit=fit, data=data, model_sha256=model.sha256,
                     validation=kept[1] if len(kept) > 1 else None)
    output = Path(output) if output else cfg.output_model
    if save and output is not None:
        path = state_path(output)
        save_state(state, path)
        report["state"] = path.name
        print(f"fit state written to {path} (data version {state.data_version})",
              file=out if out is not None else sys.stdout)
    elif save:
        print("warning: no model file (output.model or --output), so no fit state is written",
              file=out if out is not None else sys.stdout)
    return model, report, state


def solve_state(model, state: FitState, E0: dict | None = None):
    """Solve the state's system with its fit spec for a model of its basis; returns
    (solver Solution, γ). ``E0`` (eV): the E0 of the targets (default the model's)."""
    fit = state.fit
    E0 = dict(model.E0 if E0 is None else E0)
    gamma = priors.make_prior(model.basis_labels, fit["prior"])
    alpha = streaming.e0_alpha(fit["elements"], fit["E0"], E0)
    weights = fit["weights"]

    def reduced(gf):
        return gf.combine(gf.labels, streaming.group_scales(gf.labels, weights), col_scale=gamma, alpha=alpha)

    spec = dict(fit["solver"])
    val = None
    if state.validation is not None and str(spec.get("name", "")).lower() in VALIDATED:
        val = reduced(state.validation)
    return reduced(state.factors).solve(spec, validation=val, seed=int(fit["seed"])), gamma


def factor_rms(gf: streaming.GroupFactors, theta: np.ndarray, alpha: np.ndarray) -> dict:
    """RMS of the weight-free residual per (config_type, kind) group, from the factors alone:
    ‖R θ − QᵀY α‖² + αᵀ S α over the group's rows. F: the force-component RMSE (eV/Å); E and V:
    of (E − Ê)/√N and (W − Ŵ)/√N (eV/√atom)."""
    out = {}
    for g in gf.labels:
        R, QtY, S, rows = gf.factor(g)
        r = R @ theta - QtY @ alpha
        out.setdefault(g[0], {})[g[1]] = float(np.sqrt(max(r @ r + alpha @ S @ alpha, 0.0) / max(rows, 1)))
    return out


def update(model, state: FitState, configs: list[Config], name: str = "posted", threads=None,
           progress=None, sha256: str | None = None, compute_errors: bool = True):
    """Add configurations to a fit and re-solve; returns (new_model, report, new_state).

    ``model`` must be the model the state belongs to (its sha256 is checked). ``configs``
    (:class:`data.Config`, as from `read_configs`/`config_from_atoms`) are checked (FitDataError
    naming the frame), split by :func:`split_new`, reduced (their rows only) and merged into copies
    of the state's factors; the spec kept in the state is solved again. ``name``: the batch's name
    in the data versions (a file name, never a path); ``sha256``: its file's sha256 (default: the
    sha256 of the configurations' content, :func:`configs_sha256`). Neither ``model`` nor
    ``state`` is modified. Report timings: new_rows_s (basis evaluation and QR of the new rows),
    merge_s (their factors folded into the old), solve_s (combination and solve), errors_s.
    """
    return update_batches(model, state, [(name, sha256, configs)], threads, progress, compute_errors)


def update_batches(model, state: FitState, batches, threads=None, progress=None, compute_errors=True):
    """:func:`update` with several batches ``[(name, sha256 or None, configs)]`` at once: one data
    version each, one solve for all."""
    t_start = time.perf_counter()
    if model.sha256 != state.model_sha256:
        raise FitStateError(f"the fit state belongs to the model with sha256 {state.model_sha256[:12]}..., "
                            f"not to this one ({model.sha256[:12]}...)")
    fit = state.fit
    if list(model.elements) != fit["elements"] or model.length_basis != fit["n_basis"]:
        raise FitStateError("the fit state was made for another basis")
    configs, added = [], []
    for name, sha, cs in batches:
        cs = list(cs)
        if not cs:
            raise FitDataError(f"batch {name!r} holds no configurations")
        check_configs(cs, fit["elements"])
        tr, va = split_new(cs, fit)
        added.append({"name": Path(str(name)).name or "posted", "sha256": sha or configs_sha256(cs),
                      "configs": len(cs), "train": len(tr), "validation": len(va)})
        configs += cs
    if not configs:
        raise FitDataError("no configurations to add")
    train, val = split_new(configs, fit)
    timings = {}

    # E0 under the fit's rule, on the old isolated atoms followed by the new
    isolated = fit["isolated_atoms"] + _isolated(train)
    E0 = resolve_E0(fit["E0_rule"], fit["elements"], _as_configs(isolated))

    t0 = time.perf_counter()
    new = {}
    for key, cs in (("train", train), ("validation", val)):
        if cs and (key == "train" or state.validation is not None):
            # leaves of about one basis size of rows: a batch of a few configurations still spreads
            # over the threads (the leaves depend on the data only, so the numbers not on threads)
            new[key] = streaming.reduce_configs(model, cs, threads=threads, progress=progress, E0=fit["E0"],
                                                leaf_rows=max(model.length_basis, 256))
    timings["new_rows_s"] = time.perf_counter() - t0

    t0 = time.perf_counter()
    ns = FitState(state.factors.copy(), _deep(fit), _deep(state.data), "",
                  None if state.validation is None else state.validation.copy())
    if "train" in new:
        ns.factors.merge(new["train"]).flush()
    if "validation" in new:
        ns.validation.merge(new["validation"]).flush()
    timings["merge_s"] = time.perf_counter() - t0

    t0 = time.perf_counter()
    sol, gamma = solve_state(model, ns, E0)
    timings["solve_s"] = time.perf_counter() - t0

    new_model = type(model)(model.basis, parameters=sol.coef / gamma, E0=E0,
                            committee=None if sol.committee is None else sol.committee / gamma[None, :],
                            metadata=_deep(model.metadata))
    ns.fit["E0"] = fit["E0"]                    # the factors' targets stay under the E0 they were built with
    ns.fit["isolated_atoms"] = isolated
    ns.fit["n_train_configs"] = fit["n_train_configs"] + len(train)
    ns.fit["n_validation_configs"] = fit["n_validation_configs"] + len(val)
    now = _now()
    for a in added:
        ns.data.append(dict({"version": len(ns.data) + 1}, **a, added=now))

    errors = {}
    if compute_errors:
        t0 = time.perf_counter()
        errors["added_before"] = error_tables.public(error_tables.compute_errors(model, configs, threads))
        errors["added_after"] = error_tables.public(error_tables.compute_errors(new_model, configs, threads))
        alpha = streaming.e0_alpha(fit["elements"], fit["E0"], E0)
        errors["train_factor_rms"] = factor_rms(ns.factors, new_model.parameters, alpha)
        timings["errors_s"] = time.perf_counter() - t0
    timings["total_s"] = time.perf_counter() - t_start

    meta = new_model.metadata
    fm = meta.setdefault("fit", {})
    fm.update({"solver_info": dict(sol.info), "E0": dict(E0), "n_train_configs": ns.fit["n_train_configs"],
               "n_validation_configs": ns.fit["n_validation_configs"],
               "n_observations": int(ns.factors.total_rows), "errors": {}, "timings_s": timings,
               "assembly": {"path": "incremental"}, "date": _now(),
               "update": {"data_version": ns.data_version, "added": ns.data[-len(added):], "errors": errors,
                          "units": {"E": "eV/atom", "F": "eV/Å", "V": "eV/atom",
                                    "train_factor_rms": "F eV/Å; E, V eV/√atom"}}})
    fm.setdefault("provenance", {})["data_versions"] = ns.data
    new_model.metadata = jsonable(meta)
    ns.model_sha256 = new_model.sha256
    report = jsonable({"data_version": ns.data_version, "added": ns.data[-len(added):], "sha256": ns.model_sha256,
                       "n_observations": int(ns.factors.total_rows), "length_basis": model.length_basis,
                       "solver": dict(sol.info), "E0": E0, "errors": errors, "timings_s": timings})
    return new_model, report, ns


def model_path_of(state_file) -> Path:
    """The model file a state file is conventionally beside: `<stem>.fitstate.npz` -> `<stem>.json`."""
    p = Path(state_file)
    name = p.name[:-len(fitstate_file.SUFFIX)] if p.name.endswith(fitstate_file.SUFFIX) else p.stem
    return p.with_name(name + ".json")


def update_files(state_file, data_files, model_file=None, output=None, threads=None, progress=None,
                 out=None):
    """``aceserver fit --update STATE NEW.xyz ...``: read the model (default :func:`model_path_of`)
    and its state, add the configurations of the extended-XYZ files (read with the fit's keys; one
    data version per file, recorded by file name and sha256), re-solve, and write the new model to
    ``output`` (default: over the model, atomically) and its state beside it. Returns the report."""
    out = sys.stdout if out is None else out
    state_file = Path(state_file)
    model_file = Path(model_file) if model_file else model_path_of(state_file)
    if not model_file.is_file():
        raise FitStateError(f"no model file {model_file.name} beside the state {state_file.name}; "
                            "name it with --model")
    model = fconfig.load_model_file(model_file)
    state = load_state(state_file, model_sha256=model.sha256)
    keys = keys_of(state)
    batches = [(Path(p).name, sha256_file(p), read_configs(p, keys, elements=state.elements))
               for p in data_files]
    new_model, report, ns = update_batches(model, state, batches, threads, progress)
    output = Path(output) if output else model_file
    output.parent.mkdir(parents=True, exist_ok=True)
    replace_durably(lambda tmp: new_model.save(str(tmp)), output, output.suffix)
    spath = state_path(output)
    save_state(ns, spath)
    t = report["timings_s"]
    print(f"added {sum(a['configs'] for a in report['added'])} configurations "
          f"({', '.join(a['name'] for a in report['added'])}): data version {ns.data_version}, "
          f"{report['n_observations']} observations; new rows {t['new_rows_s']:.2f} s, merge {t['merge_s']:.2f} s, "
          f"solve {t['solve_s']:.2f} s", file=out)
    err = report["errors"].get("added_after")
    if err:
        print(error_tables.format_table(err, "errors on the added data after the update"), file=out)
    print(f"model written to {output} (sha256 {new_model.sha256}); fit state to {spath}", file=out)
    report = dict(report, model=output.name, state=spath.name)
    return report


# ---------------------------------------------------------------------------------------------
# the file


def save_state(state: FitState, path) -> str:
    """Write the state (:mod:`aceserver.io.fitstate_file`); returns the file's payload sha256."""
    groups = []
    for key, gf in (("train", state.factors), ("validation", state.validation)):
        if gf is None:
            continue
        for g in gf.labels:
            R, QtY, S, rows = gf.factor(g)
            groups.append(fitstate_file.Group(key, tuple(g), R, QtY, S, rows))
    meta = {"fit": jsonable(state.fit), "data": jsonable(state.data), "n_basis": state.factors.n_basis,
            "n_targets": state.factors.n_targets, "chunk_rows": state.factors.chunk_rows}
    return fitstate_file.write(path, fitstate_file.FitStateFile(state.model_sha256, meta, groups))


def load_state(path, model_sha256: str | None = None) -> FitState:
    """Read a state file; with ``model_sha256``, refuse one that belongs to another model."""
    try:
        f = fitstate_file.read(path)
    except FitStateError:
        raise
    except ModelFileError as err:
        raise FitStateError(str(err)) from None
    if model_sha256 is not None and f.model_sha256 != model_sha256:
        raise FitStateError(f"{path} belongs to the model with sha256 {f.model_sha256[:12]}..., not to "
                            f"the model given ({model_sha256[:12]}...)")
    sets = {}
    for key in ("train", "validation"):
        groups = [([str(x) for x in g.label], g.R, g.QtY, g.S, g.rows) for g in f.groups if g.set == key]
        sets[key] = streaming.GroupFactors.from_payload(
            {"n_basis": f.meta["n_basis"], "n_targets": f.meta["n_targets"], "chunk_rows": f.meta["chunk_rows"],
             "groups": groups}) if groups or key == "train" else None
    fit = f.meta["fit"]
    fit["weights"] = normalise_weights(fit["weights"])
    return FitState(factors=sets["train"], fit=fit, data=list(f.meta["data"]), model_sha256=f.model_sha256,
                    validation=sets["validation"])


def keys_of(state: FitState) -> Keys:
    """The observation keys of the fit's data files (for reading new files alike)."""
    return Keys(**state.fit.get("keys", {}))


__all__ = ["FitState", "FitStateError", "fit_with_state", "update", "update_batches", "update_files",
           "model_path_of", "save_state", "load_state", "state_path",
           "split_new", "configs_sha256", "solve_state", "keys_of"]
