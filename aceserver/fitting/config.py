"""Fit configuration files (YAML) for ``aceserver fit``.

Example (the upstream Si test; paths are relative to the YAML file)::

    model:                      # keywords of aceserver.ace1_model (ACEpotentials.jl names)
      elements: [Si]
      order: 3
      totaldegree: 12
      rcut: 5.5
    E0: {Si: -158.54496821}     # eV per element, or "isolated_atom" (from one-atom configurations)
    data:
      train: Si_tiny.xyz        # a file or a list of files
      validation: null          # file(s); else validation_fraction of train is held out
      energy_key: dft_energy    # matched case-insensitively
      force_key: dft_force
      virial_key: dft_virial
      stress_key: null          # a stress (eV/Å³) is converted to a virial if no virial is found
      config_type_key: config_type
      relative_to: config       # "config": file names relative to this YAML file; "data_dir": relative
                                # to the data directory (--data-dir or $ACESERVER_DATA)
      source: null              # where to get the files (shown when one is missing)
      force_groups: null        # N: label configurations rms0 .. rms<N-1> by RMS force (N equal-sized
                                # groups of the training set, in place of config_type) for weights
    weights:                    # per config_type; "default" for the rest (upstream: E 30, F 1, V 1)
      default: {E: 30, F: 1, V: 1}
      liq: {E: 10, F: 0.66, V: 0.25}
    prior: {name: algebraic, p: 4}      # algebraic | exponential | gaussian | none
    solver: {name: blr, committee_size: 8}   # qr (lambda) | blr | tsvd (rtol) | rrqr (rtol)
                                # | asp (select, max_active, tsvd) | ard (threshold_lambda, max_iter)
    validation_fraction: 0.0
    seed: 0
    threads: null               # default: all CPUs
    memory_limit_gb: null       # default: the memory available now
    output:
      model: Si-tiny.json       # the model file
      plots: plots              # directory for parity plots (null: none)
      report: null              # JSON report (also: --json-report)
      active_set: true          # build the active sets (γ) from the training data and write
                                # them beside the model as <model stem>.activeset.npz
"""
from __future__ import annotations

import copy
import os
from dataclasses import dataclass, field
from pathlib import Path

import yaml

from aceserver.ace1.model import ace1_model
from aceserver.loading import load_model

from .data import DEFAULT_WEIGHTS, MAX_FORCE_GROUPS, Keys, check_force_groups, normalise_weights

TOP_KEYS = {"model", "E0", "data", "weights", "prior", "solver", "validation_fraction", "seed",
            "threads", "memory_limit_gb", "output", "name", "description"}
DATA_KEYS = {"train", "validation", "energy_key", "force_key", "virial_key", "stress_key", "config_type_key",
             "relative_to", "source", "force_groups"}
DATA_ENV = "ACESERVER_DATA"      # the data directory when --data-dir is not given
OUTPUT_KEYS = {"model", "plots", "report", "active_set"}


class FitConfigError(ValueError):
    """A fit configuration file is unreadable or has a bad entry (the message names it)."""


@dataclass
class FitConfig:
    model: dict                      # ace1_model keywords (without E0)
    E0: object                       # dict, "isolated_atom" or None
    train: list[Path]
    validation: list[Path]
    keys: Keys
    weights: dict
    prior: dict | None
    solver: dict
    validation_fraction: float = 0.0
    seed: int = 0
    threads: int | None = None
    memory_limit: int | None = None  # bytes
    output_model: Path | None = None
    output_plots: Path | None = None
    output_report: Path | None = None
    output_active_set: bool = True
    force_groups: int | None = None  # configurations labelled rms0.. by RMS force (data.group_by_force)
    name: str = ""
    raw: dict = field(default_factory=dict)
    path: Path | None = None


def _paths(value, base: Path, what: str, source: str | None = None) -> list[Path]:
    if value is None:
        return []
    if isinstance(value, (str, Path)):
        value = [value]
    if not isinstance(value, list) or not all(isinstance(v, (str, Path)) for v in value):
        raise FitConfigError(f"{what} must be a file name or a list of file names")
    out = [(base / v).resolve() if not Path(v).is_absolute() else Path(v) for v in value]
    for v, p in zip(value, out):
        if not p.is_file():
            raise FitConfigError(f"{what}: data file {v} not found (looked for {p})"
                                 + (f"; get it from: {source}" if source else ""))
    return out


def data_base(d: dict, base: Path, data_dir=None) -> Path:
    """The directory that data file names are relative to: the YAML file's, or the data directory
    (``data_dir``, else $ACESERVER_DATA) when ``relative_to: data_dir``."""
    rel = d.get("relative_to", "config")
    if rel == "config":
        return base
    if rel != "data_dir":
        raise FitConfigError(f"'data.relative_to' must be 'config' or 'data_dir', got {rel!r}")
    data_dir = data_dir or os.environ.get(DATA_ENV)
    if not data_dir:
        src = d.get("source")
        raise FitConfigError("this configuration names its data files relative to a data directory: pass "
                             f"--data-dir DIR or set {DATA_ENV}=DIR" + (f" (data: {src})" if src else ""))
    if not Path(data_dir).is_dir():
        raise FitConfigError(f"data directory {data_dir} does not exist")
    return Path(data_dir).resolve()


def _unknown(d: dict, allowed: set, where: str):
    extra = set(d) - allowed
    if extra:
        raise FitConfigError(f"unknown entr{'y' if len(extra) == 1 else 'ies'} {sorted(extra)} in {where}; "
                             f"allowed: {sorted(allowed)}")


def parse_config(raw: dict, base: Path = Path("."), data_dir=None) -> FitConfig:
    if not isinstance(raw, dict):
        raise FitConfigError("the fit configuration must be a YAML mapping")
    raw = copy.deepcopy(raw)
    _unknown(raw, TOP_KEYS, "the configuration")
    model = raw.get("model")
    if not isinstance(model, dict) or "elements" not in model:
        raise FitConfigError("'model' must be a mapping of ace1_model keywords including 'elements'")
    model = dict(model)
    E0 = model.pop("E0", None)
    if "E0" in raw:
        E0 = raw["E0"]
    if E0 is not None and not isinstance(E0, (dict, str)):
        raise FitConfigError("'E0' must be a mapping element -> eV or 'isolated_atom'")
    d = raw.get("data")
    if not isinstance(d, dict) or "train" not in d:
        raise FitConfigError("'data' must be a mapping with at least 'train'")
    _unknown(d, DATA_KEYS, "'data'")
    keys = Keys(energy=d.get("energy_key", "energy"), force=d.get("force_key", "force"),
                virial=d.get("virial_key", "virial"), stress=d.get("stress_key"),
                config_type=d.get("config_type_key", "config_type"))
    try:
        weights = normalise_weights(raw.get("weights", DEFAULT_WEIGHTS))
    except (ValueError, AttributeError) as exc:
        raise FitConfigError(f"'weights': {exc}") from None
    solver = raw.get("solver", {"name": "blr"})
    if isinstance(solver, str):
        solver = {"name": solver}
    if not isinstance(solver, dict):
        raise FitConfigError("'solver' must be a name or a mapping with 'name'")
    prior = raw.get("prior", {"name": "algebraic", "p": 4})
    if isinstance(prior, str):
        prior = {"name": prior}
    try:
        vf = float(raw.get("validation_fraction", 0.0))
        seed = int(raw.get("seed", 0))
        threads = raw.get("threads")
        threads = None if threads is None else int(threads)
        mem = raw.get("memory_limit_gb")
        mem = None if mem is None else int(float(mem) * 2 ** 30)
    except (TypeError, ValueError) as exc:
        raise FitConfigError(f"bad number in the configuration: {exc}") from None
    if not 0.0 <= vf < 1.0:
        raise FitConfigError(f"'validation_fraction' must be in [0, 1), got {vf}")
    out = raw.get("output") or {}
    if not isinstance(out, dict):
        raise FitConfigError("'output' must be a mapping")
    _unknown(out, OUTPUT_KEYS, "'output'")
    opath = lambda v: None if v in (None, False) else ((base / v).resolve() if not Path(v).is_absolute() else Path(v))
    if not isinstance(out.get("active_set", True), bool):
        raise FitConfigError("'output.active_set' must be true or false")
    groups = d.get("force_groups")
    if groups is not None:
        try:
            groups = check_force_groups(groups)
        except ValueError:
            raise FitConfigError(f"'data.force_groups' must be an integer from 2 to {MAX_FORCE_GROUPS} (or null), "
                                 f"got {groups!r}") from None
    dbase, src = data_base(d, base, data_dir), d.get("source")
    return FitConfig(model=model, E0=E0, train=_paths(d["train"], dbase, "'data.train'", src),
                     validation=_paths(d.get("validation"), dbase, "'data.validation'", src), keys=keys,
                     weights=weights, prior=prior, solver=solver, validation_fraction=vf, seed=seed,
                     threads=threads, memory_limit=mem, output_model=opath(out.get("model")),
                     output_plots=opath(out.get("plots")), output_report=opath(out.get("report")),
                     output_active_set=out.get("active_set", True), force_groups=groups,
                     name=str(raw.get("name", "")), raw=raw)


def load_config(path, data_dir=None) -> FitConfig:
    """Read a fit configuration; ``data_dir``: the data directory for ``relative_to: data_dir``."""
    path = Path(path)
    try:
        text = path.read_text()
    except OSError as exc:
        raise FitConfigError(f"cannot read {path}: {exc}") from None
    try:
        raw = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        raise FitConfigError(f"{path} is not valid YAML: {exc}") from None
    cfg = parse_config(raw, path.parent.resolve(), data_dir)
    cfg.path = path.resolve()
    return cfg


def build_model(model_kwargs: dict, E0: dict):
    """The model to fit: ``aceserver.ace1_model(**model_kwargs, E0=E0)`` (the core's constructor)."""
    return ace1_model(**model_kwargs, E0=E0)


def load_model_file(path):
    """A fitted model file (``aceserver.load_model``), as ``aceserver eval`` reads it."""
    return load_model(path)
