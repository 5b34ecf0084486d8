"""Body codecs: JSON and msgpack, chosen by Content-Type (requests) and Accept (responses);
extended XYZ text in requests (`extxyz.py`). Malformed bodies raise `DecodeError` (a 400).

msgpack carries every numeric array as a map ``{"dtype": "<f8", "shape": [N, 3], "data": <bin>}``:
``data`` holds the raw little-endian buffer in C order. Requests may use such maps or plain nested
lists anywhere an array is expected; responses always use maps for arrays. dtypes accepted in
requests: ``<f8`` (float64), ``<i8`` / ``<i4`` (integers), ``|b1`` (booleans). No pickle, no ext types.

Limits apply while decoding, before anything is built per atom: an msgpack array larger than the
largest per-structure field (positions, 3 × max_atoms values) is a 413 before its Python list is
made, and extended XYZ headers are checked before ASE reads the text (`extxyz.scan`). A JSON body
cannot be counted before `json.loads` builds it: that costs about 30 ms and 3-8 MB of memory per
MiB of body (measured: 61 MiB, 1e6 atoms: 1.9 s, +200 MB), bounded by `--max-body-mb`.
"""
from __future__ import annotations

import json
import math
from functools import partial
from typing import Any

import msgpack
import numpy as np

from .error_replies import APIError, DecodeError
from .extxyz import decode_extxyz

JSON = "application/json"
MSGPACK = "application/msgpack"
MSGPACK_ALIASES = {MSGPACK, "application/x-msgpack", "application/vnd.msgpack"}
EXTXYZ = "chemical/x-extxyz"       # requests only: extended XYZ text (the web page's form sends it)
ARRAY_KEYS = {"dtype", "shape", "data"}
REQUEST_DTYPES = {"<f8": np.dtype("<f8"), "<i8": np.dtype("<i8"), "<i4": np.dtype("<i4"), "|b1": np.dtype("?")}
MAX_NDIM = 4


def media_type(header: str | None) -> str:
    """`application/json; charset=utf-8` -> `application/json` (lower case)."""
    return (header or "").split(";", 1)[0].strip().lower()


def request_codec(content_type: str | None) -> str | None:
    """The codec for a request Content-Type (missing: JSON), or None when it is not supported."""
    mt = media_type(content_type)
    if mt in ("", JSON) or (mt.startswith("application/") and mt.endswith("+json")):
        return JSON
    if mt in MSGPACK_ALIASES:
        return MSGPACK
    if mt == EXTXYZ:
        return EXTXYZ
    return None


def response_codec(accept: str | None) -> str:
    """msgpack when the Accept header names it (with non-zero q), JSON otherwise."""
    for part in (accept or "").split(","):
        mt, *params = part.split(";")
        if mt.strip().lower() in MSGPACK_ALIASES and _quality(params) > 0:
            return MSGPACK
    return JSON


def _quality(params: list[str]) -> float:
    for p in params:
        key, _, value = p.partition("=")
        if key.strip().lower() == "q":
            try:
                return float(value)
            except ValueError:
                return 0.0
    return 1.0


def _decode_array(obj: dict, max_values: int) -> Any:
    if obj.keys() != ARRAY_KEYS:
        return obj
    dtype, shape, data = obj["dtype"], obj["shape"], obj["data"]
    if not isinstance(dtype, str) or dtype not in REQUEST_DTYPES:
        raise DecodeError(f"array dtype must be one of {sorted(REQUEST_DTYPES)}, got {dtype!r}")
    if (not isinstance(shape, list) or len(shape) > MAX_NDIM
            or not all(isinstance(n, int) and not isinstance(n, bool) and n >= 0 for n in shape)):
        raise DecodeError(f"array shape must be a list of at most {MAX_NDIM} non-negative integers, got {shape!r}")
    if not isinstance(data, bytes):
        raise DecodeError("array data must be msgpack bin (raw little-endian bytes)")
    dt = REQUEST_DTYPES[dtype]
    if math.prod(shape) > max_values:
        raise APIError(413, "too_large", f"an array of shape {shape} holds {math.prod(shape)} values, more than "
                       f"any field of a structure within the limits may hold ({max_values})", "body")
    if len(data) != math.prod(shape) * dt.itemsize:
        raise DecodeError(f"array of shape {shape} and dtype {dtype} needs {math.prod(shape) * dt.itemsize} "
                          f"bytes, got {len(data)}")
    # Validation works on plain Python values, so that JSON and msgpack go through the same checks.
    return np.frombuffer(data, dtype=dt).reshape(shape).tolist()


def decode(body: bytes, codec: str, max_atoms: int = 100_000, max_structures: int = 1_000) -> Any:
    """Decode a request body; raise DecodeError on malformed input, APIError 413 where the limits
    (atoms per structure, structures per request) can be seen before decoding the whole body."""
    if not body:
        raise DecodeError("empty request body")
    try:
        if codec == MSGPACK:
            return msgpack.unpackb(body, raw=False, object_hook=partial(_decode_array, max_values=3 * max_atoms),
                                   strict_map_key=True, ext_hook=_reject_ext)
        if codec == EXTXYZ:
            return decode_extxyz(body, max_atoms, max_structures)
        return json.loads(body)
    except DecodeError:
        raise
    except (ValueError, TypeError, RecursionError, msgpack.ExtraData, msgpack.FormatError,
            msgpack.StackError, UnicodeDecodeError) as ex:
        kind = {MSGPACK: "msgpack", EXTXYZ: "extended XYZ"}.get(codec, "JSON")
        raise DecodeError(f"malformed {kind} body: {type(ex).__name__}: {ex}") from None


def _reject_ext(code: int, data: bytes) -> Any:
    raise DecodeError(f"msgpack ext types are not accepted (got ext type {code})")


def _encode_array(a: np.ndarray) -> dict:
    a = np.ascontiguousarray(a, dtype="<f8")
    return {"dtype": "<f8", "shape": list(a.shape), "data": a.tobytes()}


def _to_msgpack(obj: Any) -> Any:
    if isinstance(obj, np.ndarray):
        return _encode_array(obj)
    if isinstance(obj, np.generic):
        return obj.item()
    raise TypeError(f"cannot encode {type(obj).__name__}")


def _to_json(obj: Any) -> Any:
    if isinstance(obj, np.ndarray):
        return obj.tolist()
    if isinstance(obj, np.generic):
        return obj.item()
    raise TypeError(f"cannot encode {type(obj).__name__}")


def encode(obj: Any, codec: str) -> bytes:
    """Encode a response made of dicts, lists, floats, strings and numpy arrays."""
    if codec == MSGPACK:
        return msgpack.packb(obj, default=_to_msgpack, use_bin_type=True)
    return json.dumps(obj, default=_to_json, allow_nan=False, ensure_ascii=False, separators=(",", ":")).encode()


def unpack_arrays(obj: Any) -> Any:
    """Decode a msgpack response, turning array maps into numpy arrays (for clients and tests)."""
    if isinstance(obj, dict):
        if obj.keys() == ARRAY_KEYS and isinstance(obj["data"], bytes):
            return np.frombuffer(obj["data"], dtype=np.dtype(obj["dtype"])).reshape(obj["shape"]).copy()
        return {k: unpack_arrays(v) for k, v in obj.items()}
    if isinstance(obj, list):
        return [unpack_arrays(v) for v in obj]
    return obj
