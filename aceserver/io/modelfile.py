"""The aceserver model file: one JSON document, self-contained (species, E0, transforms, spline
tables, basis specification and coupling, parameters, committee, units, provenance), no pickle.

Arrays are stored as {"dtype", "shape", "base64"} with little-endian bytes, so they round-trip
bit for bit. `sha256` is the hash of the canonical JSON of everything else; it is checked on load,
which catches truncation and corruption, and it is the model's identity.
"""
from __future__ import annotations

import base64
import hashlib
import json
from pathlib import Path

import numpy as np

from ..errors import ModelFileError

FORMAT = "aceserver-model"
SCHEMA_VERSION = 1
UNITS = {"energy": "eV", "length": "Å", "forces": "eV/Å", "stress": "eV/Å³ (ASE, Voigt xx yy zz yz xz xy)",
         "virial": "eV (W = -V·σ)", "E0": "eV"}
_DTYPES = {"float64": "<f8", "int64": "<i8"}


def encode_array(a: np.ndarray) -> dict:
    a = np.asarray(a)
    kind = "float64" if a.dtype.kind == "f" else "int64"
    data = np.ascontiguousarray(a, dtype=_DTYPES[kind]).tobytes()
    return {"dtype": kind, "shape": list(a.shape), "base64": base64.b64encode(data).decode("ascii")}


def decode_array(d, name: str) -> np.ndarray:
    try:
        dtype = np.dtype(_DTYPES[d["dtype"]])
        raw = base64.b64decode(d["base64"], validate=True)
        shape = tuple(int(s) for s in d["shape"])
        a = np.frombuffer(raw, dtype=dtype)
        return a.reshape(shape).astype(dtype.newbyteorder("="))
    except (KeyError, TypeError, ValueError) as err:
        raise ModelFileError(f"array {name!r} in the model file is malformed: {err}") from None


def content_hash(doc: dict) -> str:
    body = {k: v for k, v in doc.items() if k != "sha256"}
    canon = json.dumps(body, sort_keys=True, separators=(",", ":"), ensure_ascii=True)
    return hashlib.sha256(canon.encode("ascii")).hexdigest()


def write(path, doc: dict) -> str:
    doc = dict(doc, format=FORMAT, schema_version=SCHEMA_VERSION, units=UNITS)
    doc["sha256"] = content_hash(doc)
    Path(path).write_text(json.dumps(doc, sort_keys=True, indent=1, ensure_ascii=False))
    return doc["sha256"]


def read(path) -> dict:
    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise ModelFileError(f"model file {path} does not exist") from None
    except (OSError, UnicodeDecodeError) as err:
        raise ModelFileError(f"model file {path} cannot be read: {err}") from None
    try:
        doc = json.loads(text)
    except json.JSONDecodeError as err:
        raise ModelFileError(f"model file {path} is not valid JSON (truncated or corrupted?): "
                             f"{err}") from None
    if not isinstance(doc, dict) or doc.get("format") != FORMAT:
        raise ModelFileError(f"{path} is not an aceserver model file (format field missing)")
    version = doc.get("schema_version")
    if version != SCHEMA_VERSION:
        raise ModelFileError(f"model file {path} has schema version {version!r}; this aceserver "
                             f"reads version {SCHEMA_VERSION}")
    if doc.get("sha256") != content_hash(doc):
        raise ModelFileError(f"model file {path} fails its sha256 check: it was modified or "
                             "corrupted after it was written")
    return doc
