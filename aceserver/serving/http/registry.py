"""The models a server serves, addressed by name; where shipped models are found; kernel warm-up.

Only the public model API is used: `load_model`, `model.info()`, `model.elements`, `model.rcut`,
`model.evaluate(...)`.
"""
from __future__ import annotations

import os
import re
from pathlib import Path
from typing import Any

import numpy as np
from ase.data import atomic_numbers

# Shipped models live in `models/<name>/` (see `shipped_model_path`); the first of these that exists is
# what `aceserver serve` with no MODEL serves.
DEFAULT_MODEL_NAMES = ("zuo-Si", "Si-tiny")
# Names of the model file inside `models/<name>/`, tried in order; `{name}` is the model's name.
SHIPPED_MODEL_FILES = ("{name}.json", "model.json", "{name}.ace.json", "{name}.yaml", "model.yaml",
                       "{name}.yace", "model.yace")
MODELS_DIR_ENV = "ACESERVER_MODELS_DIR"
NAME_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,63}$")


class ModelLookupError(LookupError):
    """A MODEL argument names neither a model file nor a shipped model."""


def models_dirs() -> list[Path]:
    """Folders holding shipped models: $ACESERVER_MODELS_DIR, the source checkout's `models/`,
    and the installed package's `aceserver/data/models/`."""
    package = Path(__file__).resolve().parents[2]           # .../aceserver
    dirs = [package.parent / "models", package / "data" / "models"]
    if os.environ.get(MODELS_DIR_ENV):
        dirs.insert(0, Path(os.environ[MODELS_DIR_ENV]))
    return dirs


def shipped_model_path(name: str) -> Path | None:
    """The model file of the shipped model `name` (`models/<name>/<file>`), or None."""
    for d in models_dirs():
        for pattern in SHIPPED_MODEL_FILES:
            p = d / name / pattern.format(name=name)
            if p.is_file():
                return p
    return None


def default_model() -> tuple[str, Path]:
    for name in DEFAULT_MODEL_NAMES:
        p = shipped_model_path(name)
        if p is not None:
            return name, p
    searched = ", ".join(str(d) for d in models_dirs())
    raise ModelLookupError(
        f"no MODEL given and no shipped default model ({' or '.join(DEFAULT_MODEL_NAMES)}) was found in "
        f"{searched}. Give a model file: `aceserver serve path/to/model.json`, or set ${MODELS_DIR_ENV}.")


def resolve(spec: str) -> tuple[str, Path]:
    """`NAME=PATH`, `PATH` (name: file name without suffixes) or a shipped model's name -> (name, path)."""
    name, sep, path = spec.partition("=")
    if sep:
        p = Path(path)
        if not p.is_file():
            raise ModelLookupError(f"model file {path!r} (for model {name!r}) does not exist")
    else:
        p = Path(spec)
        if p.is_file():
            name = p.name.split(".")[0]
        else:
            found = shipped_model_path(spec)
            if found is None:
                raise ModelLookupError(
                    f"{spec!r} is neither a model file nor a shipped model (looked in "
                    f"{', '.join(str(d) for d in models_dirs())})")
            name, p = spec, found
    if not NAME_RE.match(name):
        raise ModelLookupError(f"model name {name!r} must be 1-64 characters of letters, digits, '.', '_', '-'; "
                               "use NAME=PATH to choose one")
    return name, p


class ServedModel:
    """A loaded model and its name; its description is computed once (served models do not change)."""

    def __init__(self, name: str, model: Any, path: str | None = None):
        self.name, self.model, self.path = name, model, path
        self._info = self._describe()
        self.sha256: str = self._info["sha256"]
        self.has_committee: bool = self._info["committee_size"] > 0

    def info(self) -> dict[str, Any]:
        return dict(self._info)

    def _describe(self) -> dict[str, Any]:
        from .schema import ModelInfo

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
        if isinstance(info.get("units"), dict):
            desc["units"] = {str(k): str(v) for k, v in info["units"].items()}
        # validated once here, so that a model whose description does not fit the schema fails at start-up
        return ModelInfo.model_validate(desc).model_dump()

    def warm(self, threads: int | None = 1) -> None:
        """Evaluate a cluster and a periodic grid once, so the numba kernels are compiled (or loaded
        from numba's cache) before the server reports ready."""
        numbers = [atomic_numbers[e] for e in self.model.elements]
        spacing = 0.45 * float(self.model.rcut)
        committee = self.has_committee
        grid = np.array([(i, j, k) for i in range(4) for j in range(4) for k in range(3)], dtype=float)
        zs = np.array([numbers[i % len(numbers)] for i in range(len(grid))])
        cell = np.diag([4.0, 4.0, 3.0]) * spacing
        self.model.evaluate(zs, grid * spacing, cell, np.ones(3, bool), committee=committee,
                            committee_forces=committee, threads=threads)
        self.model.evaluate(zs[:5], grid[:5] * spacing, np.zeros((3, 3)), np.zeros(3, bool),
                            committee=committee, committee_forces=committee, threads=threads)


class ModelRegistry:
    def __init__(self, models: list[ServedModel]):
        if not models:
            raise ValueError("a server needs at least one model")
        self.models = {}
        for m in models:
            if m.name in self.models:
                raise ModelLookupError(f"two models are named {m.name!r}; use NAME=PATH to tell them apart")
            self.models[m.name] = m
        self.default = models[0].name

    @classmethod
    def load(cls, specs: list[str]) -> "ModelRegistry":
        """Load the models named on the command line (none: the shipped default)."""
        from aceserver import load_model

        pairs = [resolve(s) for s in specs] if specs else [default_model()]
        return cls([ServedModel(name, load_model(str(path)), str(path)) for name, path in pairs])

    def get(self, name: str) -> ServedModel | None:
        return self.models.get(name)

    def warm(self, threads: int | None = 1) -> None:
        for m in self.models.values():
            m.warm(threads)
