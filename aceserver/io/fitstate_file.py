"""The fit-state file `<model stem>.fitstate.npz`: the reduced least-squares system of a fit, kept
beside its model so that new data can be added without re-reading the old (``aceserver fit --update``).

A numpy `.npz` archive (np.savez, read with allow_pickle=False). Keys:

    format          str      "aceserver-fitstate"
    version         int64    1 (a file of a newer version is refused, not guessed at)
    model_sha256    str      sha256 of the model file the state belongs to (`model.sha256`)
    payload_sha256  str      sha256 of everything else (see `payload_hash`): a modified or
                             truncated file is refused
    meta            str      JSON: the fit's settings (weights, prior, solver with committee size
                             and seed, E0 in eV, validation rule, observation keys), the data
                             versions, the units, and one entry per row group:
                             {"set": "train" | "validation", "label": [config_type, kind],
                              "rows": n}, kind "E", "F" or "V"
    R_<i>           (r, m) float64  group i's upper-triangular factor (r = min(rows, m); m basis
                             functions); rows are weight-free: E and V rows divided by √N_atoms
    QtY_<i>         (r, K) float64  Q_iᵀY_i; column 0: targets in eV (E: E − Σ E0, per √atom),
                             eV/Å (F), eV per √atom (V, virial W = −V·σ, Voigt xx yy zz yz xz xy);
                             column 1 + j: count of element j on energy rows (per √atom)
    S_<i>           (K, K) float64  Y_iᵀ(I − Q_iQ_iᵀ)Y_i, the Gram matrix of the residuals

`read` checks every key and shape and raises `ModelFileError` naming the file and the problem.
This module knows the layout only; `aceserver.fitting.incremental` gives it meaning.
"""
from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from ..errors import ModelFileError
from . import npz
from .durable import replace_durably

FORMAT = "aceserver-fitstate"
VERSION = 1
SUFFIX = ".fitstate.npz"
UNITS = {"energy": "eV", "forces": "eV/Å", "virial": "eV (W = -V·σ, Voigt xx yy zz yz xz xy)",
         "rows": "weight-free: E and V rows divided by sqrt(atoms)", "E0": "eV"}


@dataclass
class Group:
    set: str                 # "train" or "validation"
    label: tuple             # (config_type, kind)
    R: np.ndarray
    QtY: np.ndarray
    S: np.ndarray
    rows: int


@dataclass
class FitStateFile:
    model_sha256: str
    meta: dict
    groups: list[Group] = field(default_factory=list)


def state_path(model_path) -> Path:
    """`<folder>/<stem>.fitstate.npz` for a model file `<folder>/<stem>.<suffix>`."""
    p = Path(model_path)
    return p.with_name(p.stem + SUFFIX)


def payload_hash(arrays: dict) -> str:
    """sha256 over every key but ``payload_sha256``, in sorted order: name, dtype, shape, bytes."""
    h = hashlib.sha256()
    for k in sorted(arrays):
        if k == "payload_sha256":
            continue
        a = np.ascontiguousarray(arrays[k])
        h.update(f"{k}|{a.dtype.str}|{a.shape}|".encode())
        h.update(a.tobytes())
    return h.hexdigest()


def write(path, state: FitStateFile) -> str:
    """Write the file (atomically: a temporary file fsynced, then renamed); returns its payload sha256."""
    meta = dict(state.meta, units=UNITS,
                groups=[{"set": g.set, "label": list(g.label), "rows": int(g.rows)} for g in state.groups])
    arrays = {"format": np.array(FORMAT), "version": np.array(VERSION, dtype=np.int64),
              "model_sha256": np.array(str(state.model_sha256)),
              "meta": np.array(json.dumps(meta, sort_keys=True, ensure_ascii=False, allow_nan=False))}
    for i, g in enumerate(state.groups):
        arrays[f"R_{i}"] = np.asarray(g.R, dtype=np.float64)
        arrays[f"QtY_{i}"] = np.asarray(g.QtY, dtype=np.float64)
        arrays[f"S_{i}"] = np.asarray(g.S, dtype=np.float64)
    arrays["payload_sha256"] = np.array(payload_hash(arrays))
    _validate(path, arrays)
    replace_durably(lambda tmp: np.savez(tmp, **arrays), path, ".npz")
    return str(arrays["payload_sha256"])


def read(path) -> FitStateFile:
    path = Path(path)
    arrays = npz.read_arrays(path, "fit-state")
    _validate(path, arrays)
    meta = json.loads(str(arrays["meta"]))
    groups = [Group(set=g["set"], label=tuple(g["label"]), R=arrays[f"R_{i}"], QtY=arrays[f"QtY_{i}"],
                    S=arrays[f"S_{i}"], rows=int(g["rows"])) for i, g in enumerate(meta["groups"])]
    return FitStateFile(model_sha256=str(arrays["model_sha256"]), meta=meta, groups=groups)


def _validate(path, a: dict) -> None:
    def bad(key, what):
        raise ModelFileError(f"{path}: {key!r} {what}")

    for key in ("format", "version", "model_sha256", "payload_sha256", "meta"):
        if key not in a:
            bad(key, "is missing (not an aceserver fit-state file?)")
        if a[key].ndim != 0 or a[key].dtype.kind != ("i" if key == "version" else "U"):
            bad(key, f"has dtype {a[key].dtype} and {a[key].ndim} dimensions")
    if str(a["format"]) != FORMAT:
        bad("format", f"is {str(a['format'])!r}, not {FORMAT!r}")
    if int(a["version"]) > VERSION:
        bad("version", f"is {int(a['version'])}: the file was written by a newer aceserver; this one "
                       f"reads version {VERSION} (upgrade aceserver)")
    if int(a["version"]) != VERSION:
        bad("version", f"is {int(a['version'])}; this aceserver reads version {VERSION}")
    if str(a["payload_sha256"]) != payload_hash(a):
        bad("payload_sha256", "does not match the contents: the file was modified or damaged")
    try:
        meta = json.loads(str(a["meta"]))
        groups = meta["groups"]
        m, k = int(meta["n_basis"]), int(meta["n_targets"])
    except (ValueError, KeyError, TypeError) as err:
        bad("meta", f"is not the expected JSON document: {err!r}")
    expected = {f"{p}_{i}" for i in range(len(groups)) for p in ("R", "QtY", "S")}
    extra = set(a) - expected - {"format", "version", "model_sha256", "payload_sha256", "meta"}
    if extra:
        bad(sorted(extra)[0], "is not part of the format")
    for i, g in enumerate(groups):
        if not (isinstance(g, dict) and g.get("set") in ("train", "validation")
                and isinstance(g.get("label"), list) and len(g["label"]) == 2
                and isinstance(g.get("rows"), int) and g["rows"] >= 0):
            bad("meta", f"group {i} is malformed: {g!r}")
        R, Q, S = (a.get(f"{p}_{i}") for p in ("R", "QtY", "S"))
        if R is None or Q is None or S is None:
            bad(f"R_{i}", "or its QtY/S is missing")
        r = R.shape[0] if R.ndim == 2 else -1
        if (R.dtype != np.float64 or R.shape != (r, m) or r > min(m, g["rows"]) or Q.dtype != np.float64
                or Q.shape != (r, k) or S.dtype != np.float64 or S.shape != (k, k)):
            bad(f"R_{i}", f"QtY_{i}, S_{i}: shapes {R.shape}, {Q.shape}, {S.shape} do not fit {m} basis "
                          f"functions, {k} target columns and {g['rows']} rows")
        if not (np.isfinite(R).all() and np.isfinite(Q).all() and np.isfinite(S).all()):
            bad(f"R_{i}", "holds NaN or inf")
