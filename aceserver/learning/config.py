"""Active-learning configuration files (YAML) for ``aceserver learn``.

The model basis and the fit (``model``, ``E0``, ``weights``, ``prior``, ``solver``, ``seed``,
``threads``) are the sections of a fit configuration and are checked by `fitting.config`; the rest
says how to explore, select and label. File names are relative to the YAML file. Example::

    model: {elements: [Cu], order: 2, totaldegree: 8, rcut: 5.0}
    E0: {Cu: 0.0}                       # eV per element
    weights: {default: {E: 30, F: 1, V: 1}}
    prior: {name: algebraic, p: 4}
    solver: {name: blr}
    seeds: cu-fcc.xyz                   # extended XYZ: the structures exploration starts from
    initial: {copies: 4, rattle_A: 0.05, strain: 0.02}   # labelled before the first fit
    exploration:
      kind: md                          # md | relax
      ensemble: nvt                     # nve | nvt | npt (md)
      steps: 300                        # MD steps (relax: most optimiser steps)
      timestep_fs: 2.0
      temperatures_K: [300, 900, 1500]  # md: one run per temperature, pressure and strain
      pressures_GPa: [0.0]              # npt, and relax with cell_filter
      strains: [-0.03, 0.0, 0.03]       # isotropic strain of the seed cell before the run
      write_every: 5                    # frames kept (and γ checked) every this many steps
    selection:
      gamma_threshold: 2.0              # candidates: frames with max γ above this
      gamma_halt: 20.0                  # a run stops at a frame with max γ above this
      gamma_max: null                   # the window's upper bound: frames with max γ above this
                                        # are not candidates unless none lies in the window
                                        # (null: no bound; at most gamma_halt)
      per_iteration: 8                  # labels per iteration (at most)
    budget: 40                          # labels in all (the initial ones included)
    max_iterations: 10
    labeller:
      model: Cu-PBE-core-rep.yace       # a teacher model (.yace or aceserver model file), or
      # calculator: ase.calculators.emt:EMT   with  kwargs: {}          an ASE calculator, or
      # command: "my-dft {input} {output}"    with  timeout_s: 3600     a shell command
      on_failure: skip                  # skip | retry
      retries: 1                        # extra attempts with on_failure: retry
    test: null                          # labelled extended XYZ: errors per iteration
    output: learn-out                   # directory: data set, models, state, report
    gamma_tol: 1.0e-9                   # MaxVol's tolerance (active sets and the selection)

Units: Å, eV, eV/Å, fs, K, GPa; strains are dimensionless.
"""
from __future__ import annotations

import copy
import hashlib
import json
from dataclasses import dataclass, field
from pathlib import Path

import yaml

from aceserver.fitting import config as fconfig

FIT_KEYS = {"model", "E0", "weights", "prior", "solver", "seed", "threads", "name", "description"}
TOP_KEYS = FIT_KEYS | {"seeds", "initial", "exploration", "selection", "budget", "max_iterations",
                       "labeller", "test", "output", "gamma_tol"}
INITIAL_KEYS = {"copies", "rattle_A", "strain", "seed"}
EXPLORE_KEYS = {"kind", "ensemble", "steps", "timestep_fs", "temperatures_K", "pressures_GPa",
                "strains", "write_every", "optimizer", "fmax", "cell_filter", "friction_per_fs"}
SELECT_KEYS = {"gamma_threshold", "gamma_halt", "gamma_max", "per_iteration"}
LABEL_KEYS = {"model", "calculator", "kwargs", "command", "timeout_s", "on_failure", "retries"}


class LearnConfigError(ValueError):
    """A learning configuration is unreadable or has a bad entry (the message names it)."""


@dataclass
class Exploration:
    kind: str = "md"
    ensemble: str = "nvt"
    steps: int = 200
    timestep_fs: float = 2.0
    temperatures_K: list = field(default_factory=lambda: [300.0])
    pressures_GPa: list = field(default_factory=lambda: [0.0])
    strains: list = field(default_factory=lambda: [0.0])
    write_every: int = 5
    optimizer: str = "FIRE"
    fmax: float = 0.05
    cell_filter: bool = False
    friction_per_fs: float = 0.01


@dataclass
class Labeller:
    kind: str                          # "model" | "calculator" | "command"
    target: str                        # model file path, "module:Class" or the command
    kwargs: dict = field(default_factory=dict)
    timeout_s: float | None = None
    on_failure: str = "skip"
    retries: int = 0


@dataclass
class LearnConfig:
    fit_raw: dict                      # the fit sections, as a fit configuration has them
    seeds: list[Path]
    initial_copies: int
    initial_rattle: float              # Å
    initial_strain: float              # largest |strain| of the initial copies
    initial_seed: int
    exploration: Exploration
    gamma_threshold: float
    gamma_halt: float
    per_iteration: int
    budget: int
    max_iterations: int
    labeller: Labeller
    test: list[Path]
    output: Path
    gamma_tol: float = 1e-9
    gamma_max: float = float("inf")    # candidates: gamma_threshold < max γ <= gamma_max
    raw: dict = field(default_factory=dict)
    path: Path | None = None

    @property
    def seed(self) -> int:
        return int(self.fit_raw.get("seed", 0))

    def fingerprint(self) -> str:
        """sha256 of the configuration (canonical JSON): a resumed run must use the same one."""
        return hashlib.sha256(json.dumps(self.raw, sort_keys=True, default=str).encode()).hexdigest()

    def fit_config(self, train: Path) -> fconfig.FitConfig:
        """The fit configuration of this run's data set `train` (an extended-XYZ file written with
        ASE's names: energy, forces, stress)."""
        train = Path(train).resolve()
        # the file by name, relative to its folder: the model's provenance records no machine path
        raw = dict(self.fit_raw, data={"train": train.name, "energy_key": "energy",
                                       "force_key": "forces", "virial_key": "virial",
                                       "stress_key": "stress"},
                   output={"model": None, "plots": None, "active_set": False})
        cfg = fconfig.parse_config(raw, train.parent)
        cfg.path = self.path
        return cfg


def _unknown(d: dict, allowed: set, where: str):
    extra = set(d) - allowed
    if extra:
        raise LearnConfigError(f"unknown entr{'y' if len(extra) == 1 else 'ies'} {sorted(extra)} in "
                               f"{where}; allowed: {sorted(allowed)}")


def _mapping(raw: dict, key: str) -> dict:
    value = raw.get(key) or {}
    if not isinstance(value, dict):
        raise LearnConfigError(f"'{key}' must be a mapping")
    return value


def _number(d: dict, key: str, default, where: str, kind=float, lo=None, hi=None, strict_lo=False):
    value, name = d.get(key, default), f"{where}.{key}" if where else key
    if isinstance(value, bool) or (kind is int and isinstance(value, float) and not value.is_integer()):
        raise LearnConfigError(f"'{name}' must be {'an integer' if kind is int else 'a number'}, "
                               f"got {value!r}")
    try:
        value = kind(value)
    except (TypeError, ValueError):
        raise LearnConfigError(f"'{name}' must be a number, got {d.get(key)!r}") from None
    if kind is float and value != value:
        raise LearnConfigError(f"'{name}' is NaN")
    if lo is not None and (value <= lo if strict_lo else value < lo):
        raise LearnConfigError(f"'{name}' must be {'>' if strict_lo else '>='} {lo}, got {value}")
    if hi is not None and value > hi:
        raise LearnConfigError(f"'{name}' must be <= {hi}, got {value}")
    return value


def _numbers(d: dict, key: str, default: list, where: str, lo=None, hi=None) -> list[float]:
    value = d.get(key, default)
    if not isinstance(value, list):
        value = [value]
    if not value:
        raise LearnConfigError(f"'{where}.{key}' must not be empty")
    return [_number({key: v}, key, None, where, float, lo, hi) for v in value]


def _files(value, base: Path, what: str) -> list[Path]:
    if value is None:
        return []
    if isinstance(value, str):
        value = [value]
    if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
        raise LearnConfigError(f"'{what}' must be a file name or a list of file names")
    out = [Path(v) if Path(v).is_absolute() else (base / v).resolve() for v in value]
    for v, p in zip(value, out):
        if not p.is_file():
            raise LearnConfigError(f"'{what}': file {v} not found (looked for {p})")
    return out


def _labeller(d: dict, base: Path) -> Labeller:
    _unknown(d, LABEL_KEYS, "'labeller'")
    kinds = [k for k in ("model", "calculator", "command") if d.get(k) is not None]
    if len(kinds) != 1:
        raise LearnConfigError("'labeller' needs exactly one of 'model' (a .yace or aceserver model "
                               "file), 'calculator' (module:Class) or 'command' (a shell command)")
    kind = kinds[0]
    target = d[kind]
    if not isinstance(target, str) or not target.strip():
        raise LearnConfigError(f"'labeller.{kind}' must be a non-empty string")
    if kind == "model":
        p = Path(target) if Path(target).is_absolute() else (base / target).resolve()
        if not p.is_file():
            raise LearnConfigError(f"'labeller.model': file {target} not found (looked for {p})")
        target = str(p)
    if kind == "calculator" and (":" not in target or not all(target.split(":", 1))):
        raise LearnConfigError(f"'labeller.calculator' must be 'module:Class', got {target!r}")
    kwargs = d.get("kwargs") or {}
    if not isinstance(kwargs, dict):
        raise LearnConfigError("'labeller.kwargs' must be a mapping of keyword arguments")
    if kwargs and kind != "calculator":
        raise LearnConfigError("'labeller.kwargs' is for 'calculator' labellers only")
    timeout = d.get("timeout_s")
    if timeout is not None and kind != "command":
        raise LearnConfigError("'labeller.timeout_s' is for 'command' labellers (a model or calculator "
                               "runs in this process and cannot be stopped safely)")
    if timeout is not None:
        timeout = _number(d, "timeout_s", None, "labeller", float, 0, strict_lo=True)
    elif kind == "command":
        timeout = 3600.0
    on_failure = d.get("on_failure", "skip")
    if on_failure not in ("skip", "retry"):
        raise LearnConfigError(f"'labeller.on_failure' must be 'skip' or 'retry', got {on_failure!r}")
    retries = _number(d, "retries", 1 if on_failure == "retry" else 0, "labeller", int, 0, 100)
    return Labeller(kind, target, dict(kwargs), timeout, on_failure, retries)


def _exploration(d: dict) -> Exploration:
    _unknown(d, EXPLORE_KEYS, "'exploration'")
    w = "exploration"
    e = Exploration(
        kind=d.get("kind", "md"), ensemble=d.get("ensemble", "nvt"),
        steps=_number(d, "steps", 200, w, int, 1, 10_000_000),
        timestep_fs=_number(d, "timestep_fs", 2.0, w, float, 0, 20, strict_lo=True),
        temperatures_K=_numbers(d, "temperatures_K", [300.0], w, 0, 100_000),
        pressures_GPa=_numbers(d, "pressures_GPa", [0.0], w, -1000, 1000),
        strains=_numbers(d, "strains", [0.0], w, -0.5, 0.5),
        write_every=_number(d, "write_every", 5, w, int, 1, 10_000_000),
        optimizer=d.get("optimizer", "FIRE"),
        fmax=_number(d, "fmax", 0.05, w, float, 0, strict_lo=True),
        cell_filter=bool(d.get("cell_filter", False)),
        friction_per_fs=_number(d, "friction_per_fs", 0.01, w, float, 0, 10, strict_lo=True))
    if e.kind not in ("md", "relax"):
        raise LearnConfigError(f"'exploration.kind' must be 'md' or 'relax', got {e.kind!r}")
    if e.ensemble not in ("nve", "nvt", "npt"):
        raise LearnConfigError(f"'exploration.ensemble' must be nve, nvt or npt, got {e.ensemble!r}")
    if e.optimizer not in ("FIRE", "BFGS", "LBFGS"):
        raise LearnConfigError(f"'exploration.optimizer' must be FIRE, BFGS or LBFGS, got {e.optimizer!r}")
    return e


def parse_config(raw: dict, base: Path = Path(".")) -> LearnConfig:
    if not isinstance(raw, dict):
        raise LearnConfigError("the learning configuration must be a YAML mapping")
    raw = copy.deepcopy(raw)
    _unknown(raw, TOP_KEYS, "the configuration")
    seeds = _files(raw.get("seeds"), base, "seeds")
    if not seeds:
        raise LearnConfigError("'seeds' must name at least one extended-XYZ file of structures")
    fit_raw = {k: raw[k] for k in FIT_KEYS if k in raw}
    try:   # the fit sections are checked as a fit configuration's (with the seeds as stand-in data)
        fconfig.parse_config(dict(fit_raw, data={"train": str(seeds[0])}), base)
    except fconfig.FitConfigError as exc:
        raise LearnConfigError(str(exc)) from None
    ini = _mapping(raw, "initial")
    _unknown(ini, INITIAL_KEYS, "'initial'")
    sel = _mapping(raw, "selection")
    _unknown(sel, SELECT_KEYS, "'selection'")
    threshold = _number(sel, "gamma_threshold", 2.0, "selection", float, 1.0)
    halt = _number(sel, "gamma_halt", max(10.0, 5 * threshold), "selection", float, threshold,
                   strict_lo=True)
    gamma_max = float("inf")
    if sel.get("gamma_max") is not None:
        gamma_max = _number(sel, "gamma_max", None, "selection", float, threshold, halt, strict_lo=True)
    budget = _number(raw, "budget", 50, "", int, 1, 1_000_000)
    out = raw.get("output", "learn-out")
    if not isinstance(out, str) or not out:
        raise LearnConfigError("'output' must be a directory name")
    if "labeller" not in raw:
        raise LearnConfigError("'labeller' is required (model, calculator or command)")
    return LearnConfig(
        fit_raw=fit_raw, seeds=seeds,
        initial_copies=_number(ini, "copies", 4, "initial", int, 0, 10_000),
        initial_rattle=_number(ini, "rattle_A", 0.05, "initial", float, 0, 1.0),
        initial_strain=_number(ini, "strain", 0.02, "initial", float, 0, 0.5),
        initial_seed=_number(ini, "seed", 0, "initial", int, 0),
        exploration=_exploration(_mapping(raw, "exploration")),
        gamma_threshold=threshold, gamma_halt=halt,
        per_iteration=_number(sel, "per_iteration", 8, "selection", int, 1, 100_000),
        budget=budget, max_iterations=_number(raw, "max_iterations", 10, "", int, 1, 10_000),
        labeller=_labeller(_mapping(raw, "labeller"), base), test=_files(raw.get("test"), base, "test"),
        output=Path(out) if Path(out).is_absolute() else (base / out).resolve(),
        gamma_tol=_number(raw, "gamma_tol", 1e-9, "", float, 0), gamma_max=gamma_max, raw=raw)


def load_config(path) -> LearnConfig:
    path = Path(path)
    try:
        raw = yaml.safe_load(path.read_text())
    except OSError as exc:
        raise LearnConfigError(f"cannot read {path}: {exc}") from None
    except yaml.YAMLError as exc:
        raise LearnConfigError(f"{path} is not valid YAML: {exc}") from None
    cfg = parse_config(raw, path.parent.resolve())
    cfg.path = path.resolve()
    return cfg
