"""Body codecs: JSON and msgpack, chosen by Content-Type (requests) and Accept (responses);
extended XYZ text in requests (`extxyz.py`). Malformed bodies raise `DecodeError` (a 400).

msgpack carries every numeric array as a map ``{"dtype": "<f8", "shape": [N, 3], "data": <bin>}``:
``data`` holds the raw little-endian buffer in C order. Requests may use such maps or plain nested
lists anywhere an array is expected; responses always use maps for arrays. dtypes accepted in
requests: ``<f8`` (float64), ``<i8`` / ``<i4`` (integers), ``|b1`` (booleans). No pickle, no ext types.
Array maps are read as numpy views of their bytes; a packed batch (a document with `packed`,
`packed.py`) keeps them so, every other document gets them as lists for the schema.

Limits apply while decoding, before anything is built per atom: an msgpack array larger than the
largest per-structure field (positions, 3 × max_atoms values) is a 413 before its Python list is
made, and extended XYZ headers are checked before ASE reads the text (`extxyz.scan`).

A JSON or msgpack body cannot be counted per structure before it is parsed. What parsing costs is
bounded by the body size (`--max-body-mb`) and by `max_containers`: a request holds at most one
array per atom (its position row) and a few per structure, and each atom takes at least
`MIN_ATOM_BYTES` of the body (objects: a few per structure), so more is refused (400) before
`json.loads` (a byte count), or while msgpack unpacks (its list and map hooks). Without it 60 MB
of `[],` parsed into 21 M lists: 4 s holding the GIL and 1.2 GB. Within it, a JSON body costs up
to ~12 bytes of memory per byte and ~0.1 s per MiB (measured on a 2-core AMD EPYC: 65-76 MiB of
the smallest rows, 4-8 M atoms: 6-8 s, +810-860 MB; 34 MiB of full-precision positions, 1e6
atoms: 1.3 s, +200 MB): keep `--max-body-mb` near what real requests need. The number hooks make
`json.loads` call Python per number, where the interpreter can hand the GIL to the event loop:
/healthz waited 1.3 s behind one 34 MiB `json.loads` (6 s behind 76 MiB), 0.1 s with the hooks,
which cost 0-20% more parsing time.
"""
from __future__ import annotations

import json
import math
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
MIN_ATOM_BYTES = {JSON: 9, MSGPACK: 5}   # `[0,0,0],1,` less a comma; msgpack: a fixarray of 3 fixints and 1
OBJECTS_PER_STRUCTURE = 8                # the structure and (msgpack) array maps for its fields


def max_containers(body_bytes: int, codec: str, max_structures: int) -> tuple[int, int]:
    """The most arrays, and the most objects (maps), a calculate request of this size can hold:
    an array per atom (its position row) and a few per structure; objects only per structure."""
    objects = OBJECTS_PER_STRUCTURE * max_structures + 8
    return body_bytes // MIN_ATOM_BYTES[codec] + objects, objects


def _too_many(what: str, limit: int, count: int | None = None) -> DecodeError:
    held = f"{count}" if count is not None else f"more than {limit}"    # msgpack stops counting at the limit
    return DecodeError(f"the body holds {held} {what}; a calculate request of this size holds at most {limit} "
                       "(arrays: one per atom and a few per structure; objects: a few per structure)")


class _Counter:
    """msgpack's list and map hooks: count the containers as they are built, stop past the limits,
    and turn array maps into lists (`_decode_array`)."""

    def __init__(self, limits: tuple[int, int], max_values: int):
        self.max_lists, self.max_maps = limits
        self.max_values, self.lists, self.maps, self.arrays = max_values, 0, 0, 0

    def list_hook(self, items: list) -> list:
        self.lists += 1
        if self.lists > self.max_lists:
            raise _too_many("arrays", self.max_lists)
        return items

    def object_hook(self, obj: dict) -> Any:
        self.maps += 1
        if self.maps > self.max_maps:
            raise _too_many("maps", self.max_maps)
        array = _decode_array(obj)
        if array is not obj:
            self.arrays += 1
        return array


def _float(text: str) -> float:     # JSON number hooks: Python calls, where the GIL can switch
    return float(text)


def _int(text: str) -> int:
    return int(text)


def _constant(text: str) -> float:  # NaN, Infinity, -Infinity (accepted here; the schema refuses them)
    return float(text)


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


def _decode_array(obj: dict) -> Any:
    """An array map as a read-only numpy view of its bytes (no copy), other maps as they are."""
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
    if len(data) != math.prod(shape) * dt.itemsize:
        raise DecodeError(f"array of shape {shape} and dtype {dtype} needs {math.prod(shape) * dt.itemsize} "
                          f"bytes, got {len(data)}")
    return np.frombuffer(data, dtype=dt).reshape(shape)


def _as_lists(obj: Any, max_values: int) -> Any:
    """Array maps (numpy views) as plain lists, for the schema: validation works on Python values,
    so that JSON and msgpack go through the same checks. An array larger than any field of a
    structure within the limits is a 413 before its list is made."""
    if isinstance(obj, np.ndarray):
        if obj.size > max_values:
            raise APIError(413, "too_large", f"an array of shape {list(obj.shape)} holds {obj.size} values, more "
                           f"than any field of a structure within the limits may hold ({max_values})", "body")
        return obj.tolist()
    if isinstance(obj, dict):
        return {k: _as_lists(v, max_values) for k, v in obj.items()}
    if isinstance(obj, list):
        return [_as_lists(v, max_values) for v in obj]
    return obj


def decode(body: bytes, codec: str, max_atoms: int = 100_000, max_structures: int = 1_000) -> Any:
    """Decode a request body; raise DecodeError on malformed input, APIError 413 where the limits
    (atoms per structure, structures per request) can be seen before decoding the whole body."""
    if not body:
        raise DecodeError("empty request body")
    try:
        if codec == EXTXYZ:
            return decode_extxyz(body, max_atoms, max_structures)
        limits = max_containers(len(body), codec, max_structures)
        if codec == MSGPACK:
            hooks = _Counter(limits, 3 * max_atoms)
            doc = msgpack.unpackb(body, raw=False, object_hook=hooks.object_hook, list_hook=hooks.list_hook,
                                  strict_map_key=True, ext_hook=_reject_ext)
            if isinstance(doc, dict) and "packed" in doc:
                return doc                      # a packed batch keeps its arrays (`packed.py`)
            return _as_lists(doc, hooks.max_values) if hooks.arrays else doc
        # brackets inside strings count too: the counts are never below the containers json.loads builds
        for what, count, limit in (("arrays", body.count(b"["), limits[0]), ("objects", body.count(b"{"), limits[1])):
            if count > limit:
                raise _too_many(what, limit, count)
        return json.loads(body, parse_float=_float, parse_int=_int, parse_constant=_constant)
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
