"""`ACEServerCalculator`: an ASE calculator whose results come from an aceserver HTTP server."""
from __future__ import annotations

import json
import time
from collections.abc import Sequence
from typing import Any
from urllib.parse import quote

import msgpack
import urllib3
import numpy as np
from ase import Atoms
from ase.calculators.calculator import Calculator, all_changes

from .errors import ACEServerConnectionError, ACEServerError, from_response

MSGPACK = "application/msgpack"
JSON = "application/json"
ARRAY_KEYS = {"dtype", "shape", "data"}
# Everything the evaluator computes in one pass; asked for together so that ASE's caching works.
PROPERTIES = ["energy", "forces", "stress", "energies"]


def _pack_array(a: np.ndarray, dtype: str) -> dict:
    a = np.ascontiguousarray(a, dtype=dtype)
    return {"dtype": dtype, "shape": list(a.shape), "data": a.tobytes()}


def _unpack(obj: Any) -> Any:
    if isinstance(obj, dict):
        if obj.keys() == ARRAY_KEYS and isinstance(obj["data"], bytes):
            return np.frombuffer(obj["data"], dtype=np.dtype(obj["dtype"])).reshape(obj["shape"]).copy()
        return {k: _unpack(v) for k, v in obj.items()}
    if isinstance(obj, list):
        return [_unpack(v) for v in obj]
    return obj


def structure(atoms: Atoms, binary: bool) -> dict:
    """An `ase.Atoms` as the API's structure (positions and cell in Å)."""
    if binary:
        return {"numbers": _pack_array(atoms.numbers, "<i8"), "positions": _pack_array(atoms.positions, "<f8"),
                "cell": _pack_array(np.asarray(atoms.cell), "<f8"), "pbc": [bool(p) for p in atoms.pbc]}
    return {"numbers": atoms.numbers.tolist(), "positions": atoms.positions.tolist(),
            "cell": np.asarray(atoms.cell).tolist(), "pbc": [bool(p) for p in atoms.pbc]}


def ase_results(result: dict) -> dict:
    """A server result as ASE calculator results (numpy arrays; absent properties left out)."""
    out = {}
    for key, value in result.items():
        if value is None:
            continue
        out[key] = value if isinstance(value, (float, int)) else np.asarray(value, dtype=float)
    if "energy" in out:
        out.setdefault("free_energy", out["energy"])
    return out


def packed_batch(images: Sequence[Atoms]) -> dict:
    """The `packed` map of a request: counts, numbers, positions (Å), cells (Å), pbc, one msgpack
    array map each."""
    return {"counts": _pack_array([len(a) for a in images], "<i8"),
            "numbers": _pack_array(np.concatenate([a.numbers for a in images]), "<i8"),
            "positions": _pack_array(np.concatenate([a.positions for a in images]).reshape(-1, 3), "<f8"),
            "cells": _pack_array(np.stack([np.asarray(a.cell) for a in images]), "<f8"),
            "pbc": _pack_array(np.stack([a.pbc for a in images]), "|b1")}


PER_STRUCTURE = ("energy", "energy_std", "max_gamma")             # (S,)
PER_STRUCTURE_ROWS = ("stress", "virial", "energy_committee")   # (S, ...)
PER_ATOM = ("forces", "energies", "forces_std", "energies_std", "gamma", "descriptors")       # (N, ...)


def unpack_results(packed: dict, counts: np.ndarray) -> list[dict]:
    """A packed reply as one `ase_results`-style dict per structure (stress left out where the
    reply has a NaN row: the structure has none)."""
    offsets = np.concatenate([[0], np.cumsum(counts)]).tolist()
    out = []
    for k in range(len(counts)):
        a, b = offsets[k], offsets[k + 1]
        r: dict[str, Any] = {}
        for key, value in packed.items():
            if key in PER_STRUCTURE:
                r[key] = float(value[k])
            elif key in PER_STRUCTURE_ROWS:
                if not (key == "stress" and np.isnan(value[k]).all()):
                    r[key] = value[k].copy()
            elif key in PER_ATOM:
                r[key] = value[a:b].copy()
            elif key == "forces_committee":
                r[key] = value[:, a:b].copy()
        if "energy" in r:
            r["free_energy"] = r["energy"]
        out.append(r)
    return out


class ACEServerCalculator(Calculator):
    """ASE calculator that evaluates structures on an `aceserver serve` server.

    url: the server, e.g. ``"http://127.0.0.1:8000"``. model: name of a served model (None: the
    server's default). token: bearer token, when the server has one. binary: msgpack (default) or JSON.
    One keep-alive HTTP connection is reused for all calls; `close()` (or a `with` block) ends it.
    Server errors raise `aceclient.ACEServerError` subclasses carrying the server's message.
    """

    implemented_properties = ["energy", "free_energy", "forces", "stress", "energies"]

    def __init__(self, url: str = "http://127.0.0.1:8000", model: str | None = None, token: str | None = None,
                 *, binary: bool = True, timeout: float = 300.0, ready_timeout: float = 120.0, **kwargs):
        super().__init__(**kwargs)
        self.url = url.rstrip("/")
        self.binary = binary
        self.ready_timeout = ready_timeout   # s to keep retrying while the server warms up (503 not_ready)
        headers = {"Accept": MSGPACK if binary else JSON, "Content-Type": MSGPACK if binary else JSON}
        if token:
            headers["Authorization"] = f"Bearer {token}"
        # urllib3 keeps the connection alive between calls; it costs less per request than httpx
        self._http = urllib3.PoolManager(num_pools=1, maxsize=4, headers=headers, retries=False,
                                         timeout=urllib3.Timeout(connect=min(timeout, 10.0), read=timeout))
        try:
            self.model = model if model is not None else self._get("/v1/models")["default"]
            self.model_info = self._get(f"/v1/models/{quote(self.model, safe='')}")   # species, rcut (Å), ...
        except BaseException:
            self._http.clear()
            raise

    # -- HTTP -----------------------------------------------------------------------------------
    def _request(self, method: str, path: str, body: Any = None) -> Any:
        content = None
        if body is not None:
            content = msgpack.packb(body, use_bin_type=True) if self.binary else json.dumps(body).encode()
        deadline = time.monotonic() + self.ready_timeout
        while True:
            try:
                r = self._http.request(method, self.url + path, body=content)
            except urllib3.exceptions.HTTPError as ex:
                raise ACEServerConnectionError(f"{method} {self.url}{path} failed: {type(ex).__name__}: {ex}") from ex
            ctype = r.headers.get("content-type", "")
            try:
                data = (_unpack(msgpack.unpackb(r.data, raw=False)) if ctype.startswith(MSGPACK)
                        else json.loads(r.data))
            except ValueError:
                data = r.data.decode("utf-8", "replace")
            if r.status < 400:
                return data
            error = from_response(r.status, data)
            if error.kind != "not_ready" or time.monotonic() > deadline:
                raise error
            time.sleep(0.5)   # the server is still compiling its kernels

    def _get(self, path: str) -> Any:
        return self._request("GET", path)

    def evaluate(self, images: Sequence[Atoms], properties: Sequence[str] | None = None) -> list[dict]:
        """Raw server results for several structures in one request (one dict per structure)."""
        body: dict[str, Any] = {"structures": [structure(a, self.binary) for a in images]}
        if properties is not None:
            body["properties"] = list(properties)
        reply = self._request("POST", f"/v1/models/{quote(self.model, safe='')}/calculate", body)
        if not isinstance(reply, dict) or len(reply.get("results", ())) != len(images):
            raise ACEServerError(f"unexpected reply from {self.url}: {str(reply)[:200]}")
        return [ase_results(r) for r in reply["results"]]

    # -- ASE ------------------------------------------------------------------------------------
    def calculate(self, atoms: Atoms | None = None, properties=("energy",), system_changes=all_changes):
        super().calculate(atoms, properties, system_changes)
        self.results = self.evaluate([self.atoms], self._properties())[0]

    def calculate_many(self, images: Sequence[Atoms]) -> list[dict]:
        """Energies (eV), forces (eV/Å), stress (eV/Å³), per-atom energies (eV) of many structures in
        one request; a list of dicts with the same keys as `calc.results`. With msgpack (binary=True)
        the batch travels packed: a few arrays for all structures (`evaluate_packed`)."""
        images = list(images)
        if not images:
            return []
        if self.binary:
            return self.evaluate_packed(images, self._properties())
        return self.evaluate(images, self._properties())

    def evaluate_packed(self, images: Sequence[Atoms], properties: Sequence[str] | None = None) -> list[dict]:
        """As `evaluate`, with the batch packed (msgpack only; the server's docs/serving.md, "Packed
        batches"): counts, numbers, positions (Å), cells (Å), pbc as one array each, and the
        reply as one array per property, split here into one results dict per structure."""
        counts = np.array([len(a) for a in images], dtype="<i8")
        body: dict[str, Any] = {"packed": packed_batch(images)}
        if properties is not None:
            body["properties"] = list(properties)
        reply = self._request("POST", f"/v1/models/{quote(self.model, safe='')}/calculate", body)
        packed = reply.get("packed") if isinstance(reply, dict) else None
        if not isinstance(packed, dict) or not np.array_equal(packed.get("counts"), counts):
            raise ACEServerError(f"unexpected reply from {self.url}: {str(reply)[:200]}")
        return unpack_results(packed, counts)

    def _properties(self) -> list[str]:
        return PROPERTIES + (["committee"] if self.model_info.get("committee_size") else [])

    def close(self) -> None:
        self._http.clear()

    def __enter__(self) -> "ACEServerCalculator":
        return self

    def __exit__(self, *exc) -> None:
        self.close()
