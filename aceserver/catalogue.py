"""The shipped-model catalogue: where shipped models are found, which one is the default, and what
a MODEL argument (`NAME=PATH`, a file, a shipped model's name) names.

Shipped models live in `models/<name>/` of a source checkout and in `aceserver/data/models/<name>/`
of an installed wheel (setup.py copies them there); $ACESERVER_MODELS_DIR comes first. Used by
`aceserver serve` (through the HTTP registry) and `aceserver models`.
"""
from __future__ import annotations

import os
import re
from pathlib import Path

from .loading import load_model

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
    """Folders holding shipped models: $ACESERVER_MODELS_DIR, the source checkout's `models/`
    (editable installs), and the installed package's `aceserver/data/models/` (wheels, see setup.py)."""
    package = Path(__file__).resolve().parent              # .../aceserver
    dirs = [package / "data" / "models"]
    if (package.parent / "pyproject.toml").is_file():      # a source checkout, not site-packages
        dirs.insert(0, package.parent / "models")
    if os.environ.get(MODELS_DIR_ENV):
        dirs.insert(0, Path(os.environ[MODELS_DIR_ENV]))
    return dirs


def shipped_models() -> list[tuple[str, Path]]:
    """Every shipped model as (name, file), the first found of each name, in `models_dirs()` order."""
    found: dict[str, Path] = {}
    for d in models_dirs():
        if not d.is_dir():
            continue
        for folder in sorted(p for p in d.iterdir() if p.is_dir()):
            if folder.name not in found and (path := shipped_model_path(folder.name)) is not None:
                found[folder.name] = path
    return list(found.items())


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


def describe(name: str, path) -> dict:
    """One row of `aceserver models`: name, path, species, rcut (Å), basis size, committee size and
    sha256 of the model file, or its `error` when it cannot be loaded."""
    row = {"name": name, "path": str(path)}
    try:
        info = load_model(str(path)).info()
    except Exception as ex:  # a broken file is listed with its problem, the others still are
        row["error"] = f"{type(ex).__name__}: {ex}"
        return row
    row.update(species=list(info["species"]), rcut=float(info["rcut"]), length_basis=int(info["length_basis"]),
               committee_size=int(info.get("committee_size") or 0), sha256=str(info["sha256"]))
    return row


def listing() -> dict:
    """What `aceserver models` shows: `default` (the shipped default model's name, or None),
    `searched` (the folders, in order) and `models` (one `describe` row per shipped model)."""
    rows = [describe(name, path) for name, path in shipped_models()]
    default = next((n for n in DEFAULT_MODEL_NAMES if any(r["name"] == n for r in rows)), None)
    return {"default": default, "searched": [str(d) for d in models_dirs()], "models": rows}
